"""The node-local shard cache: download once per node, validate, decompress, evict.

Every process of a node (all ranks, all DataLoader workers) shares the files under each stream's
``local`` directory. Coordination uses only that directory:

* **Presence is the final file.** A shard is local when its raw file exists under its final name.
  Downloads and decompressions write ``<name>.<pid>.<random>.part`` files and ``os.replace`` them
  into place only when complete and validated, so a process killed mid-download leaves at most a
  ``.part`` file that nothing trusts (it is deleted by the next process that prepares the shard).
  A zstd shard is decompressed while it downloads (the compressed bytes stream through the hash
  and the decompressor into the raw ``.part`` file), so it costs one pass and a few MiB of memory.
* **One preparer per shard.** Preparing takes an exclusive ``flock`` on the shard's lock file; the
  kernel drops it if the holder dies, so a crash never blocks a later run. A process that finds the
  lock held waits on it and then sees the finished file: each shard is downloaded once per node.
  Lock files live beside the cache directory (``mdsloader.stream.lock_dir_for``), not in it.
* **Eviction** (``cache_limit``) happens under one cache-wide lock, removes the least recently used
  shards first (the access time is the raw file's mtime, refreshed whenever a shard is prepared
  for reading), and only ever removes shards of streams that have a remote: a local-only
  dataset's files are the only copy and are never deleted (reference issue #988). A reader that
  has a shard mmapped keeps reading it after eviction (Linux keeps unlinked inodes alive).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mdsloader.errors import (
    ChecksumError,
    CompressionError,
    HashError,
    ObjectNotFoundError,
    ShardFormatError,
)
from mdsloader.locks import file_lock
from mdsloader.stream import INDEX_BASENAME

if TYPE_CHECKING:
    from mdsloader.stream import Stream

_READ_PIECE = 1 << 20  # bytes of a local zip read at a time when decompressing it
_UNITS = {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40, "pb": 1 << 50}


def parse_bytes(value: int | float | str) -> int:
    """Parse a byte count: an int or a string like ``"100kb"``, ``"1.5gb"``, ``"123"``, ``"9b"``.

    Raises:
        ValueError: The string has an unknown suffix or is not a number.
    """
    if isinstance(value, int | float):
        return int(value)
    text = value.strip().lower()
    for suffix, unit in _UNITS.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * unit)
    try:
        return int(float(text.removesuffix("b")))
    except ValueError as exc:
        raise ValueError(f"unsupported byte size {value!r} (use e.g. 512mb, 10gb)") from exc


def _lock_name(basename: str) -> str:
    # Basenames of merged datasets contain '/'; keep one flat lock directory.
    return "shard-" + hashlib.blake2s(basename.encode("utf-8"), digest_size=10).hexdigest()


def _part_path(final: Path) -> Path:
    return final.with_name(f"{final.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.part")


def _remove_parts(final: Path) -> None:
    """Delete leftovers of interrupted writes of ``final`` (call with the shard lock held)."""
    for part in final.parent.glob(f"{final.name}.*.part"):
        with contextlib.suppress(FileNotFoundError):
            part.unlink()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _size_str(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return None


class ShardCache:
    """Makes shards local on demand for every stream of one dataset.

    Args:
        streams: The dataset's streams (defaults applied).
        shards: Every shard's info (``mdsloader.mds.index.ShardInfo``), streams concatenated.
        stream_of_shard: For each shard, the index of its stream.
        cache_limit: Byte budget for all cached files, or None for no eviction.
    """

    def __init__(
        self,
        streams: Sequence[Stream],
        shards: Sequence[Any],
        stream_of_shard: Sequence[int],
        cache_limit: int | None = None,
    ) -> None:
        from mdsloader.mds.index import ShardTable

        self.streams = list(streams)
        # Columnar: paths are derived per call from a stream root and a basename, so that a
        # dataset of 100,000 shards builds no per-shard Path (or any other object) up front.
        self.shards = shards if isinstance(shards, ShardTable) else ShardTable.from_infos(shards)
        self.stream_of_shard: list[int] = np.asarray(stream_of_shard, np.int64).tolist()
        self.cache_limit = cache_limit
        self._roots = [stream.local_root for stream in self.streams]
        self._root_strs = [os.fspath(root) for root in self._roots]
        self._remote = [stream.has_remote for stream in self.streams]
        self._check_hash_algorithms()

    def _check_hash_algorithms(self) -> None:
        """Every shard records the digest its stream validates (checked per layout, not shard)."""
        table = self.shards
        if not len(table):
            return
        stream_of = np.asarray(self.stream_of_shard, np.int64)
        bad = np.zeros(len(table), bool)
        for stream_id, stream in enumerate(self.streams):
            algo = stream.validate_hash
            if not algo:
                continue
            missing = [k for k, layout in enumerate(table.layouts) if algo not in layout[4]]
            if missing:
                bad |= (stream_of == stream_id) & np.isin(table.layout_of, missing)
        if bad.any():
            first = int(bad.argmax())
            algo = self.streams[self.stream_of_shard[first]].validate_hash
            raise HashError(
                f"validate_hash={algo!r} but shard {table.raw_names[first]!r} only records "
                f"hashes {list(table.layouts[int(table.layout_of[first])][4])}"
            )

    def raw_path(self, shard_id: int) -> Path:
        """Where the shard's uncompressed file lives (or will live) on this node."""
        return self._roots[self.stream_of_shard[shard_id]] / self.shards.raw_names[shard_id]

    def zip_path(self, shard_id: int) -> Path | None:
        """Where the shard's compressed file lives on this node, or None if it has none."""
        name = self.shards.zip_names[shard_id]
        return None if name is None else self._roots[self.stream_of_shard[shard_id]] / name

    def _file_strs(self, shard_id: int) -> list[str]:
        """The shard's raw and (if any) zip paths, as strings (cheap, for scans of all shards)."""
        root = self._root_strs[self.stream_of_shard[shard_id]]
        paths = [os.path.join(root, self.shards.raw_names[shard_id])]
        name = self.shards.zip_names[shard_id]
        if name is not None:
            paths.append(os.path.join(root, name))
        return paths

    def is_local(self, shard_id: int) -> bool:
        """Whether the shard's raw file is present and complete."""
        return self.raw_path(shard_id).exists()

    def ensure(self, shard_id: int) -> Path:
        """Make a shard's raw file local (download, validate, decompress) and mark it used.

        Safe to call from many threads and processes at once: one of them prepares the shard and
        the others wait for it.

        Returns:
            The path of the raw shard file.

        Raises:
            ObjectNotFoundError: The shard is missing locally and there is no remote.
            ChecksumError: The downloaded file does not match the index digest.
            StorageError: The download kept failing after the stream's retries.
        """
        raw = self.raw_path(shard_id)
        if not self.touch(shard_id):
            self._prepare_locked(shard_id, blocking=True)
        return raw

    def try_ensure(self, shard_id: int) -> Path | None:
        """:meth:`ensure`, unless another thread or process is preparing the shard right now.

        Returns:
            The raw file's path, or None (at once) when the shard is being prepared elsewhere.
        """
        raw = self.raw_path(shard_id)
        if self.touch(shard_id) or self._prepare_locked(shard_id, blocking=False):
            return raw
        return None

    def _prepare_locked(self, shard_id: int, *, blocking: bool) -> bool:
        """Prepare the shard under its lock unless present; False if the lock was busy."""
        stream = self.streams[self.stream_of_shard[shard_id]]
        with file_lock(self._shard_lock(shard_id), blocking=blocking) as held:
            if held and not self.touch(shard_id):
                self._prepare(shard_id, stream)
        return held

    def _shard_lock(self, shard_id: int) -> Path:
        stream = self.streams[self.stream_of_shard[shard_id]]
        return stream.lock_path(_lock_name(self.shards.raw_names[shard_id]))

    def touch(self, shard_id: int) -> bool:
        """Mark a shard as just used (its LRU stamp); returns whether its raw file is present.

        Files of streams without a remote are never evicted, so they are never stamped either:
        a local dataset directory may be read-only, and its mtimes are the user's.
        """
        raw = self.raw_path(shard_id)
        if not self._remote[self.stream_of_shard[shard_id]]:
            return raw.exists()
        return self._touch(raw)

    @staticmethod
    def _touch(path: Path) -> bool:
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def _prepare(self, shard_id: int, stream: Stream) -> None:
        shard, raw, zipped = self.shards[shard_id], self.raw_path(shard_id), self.zip_path(shard_id)
        _remove_parts(raw)
        if zipped is None:
            self._fetch(shard_id, stream, shard.raw_data, raw)
            return
        if not zipped.exists():
            _remove_parts(zipped)
            if self._stream_decompressed(shard_id, stream):
                return
            self._fetch(shard_id, stream, shard.zip_data, zipped)
        self._decompress(shard, zipped, raw)
        if not stream.keep_zip_files:
            with contextlib.suppress(FileNotFoundError):
                zipped.unlink()

    def _fetch(self, shard_id: int, stream: Stream, info: Any, final: Path) -> None:
        if not stream.has_remote:
            raise ObjectNotFoundError(
                f"shard file {final} is missing and stream {stream.local_root} has no remote"
            )
        marker = self._make_room(shard_id)
        part = _part_path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            stream.storage.download_file(info.basename, str(part))
            if stream.validate_hash:
                _validate(part, info, stream.validate_hash)
            os.replace(part, final)
        finally:
            for path in (part, marker):
                if path is not None:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()

    def _stream_decompressed(self, shard_id: int, stream: Stream) -> bool:
        """Download a compressed shard straight into its raw file, decompressing on the fly.

        The compressed bytes go from the socket through the hash (when validating) and the
        streaming decompressor into the raw ``.part`` file, and into the zip's ``.part`` file only
        when zips are kept: nothing holds a whole shard in memory and no compressed copy is
        written and read back. Both files are fsynced and renamed into place only once the
        digest and the decompressed size match the index, the zip first so that a present raw
        file always comes with its kept zip.

        Returns:
            False (nothing done) when the codec cannot stream; the caller then downloads the
            zip and decompresses it whole.
        """
        from mdsloader.mds.compression import get_codec

        shard = self.shards[shard_id]
        codec = get_codec(shard.compression)
        if codec is None or not codec.can_stream:
            return False
        if not stream.has_remote:
            raise ObjectNotFoundError(
                f"shard file {self.zip_path(shard_id)} is missing and stream {stream.local_root} "
                "has no remote"
            )
        raw, zipped = self.raw_path(shard_id), self.zip_path(shard_id)
        keep = zipped if stream.keep_zip_files else None
        marker = self._make_room(shard_id)
        raw.parent.mkdir(parents=True, exist_ok=True)
        zip_part = None if keep is None else _part_path(keep)
        sink = _ShardSink(shard, codec, _part_path(raw), zip_part, stream.validate_hash)
        try:
            stream.storage.stream_to(shard.zip_data.basename, sink)
            sink.finish()
            if keep is not None and sink.zip_part is not None:
                os.replace(sink.zip_part, keep)
            os.replace(sink.raw_part, raw)
        finally:
            sink.discard()
            if marker is not None:
                with contextlib.suppress(FileNotFoundError):
                    marker.unlink()
        return True

    @staticmethod
    def _decompress(shard: Any, zipped: Path, raw: Path) -> None:
        from mdsloader.mds.compression import get_codec

        codec = get_codec(shard.compression)
        if codec is None:
            raise ValueError(f"shard {shard.raw_data.basename!r} has a zip file but no compression")
        part = _part_path(raw)
        try:
            _decompress_file(codec, zipped, part)
            if _size(part) != shard.raw_data.bytes:
                raise ShardFormatError(
                    f"{zipped} decompresses to {_size(part)} bytes, the index says "
                    f"{shard.raw_data.bytes}"
                )
            os.replace(part, raw)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    # ---- cache_limit -------------------------------------------------------------------------

    def _budget_lock(self) -> Path:
        return self.streams[0].lock_path("cache-budget")

    def shard_bytes(self, shard_id: int) -> int:
        """Bytes one shard occupies when fully local (raw plus zip, as the index states)."""
        return int(self.shards.raw_bytes[shard_id]) + int(self.shards.zip_bytes[shard_id])

    def usage(self) -> int:
        """Bytes currently used on disk by the indexes and shard files of this dataset."""
        total = sum(_size(s.local_root / INDEX_BASENAME) for s in self.streams)
        for shard_id in range(len(self.shards)):
            total += sum(_size_str(path) for path in self._file_strs(shard_id))
        return total

    def _make_room(self, shard_id: int) -> Path | None:
        """Evict least recently used remote-backed shards until ``shard_id`` fits the budget.

        The space is then reserved with an in-flight marker (removed when the download ends), so
        that concurrent downloads on the node, from any process, count against the budget too.
        A marker whose shard lock is no longer held belongs to a dead process and is ignored.

        Returns:
            The reservation marker, or None without a cache limit.
        """
        if self.cache_limit is None:
            return None
        needed = self.shard_bytes(shard_id)
        stream = self.streams[self.stream_of_shard[shard_id]]
        lock = self._shard_lock(shard_id)
        marker = self._budget_lock().parent / "inflight" / lock.name
        deadline = time.monotonic() + float(stream.download_timeout or 60.0)
        while True:
            with file_lock(self._budget_lock()):
                reserved = self._reserved()
                excess = self.usage() + reserved + needed - self.cache_limit
                for victim in self._eviction_order(exclude=shard_id):
                    if excess <= 0:
                        break
                    excess -= self.evict(victim)
                # Over budget only because of other downloads in flight: wait for them (we hold
                # no reservation while waiting, so waiters never wait on each other).
                if excess <= 0 or not reserved or time.monotonic() > deadline:
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text(f"{needed}\n{lock}")
                    return marker
            time.sleep(0.005)

    def _reserved(self) -> int:
        """Bytes reserved by downloads in flight on this node (call with the budget lock)."""
        total = 0
        for marker in (self._budget_lock().parent / "inflight").glob("*"):
            try:
                size, lock = marker.read_text().split("\n", 1)
            except (FileNotFoundError, ValueError):
                continue
            with file_lock(Path(lock), blocking=False) as free:
                if free:  # its preparer is gone
                    with contextlib.suppress(FileNotFoundError):
                        marker.unlink()
                    continue
            total += int(size)
        return total

    def _eviction_order(self, exclude: int) -> list[int]:
        stamped = []
        remote = self._remote
        for shard_id, stream_id in enumerate(self.stream_of_shard):
            if shard_id == exclude or not remote[stream_id]:
                continue
            mtimes = [m for m in map(_mtime_ns, self._file_strs(shard_id)) if m is not None]
            if mtimes:
                stamped.append((max(mtimes), shard_id))
        return [shard_id for _, shard_id in sorted(stamped)]

    def evict_locked(self, shard_id: int) -> int:
        """:meth:`evict` under the shard's lock: waits for a preparation of it to finish first."""
        with file_lock(self._shard_lock(shard_id)):
            return self.evict(shard_id)

    def evict(self, shard_id: int) -> int:
        """Delete a shard's local files if it has a remote copy; returns the bytes freed."""
        if not self._remote[self.stream_of_shard[shard_id]]:
            return 0
        freed = 0
        for path in (self.raw_path(shard_id), self.zip_path(shard_id)):
            if path is None:
                continue
            size = _size(path)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                freed += size
        return freed


