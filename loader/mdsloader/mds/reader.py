"""Random access to local MDS data: one shard (:class:`ShardReader`) or a dataset directory.

A shard is memory-mapped; sample ``i`` is the byte range ``offsets[i]:offsets[i+1]``. The header
is checked against the index and the file length when the shard is opened, so a truncated file
fails at once instead of returning garbage.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from mdsloader.errors import (
    ChecksumError,
    CompressionError,
    HashError,
    ObjectNotFoundError,
    ShardFormatError,
)
from mdsloader.mds.compression import get_codec
from mdsloader.mds.encodings import validate_encoding
from mdsloader.mds.hashing import hexdigest, supported_hashes
from mdsloader.mds.index import FileInfo, Index, ShardInfo, read_index
from mdsloader.mds.record import SampleDecoder, check_safe
from mdsloader.mds.shard import read_offsets

__all__ = ["DatasetReader", "SampleDecoder", "ShardReader", "open_local_dataset"]


class ShardReader:
    """Reads the samples of one uncompressed shard file.

    Args:
        path: The shard file (``shard.NNNNN.mds``).
        info: Its index entry.
        allow_unsafe_types: Allow ``pkl`` columns (unpickling runs arbitrary code).

    Raises:
        UnsafeTypeError: A ``pkl`` column without ``allow_unsafe_types``, before any read.
        ShardFormatError: A truncated file, or a header that disagrees with the index.
        ObjectNotFoundError: The file does not exist.
    """

    def __init__(
        self, path: str | os.PathLike[str], info: ShardInfo, *, allow_unsafe_types: bool = False
    ) -> None:
        self.path = os.fspath(path)
        self.info = info
        self._allow_unsafe = allow_unsafe_types
        if not allow_unsafe_types:
            check_safe(info.column_names, info.column_encodings, where=self.path)
        self._decoder = SampleDecoder(info)
        self._map = _map_file(self.path)
        if len(self._map) != info.raw_data.bytes:
            size = len(self._map)
            self._map.close()
            raise ShardFormatError(
                f"{self.path}: {size} bytes, the index says {info.raw_data.bytes} (truncated?)"
            )
        self._offsets = read_offsets(self._map, info.samples, where=self.path).tolist()

    def __len__(self) -> int:
        return self.info.samples

    def sample_bytes(self, i: int) -> memoryview:
        """Return the record of sample ``i`` as a zero-copy view of the mapped file.

        Raises:
            IndexError: ``i`` is out of range.
        """
        if i < 0:
            i += self.info.samples
        if not 0 <= i < self.info.samples:
            raise IndexError(f"sample {i} out of range for {self.path} ({self.info.samples})")
        return memoryview(self._map)[self._offsets[i] : self._offsets[i + 1]]

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Decode sample ``i`` (values never alias the mapped file)."""
        view = self.sample_bytes(i)
        try:
            data = bytes(view)
        finally:
            view.release()
        return self._decoder.decode(data)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(self.info.samples):
            yield self[i]

    def __reduce__(self) -> tuple[Any, ...]:
        # A memory map cannot be pickled: a copy sent to a DataLoader worker maps the file again.
        return (_reopen_shard, (self.path, self.info, self._allow_unsafe))

    def close(self) -> None:
        """Unmap the file (a view still held by the caller keeps it mapped until released)."""
        try:
            self._map.close()
        except BufferError:
            pass  # a caller still holds a sample_bytes() view; the map goes with it

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reopen_shard(path: str, info: ShardInfo, allow_unsafe_types: bool) -> ShardReader:
    return ShardReader(path, info, allow_unsafe_types=allow_unsafe_types)


def _map_file(path: str) -> mmap.mmap:
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise ShardFormatError(f"{path}: empty file")
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError as exc:
        raise ObjectNotFoundError(f"shard file {path} does not exist") from exc


