"""``index.json`` v2: the typed, strict model of a dataset's shard list, and its exact JSON form."""

from __future__ import annotations

import contextlib
import gc
import json
import operator
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, overload

from mdsloader.errors import IndexDecodeError, IndexFormatError, UnsupportedShardFormatError

__all__ = [
    "INDEX_BASENAME",
    "FileInfo",
    "Index",
    "ShardInfo",
    "ShardTable",
    "dump_index",
    "merge_shards",
    "parse_index",
    "parse_shard_table",
    "read_index",
]

INDEX_BASENAME = "index.json"
SHARD_KEYS = frozenset(
    {
        "column_encodings",
        "column_names",
        "column_sizes",
        "compression",
        "format",
        "hashes",
        "raw_data",
        "samples",
        "size_limit",
        "version",
        "zip_data",
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
    return Index(tuple(parse_shard_table(data, source=source)))


def parse_shard_table(data: bytes | str, *, source: str) -> ShardTable:
    """Parse an ``index.json`` into a columnar :class:`ShardTable`, as strictly as
    :func:`parse_index` and with the same errors.

    Shards are checked in bulk: consecutive shards almost always share their layout (columns,
    compression, hashes, size limit), so a shard whose layout equals the previous one's only has
    its own fields checked (samples, file names, sizes, digests). Anything unusual (a new layout,
    an unexpected type) is handed to the strict per-shard parser, which raises the error.

    Raises:
        IndexDecodeError: Not JSON (empty, truncated, not UTF-8); also a ``JSONDecodeError``.
        IndexFormatError: A version other than 2, or a malformed shard entry.
        UnsupportedShardFormatError: A json/csv/tsv/xsv shard.
    """
    # JSON floats, NaN/Infinity and true/false could compare equal to a valid int (2.0 == 2,
    # True == 1) where the bulk checks compare values: an index holding any of them anywhere is
    # parsed shard by shard instead.
    # The cyclic collector stays off until the decoded tree is freed again: the tree is
    # acyclic, and its hundreds of thousands of containers would otherwise trigger collections
    # that walk it over and over (half the parse time at 100,000 shards), plus a last full one
    # as soon as the collector came back on.
    with _no_gc():
        return _parse_table(data, source)


def _parse_table(data: bytes | str, source: str) -> ShardTable:
    unusual: list[bool] = []

    def flag_float(text: str) -> float:
        unusual.append(True)
        return float(text)

    def flag_constant(text: str) -> float:
        unusual.append(True)
        return float(text)

    try:
        obj = json.loads(data, parse_float=flag_float, parse_constant=flag_constant)
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
    del obj
    literals = (b"true", b"false") if isinstance(data, bytes | bytearray) else ("true", "false")
    table = None
    if not unusual and not any(word in data for word in literals):  # type: ignore[operator]
        table = _bulk_table(shards, source)
    if table is None:
        table = ShardTable.from_infos(
            [ShardInfo.from_json(s, where=f"{source} shard {i}") for i, s in enumerate(shards)]
        )
    del shards  # freed here, while the collector is still off
    return table


# ---- columnar shard list -----------------------------------------------------------------------

_FILE_KEYS = frozenset({"basename", "bytes", "hashes"})
# The keys of a shard entry shared by consecutive shards, in ShardInfo's field order.
_LAYOUT_KEYS = (
    "column_encodings", "column_names", "column_sizes", "compression", "hashes", "size_limit",
    "format", "version",
)  # fmt: skip
_layout_of_obj = operator.itemgetter(*_LAYOUT_KEYS)


def _layout_of_info(info: ShardInfo) -> tuple[Any, ...]:
    return (
        info.column_encodings, info.column_names, info.column_sizes, info.compression,
        info.hashes, info.size_limit, info.format, info.version,
    )  # fmt: skip


class ShardTable(Sequence[ShardInfo]):
    """Every shard of an index as columns: numpy arrays of counts and sizes, lists of names and
    digests, and each shard's layout as a number into a short list of distinct layouts.

    It is a read-only sequence of :class:`ShardInfo` (``table[i]`` builds the entry when it is
    read), so code that wants entries keeps working, while code on a hot path reads the
    arrays: at 100,000 shards no per-shard Python object is built before it is needed.

    Attributes:
        samples: Samples of each shard (int64).
        raw_bytes: Size of each shard's raw file (int64).
        zip_bytes: Size of each shard's compressed file, 0 where there is none (int64).
        has_zip: Whether each shard has a compressed file (bool).
        layout_of: Each shard's number into :attr:`layouts` (int32).
        layouts: The distinct layouts, as ``ShardInfo`` field values (encodings, names, sizes,
            compression, hashes, size limit, format, version), in order of first appearance.
        raw_names, zip_names: Each shard's file basenames (``None`` where there is no zip).
    """

    def __init__(
        self,
        *,
        layouts: list[tuple[Any, ...]],
        layout_of: Any,
        samples: Any,
        raw_names: list[str],
        raw_bytes: Any,
        raw_hashes: list[dict[str, str]],
        zip_names: list[str | None],
        zip_bytes: Any,
        zip_hashes: list[dict[str, str] | None],
    ) -> None:
        import numpy as np

        self.layouts = layouts
        self.layout_of = np.asarray(layout_of, np.int32)
        self.samples = np.asarray(samples, np.int64)
        self.raw_names, self.raw_hashes = raw_names, raw_hashes
        self.raw_bytes = np.asarray(raw_bytes, np.int64)
        self.zip_names, self.zip_hashes = zip_names, zip_hashes
        self.zip_bytes = np.asarray(zip_bytes, np.int64)
        self.has_zip = np.fromiter((n is not None for n in zip_names), bool, len(zip_names))

    @classmethod
    def from_infos(cls, infos: Sequence[ShardInfo]) -> ShardTable:
        """A table of existing entries (the strict parser's, or a caller's list)."""
        layouts: dict[tuple[Any, ...], int] = {}
        layout_of = [layouts.setdefault(_layout_of_info(s), len(layouts)) for s in infos]
        return cls(
            layouts=list(layouts),
            layout_of=layout_of,
            samples=[s.samples for s in infos],
            raw_names=[s.raw_data.basename for s in infos],
            raw_bytes=[s.raw_data.bytes for s in infos],
            raw_hashes=[s.raw_data.hashes for s in infos],
            zip_names=[s.zip_data.basename if s.zip_data else None for s in infos],
            zip_bytes=[s.zip_data.bytes if s.zip_data else 0 for s in infos],
            zip_hashes=[s.zip_data.hashes if s.zip_data else None for s in infos],
        )

    @classmethod
    def concat(cls, tables: Sequence[ShardTable]) -> ShardTable:
        """The shards of several tables, in order (one dataset's streams)."""
        import numpy as np

        if len(tables) == 1:
            return tables[0]
        layouts: dict[tuple[Any, ...], int] = {}
        layout_of = []
        for table in tables:
            ids = np.array([layouts.setdefault(lay, len(layouts)) for lay in table.layouts])
            layout_of.append(ids[table.layout_of] if len(ids) else table.layout_of)
        return cls(
            layouts=list(layouts),
            layout_of=np.concatenate(layout_of) if layout_of else [],
            samples=np.concatenate([t.samples for t in tables]) if tables else [],
            raw_names=[n for t in tables for n in t.raw_names],
            raw_bytes=np.concatenate([t.raw_bytes for t in tables]) if tables else [],
            raw_hashes=[h for t in tables for h in t.raw_hashes],
            zip_names=[n for t in tables for n in t.zip_names],
            zip_bytes=np.concatenate([t.zip_bytes for t in tables]) if tables else [],
            zip_hashes=[h for t in tables for h in t.zip_hashes],
        )

    def __len__(self) -> int:
        return len(self.raw_names)

    @overload
    def __getitem__(self, index: int) -> ShardInfo: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[ShardInfo, ...]: ...

    def __getitem__(self, index: int | slice) -> ShardInfo | tuple[ShardInfo, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"shard {index} out of range for {len(self)} shards")
        # Built afresh each time (a few microseconds, once per shard opened): a cache would grow
        # to every shard of the dataset over an epoch, in every worker.
        return self._build(index)

    def _build(self, i: int) -> ShardInfo:
        encodings, names, sizes, compression, hashes, size_limit, fmt, version = self.layouts[
            int(self.layout_of[i])
        ]
        zip_name = self.zip_names[i]
        return ShardInfo(
            column_encodings=encodings,
            column_names=names,
            column_sizes=sizes,
            compression=compression,
            hashes=hashes,
            raw_data=FileInfo(self.raw_names[i], int(self.raw_bytes[i]), dict(self.raw_hashes[i])),
            samples=int(self.samples[i]),
            size_limit=size_limit,
            zip_data=None
            if zip_name is None
            else FileInfo(zip_name, int(self.zip_bytes[i]), dict(self.zip_hashes[i] or {})),
            format=fmt,
            version=version,
        )

    def __iter__(self) -> Iterator[ShardInfo]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ShardTable({len(self)} shards, {len(self.layouts)} layout(s))"

    def first_of_layouts(self) -> list[int]:
        """The first shard of each distinct layout, in shard order."""
        import numpy as np

        _, first = np.unique(self.layout_of, return_index=True)
        return sorted(first.tolist())


def _bulk_table(shards: list[Any], source: str) -> ShardTable | None:
    """Check and tabulate shard objects in bulk; None where the strict parser must decide.

    Only called for an index without float, NaN/Infinity or true/false literals, so every value
    compared here is a str, an int, None, a list or a dict, for which ``==`` is exact.
    """
    layouts: dict[tuple[Any, ...], int] = {}
    layout_of: list[int] = []
    samples: list[int] = []
    raw_names: list[str] = []
    raw_bytes: list[int] = []
    raw_hashes: list[dict[str, str]] = []
    zip_names: list[str | None] = []
    zip_bytes: list[int] = []
    zip_hashes: list[dict[str, str] | None] = []
    previous: Any = None  # the previous shard's layout values, as in the JSON
    current = -1
    for number, obj in enumerate(shards):
        if type(obj) is not dict or obj.keys() != SHARD_KEYS:
            return None
        values = _layout_of_obj(obj)
        if values != previous:
            # A new layout: the strict parser checks this whole shard (raising its error).
            info = ShardInfo.from_json(obj, where=f"{source} shard {number}")
            current = layouts.setdefault(_layout_of_info(info), len(layouts))
            previous = values
        count = obj["samples"]
        if type(count) is not int or count < 0:
            return None
        raw = obj["raw_data"]
        if not _file_ok(raw):
            return None
        zipped = obj["zip_data"]
        if zipped is None:
            zip_names.append(None)
            zip_bytes.append(0)
            zip_hashes.append(None)
        elif _file_ok(zipped):
            zip_names.append(zipped["basename"])
            zip_bytes.append(zipped["bytes"])
            zip_hashes.append(zipped["hashes"])
        else:
            return None
        layout_of.append(current)
        samples.append(count)
        raw_names.append(raw["basename"])
        raw_bytes.append(raw["bytes"])
        raw_hashes.append(raw["hashes"])
    return ShardTable(
        layouts=list(layouts), layout_of=layout_of, samples=samples, raw_names=raw_names,
        raw_bytes=raw_bytes, raw_hashes=raw_hashes, zip_names=zip_names, zip_bytes=zip_bytes,
        zip_hashes=zip_hashes,
    )  # fmt: skip


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building an acyclic object tree.

    JSON decoding creates hundreds of thousands of containers at 100,000 shards, each of which
    counts towards a collection; the collections it triggers walk the growing tree again and
    again and take half of the parse time. Nothing built here can form a cycle.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _file_ok(value: Any) -> bool:
    """What ``_ShardParser.file_info`` accepts, checked without building anything."""
    if type(value) is not dict or value.keys() != _FILE_KEYS:
        return False
    name, size, hashes = value["basename"], value["bytes"], value["hashes"]
    if type(name) is not str or not name or type(size) is not int or size < 0:
        return False
    if type(hashes) is not dict:
        return False
    for digest in hashes.values():  # noqa: SIM110 - no generator per shard on this path
        if type(digest) is not str:
            return False
    return True


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
