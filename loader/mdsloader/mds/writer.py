"""``MDSWriter``: write samples into size-limited MDS shards, locally and/or to object storage.

Encoding happens in the caller's thread; compressing, hashing, writing and uploading each flushed
shard happen in a thread pool (zstandard, hashlib and xxhash release the GIL), so the caller keeps
encoding while up to all cores compress. Shard numbers are assigned at flush time and the index
lists shards in that order, so the output is deterministic. ``index.json`` is written and
uploaded last, after every shard upload has finished: a reader that sees it sees every shard.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

import numpy as np

from mdsloader.errors import InvalidArgumentError, MDSError, StorageError, TargetExistsError
from mdsloader.mds.columnar import encode_batch
from mdsloader.mds.compression import Codec, get_codec
from mdsloader.mds.hashing import Digester, check_hash_names, hexdigest_parts
from mdsloader.mds.index import INDEX_BASENAME, FileInfo, Index, ShardInfo, dump_index
from mdsloader.mds.record import ColumnPlan, RecordEncoder
from mdsloader.mds.shard import MAX_SHARD_BYTES, Buffer, config_json, shard_parts, shard_size
from mdsloader.mds.sizes import parse_size_limit

__all__ = ["MDSWriter"]


class MDSWriter:
    """Writes an MDS v2 dataset, byte-identical to mosaicml-streaming's ``MDSWriter``.

    Example::

        with MDSWriter(columns={"x": "int64", "text": "str"}, out="s3://bucket/ds",
                       compression="zstd", hashes=["xxh64"]) as writer:
            for row in rows:
                writer.write(row)

    Differences from the reference, all deliberate: a shard never reaches 4 GiB (uint32
    offsets), even with ``size_limit=None``; no empty shard is written when a single sample is
    larger than ``size_limit`` (the sample gets a shard of its own); gz shards carry a fixed
    header mtime so they are reproducible; ``hashes`` must also be unique.

    Args:
        columns: Column name -> encoding string (see :mod:`mdsloader.mds.encodings`).
        out: A local directory, a remote URL (``s3://bucket/prefix``; written to a temporary
            directory first), or a ``(local, remote)`` pair.
        keep_local: With a remote, keep the local files after upload.
        compression: ``None`` or a compression string such as ``"zstd"`` or ``"gz:9"``.
        hashes: Sorted, unique hash algorithm names applied to every shard file.
        size_limit: Maximum uncompressed shard size in bytes, or a string such as ``"64mb"``;
            ``None``/0 means unlimited (still below 4 GiB).
        progress_bar: Show a tqdm bar of finished shards (if tqdm is installed).
        max_workers: Threads compressing, hashing and uploading shards (default
            ``min(32, cpu_count + 4)``, as in the reference).
        retry: Attempts per upload (the storage layer backs off between attempts).
        exist_ok: Delete a non-empty local output directory instead of refusing it.
        **kwargs: Refused: any other keyword raises ``InvalidArgumentError`` (a ``ValueError``,
            as in the reference, and a ``TypeError``, as for any unknown keyword).

    Raises:
        InvalidArgumentError: An unknown keyword argument.
        UnknownEncodingError: A column's encoding is not known.
        CompressionError: An invalid compression string.
        MissingExtraError: The codec needs the ``codecs`` extra (Brotli, python-snappy).
        HashError: Unknown, unsorted or repeated hash names.
        ValueError: An invalid ``size_limit``.
        TargetExistsError: The local directory is not empty and ``exist_ok`` is False.
    """

    def __init__(
        self,
        *,
        columns: Mapping[str, str],
        out: str | os.PathLike[str] | tuple[str, str],
        keep_local: bool = False,
        compression: str | None = None,
        hashes: list[str] | None = None,
        size_limit: int | str | None = 1 << 26,
        progress_bar: bool = False,
        max_workers: int | None = None,
        retry: int = 2,
        exist_ok: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise InvalidArgumentError(f"Invalid Writer argument(s): {sorted(kwargs)}")
        self._plan = ColumnPlan.from_columns(columns)
        self._encoder = RecordEncoder(self._plan)
        self._codec: Codec | None = get_codec(compression)
        if self._codec is not None:
            self._codec.check_available()  # fail before any work, not at the first flush
        self._hashes = check_hash_names(hashes)
        self._size_limit = parse_size_limit(size_limit)
        self._compression = compression or None
        self._config = config_json(self._shard_config())
        self._limit = min(self._size_limit or MAX_SHARD_BYTES, MAX_SHARD_BYTES)
        self._keep_local = keep_local
        self.local, self.remote = _resolve_out(out, exist_ok=exist_ok)
        self._storage = _open_remote(self.remote, retry) if self.remote else None
        workers = max_workers or min(32, (os.cpu_count() or 1) + 4)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mds-shard")
        # Bounds memory: at most this many flushed shards are buffered while being processed.
        self._max_in_flight = min(workers, 2 * (os.cpu_count() or 1) + 2)
        self._futures: list[Future[ShardInfo]] = []
        self._failure: BaseException | None = None
        self._lock = threading.Lock()
        self._progress = _progress_bar() if progress_bar else None
        self._index: Index | None = None
        self._aborted = False
        self._reset_pending()

    # --- public API ---------------------------------------------------------------------------

    @property
    def columns(self) -> dict[str, str]:
        """The columns, sorted by name, mapped to their encodings."""
        return dict(zip(self._plan.names, self._plan.encodings))

    def get_config(self) -> dict[str, Any]:
        """The shard-writing configuration, as the reference's ``MDSWriter.get_config()``.

        Returns:
            ``version``, ``format``, ``compression``, ``hashes``, ``size_limit`` (``None`` when
            unlimited) and the ``column_names``/``column_encodings``/``column_sizes`` lists, as
            stored in every shard's header.
        """
        return self._shard_config()

    def write(self, sample: Mapping[str, Any]) -> None:
        """Encode one sample and append it, flushing the current shard first if it is full.

        Raises:
            EncodingError: A missing column or a value its encoding cannot store.
            ShardTooLargeError: The sample alone would make a shard of 4 GiB or more.
            StorageError: An earlier shard failed to be written or uploaded.
        """
        self._check_open()
        record = self._encoder.encode(sample)
        cost = len(record) + 4
        if self._num_pending and self._pending_size + cost > self._limit:
            self._flush()
        self._chunks.append(record)
        self._int_sizes.append(len(record))
        self._num_pending += 1
        self._pending_size += cost
        if self._pending_size > MAX_SHARD_BYTES:
            self._flush()  # raises ShardTooLargeError before anything is written

    def write_batch(self, columns: Mapping[str, Any] | Any) -> None:
        """Append many samples given column-wise: the same bytes as ``write`` on each row.

        Args:
            columns: Column name -> values (numpy arrays, pyarrow arrays or lists), or a
                ``pyarrow.RecordBatch``/``Table``.

        Raises:
            EncodingError: A missing column, ragged columns or an unstorable value.
            StorageError: An earlier shard failed to be written or uploaded.
        """
        self._check_open()
        batch = encode_batch(self._plan, columns)
        ends = np.cumsum(batch.sizes)
        costs = np.cumsum(batch.sizes + 4)
        pos, n = 0, len(batch)
        while pos < n:
            spent = costs[pos - 1] if pos else 0
            fit = int(np.searchsorted(costs, spent + self._limit - self._pending_size, "right"))
            take = fit - pos
            if take <= 0 and self._num_pending:
                self._flush()
                continue
            take = max(take, 1)  # an oversized sample gets a shard of its own
            begin = int(ends[pos - 1]) if pos else 0
            end = int(ends[pos + take - 1])
            self._append_chunk(batch.data[begin:end], batch.sizes[pos : pos + take])
            pos += take
            if pos < n or self._pending_size > MAX_SHARD_BYTES:
                self._flush()

    def finish(self) -> Index:
        """Flush the last shard, wait for every shard, then write ``index.json`` last.

        Returns:
            The dataset's index. Calling ``finish`` again returns it unchanged.

        Raises:
            StorageError: A shard or the index could not be written or uploaded.
        """
        if self._index is not None:
            return self._index
        self._check_open()
        if self._num_pending:
            self._flush()
        shards = []
        try:
            for future in self._futures:
                shards.append(future.result())
        except BaseException as exc:
            self._abort()
            raise _as_storage_error(exc) from exc
        self._pool.shutdown(wait=True)
        index = Index(tuple(shards))
        self._publish(dump_index(index))
        self._index = index
        return index

    def abort(self) -> None:
        """Stop without publishing ``index.json``: cancel pending work and drop temporary files."""
        if self._index is None and not self._aborted:
            self._abort()

    def __enter__(self) -> MDSWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()  # never publish an index for a dataset that failed half-way

    # --- shard buffering ----------------------------------------------------------------------

    def _shard_config(self) -> dict[str, Any]:
        return {
            "column_encodings": list(self._plan.encodings),
            "column_names": list(self._plan.names),
            "column_sizes": list(self._plan.sizes),
            "compression": self._compression,
            "format": "mds",
            "hashes": list(self._hashes),
            "size_limit": self._size_limit,
            "version": 2,
        }

    def _reset_pending(self) -> None:
        self._chunks: list[bytes | memoryview] = []
        self._int_sizes: list[int] = []
        self._array_sizes: list[np.ndarray] = []
        self._num_pending = 0
        self._pending_size = shard_size(0, len(self._config), 0)

    def _append_chunk(self, data: np.ndarray, sizes: np.ndarray) -> None:
        self._move_int_sizes()
        self._chunks.append(memoryview(data))
        self._array_sizes.append(sizes)
        self._num_pending += len(sizes)
        self._pending_size += int(sizes.sum()) + 4 * len(sizes)

    def _move_int_sizes(self) -> None:
        # Keeps record order when write() and write_batch() calls are mixed.
        if self._int_sizes:
            self._array_sizes.append(np.asarray(self._int_sizes, np.int64))
            self._int_sizes = []

    def _flush(self) -> None:
        self._move_int_sizes()
        sizes = np.concatenate(self._array_sizes) if self._array_sizes else np.zeros(0, np.int64)
        try:
            raw = shard_parts(self._config, self._chunks, sizes)
        finally:
            self._reset_pending()
        self._wait_for_room()
        number = len(self._futures)
        future = self._pool.submit(self._store_shard, number, raw, len(sizes))
        future.add_done_callback(self._on_done)
        self._futures.append(future)

    def _wait_for_room(self) -> None:
        running = [f for f in self._futures[-self._max_in_flight :] if not f.done()]
        if len(running) >= self._max_in_flight:
            running[0].exception()  # waits; a failure is picked up by _check_open
        self._check_open()

    # --- worker side --------------------------------------------------------------------------

    def _store_shard(self, number: int, raw: list[Buffer], samples: int) -> ShardInfo:
        raw_name = f"shard.{number:05}.mds"
        raw_info = FileInfo(raw_name, sum(map(len, raw)), self._digests(raw))
        zip_info = None
        if self._codec is not None:
            zip_name = f"{raw_name}.{self._codec.extension}"
            with open(os.path.join(self.local, zip_name), "wb") as fh:
                sink = _DigestingFile(fh, self._hashes)
                self._codec.compress_into(raw, sink)
            zip_info = FileInfo(zip_name, sink.digester.size, sink.digester.hexdigests())
        else:
            with open(os.path.join(self.local, raw_name), "wb") as fh:
                fh.writelines(raw)
        del raw  # free the buffers before a possibly slow upload
        basename = (zip_info or raw_info).basename
        path = os.path.join(self.local, basename)
        if self._storage is not None:
            self._storage.upload_file(path, basename)
            if not self._keep_local:
                os.remove(path)
        return ShardInfo(
            column_encodings=self._plan.encodings,
            column_names=self._plan.names,
            column_sizes=self._plan.sizes,
            compression=self._compression,
            hashes=tuple(self._hashes),
            raw_data=raw_info,
            samples=samples,
            size_limit=self._size_limit,
            zip_data=zip_info,
        )

    def _digests(self, parts: list[Buffer]) -> dict[str, str]:
        return {algo: hexdigest_parts(algo, parts) for algo in self._hashes}

    def _on_done(self, future: Future[ShardInfo]) -> None:
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            with self._lock:
                self._failure = self._failure or exc
        elif self._progress is not None:
            self._progress.update(1)

    # --- lifecycle ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failure is not None:
            failure = self._failure
            self._abort()
            raise _as_storage_error(failure) from failure
        if self._index is not None or self._aborted:
            raise RuntimeError("this MDSWriter is closed; create a new one to write more")

    def _publish(self, data: bytes) -> None:
        path = os.path.join(self.local, INDEX_BASENAME)
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        if self._storage is not None:
            try:
                self._storage.write_bytes(INDEX_BASENAME, data)
            except BaseException as exc:
                # Local files stay, so calling finish() again retries the index upload.
                raise _as_storage_error(exc) from exc
        self._close()

    def _abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._reset_pending()
        self._aborted = True
        self._close()

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        if self.remote and not self._keep_local:
            shutil.rmtree(self.local, ignore_errors=True)


class _DigestingFile:
    """A write-only file that hashes what passes through (the compressed shard)."""

    def __init__(self, fh: Any, algos: list[str]) -> None:
        self.fh = fh
        self.digester = Digester(algos)

    def write(self, data: Buffer) -> int:
        self.digester.update(data)
        return self.fh.write(data)


def _as_storage_error(exc: BaseException) -> BaseException:
    if isinstance(exc, MDSError):
        return exc
    if isinstance(exc, OSError):
        return StorageError(f"writing a shard failed: {exc}")
    return exc


def _resolve_out(
    out: str | os.PathLike[str] | tuple[str, str], *, exist_ok: bool
) -> tuple[str, str | None]:
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise ValueError("out must be a path, a URL, or a (local, remote) pair")
        local, remote = os.fspath(out[0]), os.fspath(out[1])
    else:
        text = os.fspath(out)
        if _is_remote(text):
            local, remote = tempfile.mkdtemp(prefix="mdswriter-"), text
        else:
            local, remote = text.removeprefix("file://"), None
    local = os.path.expanduser(local)
    if os.path.isdir(local) and os.listdir(local):
        if not exist_ok:
            raise TargetExistsError(
                f"Directory is not empty: {local!r} (the output directory); pass exist_ok=True "
                "to replace its contents"
            )
        shutil.rmtree(local)
    os.makedirs(local, exist_ok=True)
    return local, remote


def _is_remote(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme != "file"


def _open_remote(remote: str, retry: int) -> Any:
    from mdsloader.storage import open_storage

    # The writer's retry counts attempts; the storage layer counts retries after the first.
    return open_storage(remote, retries=max(int(retry) - 1, 0))


def _progress_bar() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(desc="shards written", unit="shard")