class _ShardSink:
    """Receives a compressed shard as it downloads and writes its ``.part`` files.

    Implements :class:`~mdsloader.storage.base.ByteSink`: every attempt of the download starts
    with :meth:`restart`, which empties the files and starts a fresh decompressor and digest.

    Args:
        shard: The shard's index entry (``ShardInfo``): names, sizes and digests.
        codec: The shard's codec (one that can stream).
        raw_part: Where the decompressed bytes go.
        zip_part: Where the compressed bytes go, or None when zips are not kept.
        algo: The hash algorithm to validate the compressed bytes with, or None.
    """

    def __init__(
        self, shard: Any, codec: Any, raw_part: Path, zip_part: Path | None, algo: str | None
    ) -> None:
        self.shard, self.codec, self.algo = shard, codec, algo
        self.raw_part, self.zip_part = raw_part, zip_part
        self._raw = open(raw_part, "xb")  # noqa: SIM115 - closed by discard()
        self._zip = None if zip_part is None else open(zip_part, "xb")  # noqa: SIM115
        self._decompressor: Any = None
        self._digest: Any = None
        self._error: CompressionError | None = None

    def restart(self) -> None:
        """Forget a failed attempt's bytes."""
        from mdsloader.mds.hashing import Digester

        for handle in (self._raw, self._zip):
            if handle is not None:
                handle.seek(0)
                handle.truncate()
        self._decompressor = self.codec.stream_decompressor(self._raw)
        self._digest = Digester([self.algo]) if self.algo else None
        self._error = None

    def write(self, data: bytes) -> None:
        """Hash, keep and decompress the next piece of the compressed shard."""
        if self._digest is not None:
            self._digest.update(data)
        if self._zip is not None:
            self._zip.write(data)
        if self._error is None:
            try:
                self._decompressor.write(data)
            except CompressionError as exc:
                if self._digest is None:
                    raise self._named(exc) from exc
                # Keep hashing: a digest mismatch explains corrupt data better, and the old
                # download-then-decompress order reported it first.
                self._error = exc

    def finish(self) -> None:
        """Check the complete download against the index and make both files durable.

        Raises:
            ChecksumError: The compressed bytes do not match the index digest.
            CompressionError: They are not valid data for the codec.
            ShardFormatError: They decompress to a size other than the index's.
        """
        shard = self.shard
        if self._error is None:
            try:
                self._decompressor.flush()
            except CompressionError as exc:
                self._error = exc
        if self.algo and self._digest is not None:
            _check_digest(shard.zip_data, self.algo, self._digest.hexdigests()[self.algo])
        if self._error is not None:
            raise self._named(self._error) from self._error
        size = self._raw.tell()
        if size != shard.raw_data.bytes:
            raise ShardFormatError(
                f"shard file {shard.zip_data.basename!r} decompresses to {size} bytes, the "
                f"index says {shard.raw_data.bytes}"
            )
        # Presence of the final name is trusted after a crash: the data must be on disk first.
        for handle in (self._zip, self._raw):
            if handle is not None:
                handle.flush()
                os.fsync(handle.fileno())

    def _named(self, exc: CompressionError) -> CompressionError:
        return CompressionError(f"shard file {self.shard.zip_data.basename!r}: {exc}")

    def discard(self) -> None:
        """Close the files and delete whichever ``.part`` file was not renamed into place."""
        for handle, path in ((self._raw, self.raw_part), (self._zip, self.zip_part)):
            if handle is not None:
                handle.close()
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()


