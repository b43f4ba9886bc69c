"""``index.json`` v2: the typed, strict model of a dataset's shard list, and its exact JSON form."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

from mdsloader.errors import IndexDecodeError, IndexFormatError, UnsupportedShardFormatError

__all__ = [
    "INDEX_BASENAME",
    "FileInfo",
    "Index",
    "ShardInfo",
    "dump_index",
    "merge_shards",
    "parse_index",
    "read_index",
]

INDEX_BASENAME = "index.json"
SHARD_KEYS = frozenset(
    {
        "column_encodings", "column_names", "column_sizes", "compression", "format", "hashes",
        "raw_data", "samples", "size_limit", "version", "zip_data",
    }
)
_OTHER_FORMATS = frozenset({"json", "csv", "tsv", "xsv"})


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One file of a shard: its path relative to the dataset root, length and digests."""

    basename: str
    bytes: int
    hashes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON object stored in ``raw_data``/``zip_data``."""
        return {"basename": self.basename, "bytes": self.bytes, "hashes": dict(self.hashes)}


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One MDS shard entry of ``index.json``: exactly the 11 keys the reference reader accepts."""

    column_encodings: tuple[str, ...]
    column_names: tuple[str, ...]
    column_sizes: tuple[int | None, ...]
    compression: str | None
    hashes: tuple[str, ...]
    raw_data: FileInfo
    samples: int
    size_limit: int | None
    zip_data: FileInfo | None
    format: str = "mds"
    version: int = 2

    @property
    def file(self) -> FileInfo:
        """The file actually stored: the compressed one if any, else the raw one."""
        return self.zip_data or self.raw_data

    def to_json(self) -> dict[str, Any]:
        """Return the shard entry as a JSON object (keys in sorted order)."""
        return {
            "column_encodings": list(self.column_encodings),
            "column_names": list(self.column_names),
            "column_sizes": list(self.column_sizes),
            "compression": self.compression,
            "format": self.format,
            "hashes": list(self.hashes),
            "raw_data": self.raw_data.to_json(),
            "samples": self.samples,
            "size_limit": self.size_limit,
            "version": self.version,
            "zip_data": self.zip_data.to_json() if self.zip_data else None,
        }

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> ShardInfo:
        """Build a shard entry from its JSON object, strictly.

        Args:
            obj: The decoded JSON object of one shard.
            where: Where the entry comes from, for error messages (e.g. ``"index.json shard 3"``).

        Raises:
            UnsupportedShardFormatError: A json/csv/tsv/xsv shard.
            IndexFormatError: Missing or extra keys, or a value of the wrong type.
        """
        return _ShardParser(obj, where).parse()