class DatasetReader:
    """A map-style reader over a local MDS directory (like the reference's ``LocalDataset``).

    Shards are opened on first access. A shard present only in compressed form is decompressed
    next to it (temporary file, then rename); the compressed file is kept.

    Args:
        path: The dataset root.
        split: An optional sub-directory of ``path``.
        allow_unsafe_types: Allow ``pkl`` columns.
        validate_hash: A hash algorithm to verify every shard file with before first use: the
            compressed file's digest for compressed shards, the raw file's otherwise.

    Raises:
        IndexFormatError: ``index.json`` is malformed.
        UnsafeTypeError: A ``pkl`` column without ``allow_unsafe_types``.
        UnknownEncodingError: A column encoding we cannot decode (e.g. a custom one).
        HashError: ``validate_hash`` is unknown or not recorded for some shard.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        split: str | None = None,
        *,
        allow_unsafe_types: bool = False,
        validate_hash: str | None = None,
    ) -> None:
        self.root = os.path.join(os.fspath(path), split or "")
        self.index: Index = read_index(self.root)
        self._allow_unsafe = allow_unsafe_types
        for number, shard in enumerate(self.index.shards):
            if not allow_unsafe_types:
                check_safe(shard.column_names, shard.column_encodings, where=f"shard {number}")
            for name, encoding in zip(shard.column_names, shard.column_encodings):
                validate_encoding(encoding, column=name)  # fail at open, not mid-epoch
            if validate_hash is not None and validate_hash not in shard.hashes:
                raise HashError(
                    f"shard {number} records no {validate_hash!r} digest (it has {shard.hashes})"
                )
        if validate_hash is not None and validate_hash not in supported_hashes():
            raise HashError(f"unknown hash algorithm {validate_hash!r}")
        self._validate_hash = validate_hash
        self._ends = np.cumsum([s.samples for s in self.index.shards], dtype=np.int64)
        self._readers: list[ShardReader | None] = [None] * len(self.index.shards)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Return sample ``i`` (global position) as a dict of column values."""
        shard, local = self.locate(i)
        return self.shard(shard)[local]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for number in range(len(self.index.shards)):
            yield from self.shard(number)

    def locate(self, i: int) -> tuple[int, int]:
        """Return ``(shard number, index within the shard)`` of global sample ``i``."""
        total = len(self)
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"sample index must be an int, got {type(i).__name__}")
        if i < 0:
            i += total
        if not 0 <= i < total:
            raise IndexError(f"sample {i} out of range for a dataset of {total} samples")
        shard = int(np.searchsorted(self._ends, i, side="right"))
        return shard, int(i - (self._ends[shard - 1] if shard else 0))

    def shard(self, number: int) -> ShardReader:
        """Return the reader of shard ``number``, preparing the file on first use."""
        reader = self._readers[number]
        if reader is None:
            with self._lock:
                reader = self._readers[number]
                if reader is None:
                    reader = self._open(self.index.shards[number])
                    self._readers[number] = reader
        return reader

    def __getstate__(self) -> dict[str, Any]:
        # Open shards (memory maps) and the lock stay behind; a copy reopens shards lazily.
        state = self.__dict__.copy()
        state["_readers"] = [None] * len(self.index.shards)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Unmap every open shard."""
        for reader in self._readers:
            if reader is not None:
                reader.close()
        self._readers = [None] * len(self.index.shards)

    def __enter__(self) -> DatasetReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, info: ShardInfo) -> ShardReader:
        raw_path = os.path.join(self.root, info.raw_data.basename)
        if not os.path.exists(raw_path):
            if info.zip_data is None:
                raise ObjectNotFoundError(f"shard file {raw_path} does not exist")
            self._decompress(info, info.zip_data, raw_path)
        elif self._validate_hash is not None:
            with open(raw_path, "rb") as fh:
                self._verify(info.raw_data, fh.read(), raw_path)
        return ShardReader(raw_path, info, allow_unsafe_types=self._allow_unsafe)

    def _decompress(self, info: ShardInfo, zip_info: FileInfo, raw_path: str) -> None:
        zip_path = os.path.join(self.root, zip_info.basename)
        try:
            with open(zip_path, "rb") as fh:
                packed = fh.read()
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"shard file {zip_path} does not exist") from exc
        if self._validate_hash is not None:
            self._verify(zip_info, packed, zip_path)
        codec = get_codec(info.compression)
        if codec is None:
            raise ShardFormatError(f"{zip_path}: zip_data is set but compression is null")
        try:
            raw = codec.decompress(packed)
        except CompressionError as exc:
            raise ShardFormatError(f"{zip_path}: {exc}") from exc
        tmp = f"{raw_path}.tmp.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "wb") as fh:
            fh.write(raw)
        os.replace(tmp, raw_path)

    def _verify(self, info: FileInfo, data: bytes, path: str) -> None:
        algo = self._validate_hash
        assert algo is not None
        actual = hexdigest(algo, data)
        if actual != info.hashes.get(algo):
            raise ChecksumError(
                f"checksum failure: {path} has {algo} {actual}, the index says "
                f"{info.hashes.get(algo)}"
            )


def open_local_dataset(
    path: str | os.PathLike[str],
    split: str | None = None,
    *,
    allow_unsafe_types: bool = False,
    validate_hash: str | None = None,
) -> DatasetReader:
    """Open a local MDS directory for random access; see :class:`DatasetReader`."""
    return DatasetReader(
        path, split, allow_unsafe_types=allow_unsafe_types, validate_hash=validate_hash
    )