def _decompress_file(codec: Any, source: Path, target: Path) -> None:
    """Decompress a whole shard file; zstd streams in constant memory (several downloads may be
    decompressing at once), other codecs go through the format package in one piece."""
    if codec.can_stream:
        with open(source, "rb") as src, open(target, "wb") as dst:
            decompressor = codec.stream_decompressor(dst)
            try:
                for piece in iter(lambda: src.read(_READ_PIECE), b""):
                    decompressor.write(piece)
                decompressor.flush()
            except CompressionError as exc:
                raise CompressionError(f"{source} is not valid zstd data: {exc}") from exc
        return
    with open(source, "rb") as src, mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as data:
        target.write_bytes(codec.decompress(data))


def _validate(path: Path, info: Any, algo: str) -> None:
    from mdsloader.mds.hashing import hexdigest

    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            actual = hexdigest(algo, b"")
        else:  # hash the page cache, not a heap copy of the whole file
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                actual = hexdigest(algo, data)
    _check_digest(info, algo, actual)


def _check_digest(info: Any, algo: str, actual: str) -> None:
    expected = info.hashes.get(algo)
    if expected is None:
        raise HashError(f"shard file {info.basename!r} records no {algo!r} digest")
    if actual != expected:
        raise ChecksumError(
            f"checksum failure for shard file {info.basename!r}: {algo} is {actual}, "
            f"the index says {expected}"
        )