class _ShardParser:
    """Typed checks of one shard object, each failure naming the shard and the key."""

    def __init__(self, obj: Any, where: str) -> None:
        self.obj = obj
        self.where = where

    def fail(self, message: str) -> IndexFormatError:
        return IndexFormatError(f"{self.where}: {message}")

    def parse(self) -> ShardInfo:
        obj = self.obj
        if not isinstance(obj, dict):
            raise self.fail(f"a shard must be a JSON object, got {type(obj).__name__}")
        fmt = obj.get("format")
        if fmt in _OTHER_FORMATS:
            raise UnsupportedShardFormatError(
                f"{self.where}: shard format {fmt!r} is not supported; only 'mds' shards are"
            )
        if fmt != "mds":
            raise self.fail(f"unknown shard format {fmt!r}; expected 'mds'")
        self.check_keys(obj)
        if obj["version"] != 2 or isinstance(obj["version"], bool):
            raise self.fail(f"key 'version': unsupported version {obj['version']!r}, expected 2")
        names = self.str_list("column_names")
        encodings = self.str_list("column_encodings")
        sizes = self.sizes()
        if not len(names) == len(encodings) == len(sizes):
            raise self.fail("column_names, column_encodings and column_sizes differ in length")
        return ShardInfo(
            column_encodings=encodings,
            column_names=names,
            column_sizes=sizes,
            compression=self.optional_str("compression"),
            hashes=self.str_list("hashes"),
            raw_data=self.file_info("raw_data"),
            samples=self.count("samples", obj["samples"]),
            size_limit=self.optional_count("size_limit"),
            zip_data=self.file_info("zip_data") if obj["zip_data"] is not None else None,
        )

    def check_keys(self, obj: dict[str, Any]) -> None:
        missing = sorted(SHARD_KEYS - obj.keys())
        extra = sorted(obj.keys() - SHARD_KEYS)
        if missing:
            raise self.fail(f"missing key(s) {missing}")
        if extra:
            # The reference passes shard keys as kwargs, so an extra key breaks its readers too.
            raise self.fail(f"unexpected key(s) {extra}; allowed: {sorted(SHARD_KEYS)}")

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self.obj[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(f"key {key!r} must be a list of strings, got {value!r}")
        return tuple(value)

    def sizes(self) -> tuple[int | None, ...]:
        value = self.obj["column_sizes"]
        if not isinstance(value, list) or not all(v is None or _is_count(v) for v in value):
            raise self.fail(f"key 'column_sizes' must be a list of ints or nulls, got {value!r}")
        return tuple(value)

    def optional_str(self, key: str) -> str | None:
        value = self.obj[key]
        if value is not None and not isinstance(value, str):
            raise self.fail(f"key {key!r} must be a string or null, got {value!r}")
        return value

    def count(self, key: str, value: Any) -> int:
        if not _is_count(value):
            raise self.fail(f"key {key!r} must be a non-negative integer, got {value!r}")
        return value

    def optional_count(self, key: str) -> int | None:
        value = self.obj[key]
        return None if value is None else self.count(key, value)

    def file_info(self, key: str) -> FileInfo:
        value = self.obj[key]
        if not isinstance(value, dict) or set(value) != {"basename", "bytes", "hashes"}:
            raise self.fail(f"key {key!r} must be an object with basename, bytes and hashes")
        basename, size, hashes = value["basename"], value["bytes"], value["hashes"]
        if not isinstance(basename, str) or not basename:
            raise self.fail(f"key {key!r}: basename must be a non-empty string")
        if not isinstance(hashes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()
        ):
            raise self.fail(f"key {key!r}: hashes must map algorithm names to hex strings")
        return FileInfo(basename, self.count(f"{key}.bytes", size), dict(hashes))


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class Index:
    """A dataset's ``index.json``: its shards in order."""

    shards: tuple[ShardInfo, ...] = ()

    @property
    def num_samples(self) -> int:
        """Total number of samples over all shards."""
        return sum(shard.samples for shard in self.shards)

    def to_json(self) -> dict[str, Any]:
        """Return the index as a JSON object."""
        return {"shards": [shard.to_json() for shard in self.shards], "version": 2}


def parse_index(data: bytes | str, *, source: str) -> Index:
    """Parse the bytes of an ``index.json``.

    Args:
        data: The file's content.
        source: Where it came from (a path or URL), for error messages.

    Raises:
        IndexDecodeError: Not JSON (empty, truncated, not UTF-8); also a ``JSONDecodeError``.
        IndexFormatError: A version other than 2, or a malformed shard entry.
        UnsupportedShardFormatError: A json/csv/tsv/xsv shard.
    """
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        # "is empty or corrupted": the reference's wording, which users search for.
        message = f"Index file at {source} is empty or corrupted (not valid JSON): {exc.msg}"
        raise IndexDecodeError(message, exc.doc, exc.pos) from exc
    except UnicodeDecodeError as exc:
        text = bytes(data).decode("utf-8", "replace") if not isinstance(data, str) else data
        message = f"Index file at {source} is empty or corrupted (not valid JSON): {exc.reason}"
        raise IndexDecodeError(message, text, exc.start) from exc
    if not isinstance(obj, dict):
        raise IndexFormatError(f"{source}: the top level must be a JSON object")
    version = obj.get("version")
    if version != 2 or isinstance(version, bool):
        raise IndexFormatError(f"{source}: unsupported index version {version!r}, expected 2")
    shards = obj.get("shards")
    if not isinstance(shards, list):
        raise IndexFormatError(f"{source}: key 'shards' must be a list")
    return Index(
        tuple(ShardInfo.from_json(s, where=f"{source} shard {i}") for i, s in enumerate(shards))
    )


def read_index(path: str | os.PathLike[str]) -> Index:
    """Read and parse a local ``index.json`` (a file, or a directory holding one)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, INDEX_BASENAME)
    with open(path, "rb") as fh:
        return parse_index(fh.read(), source=path)


def dump_index(index: Index, *, sort_keys: bool = True) -> bytes:
    """Serialise an index exactly like the reference.

    Args:
        index: The index.
        sort_keys: True gives MDSWriter's ``json.dump(obj, sort_keys=True)`` bytes; False gives the
            ``merge_index`` form ``{"version": 2, "shards": [...]}``.
    """
    shards = [shard.to_json() for shard in index.shards]
    obj = {"shards": shards, "version": 2} if sort_keys else {"version": 2, "shards": shards}
    return json.dumps(obj, sort_keys=sort_keys).encode("ascii")


def merge_shards(parts: list[tuple[str, Index]]) -> Index:
    """Concatenate partition indexes, prefixing each file's basename with its part directory.

    Args:
        parts: ``(part_dir, index)`` pairs in the order the shards must appear, where
            ``part_dir`` is the partition's directory relative to the merged root (e.g. ``"7"``).
    """
    merged = []
    for part_dir, index in parts:
        prefix = part_dir.strip("/")
        for shard in index.shards:
            merged.append(_with_prefix(shard, prefix) if prefix else shard)
    return Index(tuple(merged))


def _with_prefix(shard: ShardInfo, prefix: str) -> ShardInfo:
    def moved(info: FileInfo | None) -> FileInfo | None:
        return None if info is None else replace(info, basename=f"{prefix}/{info.basename}")

    return replace(shard, raw_data=moved(shard.raw_data), zip_data=moved(shard.zip_data))
