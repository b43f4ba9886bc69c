"""Executor side: write one Spark partition's rows as MDS shards under ``<run dir>/<partition>/``.

``PartitionWriter`` is the function handed to ``mapInArrow``. Each task converts its Arrow batches
(``worker.convert.arrow``), streams them into an ``MDSWriter`` that uploads shards straight to
the target, and yields a single small row: the partition's shard list and counts. The directory
is named by ``TaskContext.partitionId()``, not the attempt id, so a retried task overwrites its own
files; whatever an earlier attempt left beyond that is removed by the driver before publication.

Errors cross the Spark boundary as text, so they are wrapped in a tagged message
(:func:`executor_failure`) that the driver turns back into the right ``worker.errors`` class.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mdsloader import errors as loader_errors
from mdsloader.mds.index import Index, dump_index
from mdsloader.mds.writer import MDSWriter
from worker.convert.arrow import convert_batch
from worker.convert.null_tally import NullTally
from worker.convert.progress import ProgressSender
from worker.convert.schema import ColumnPlan, mds_columns
from worker.errors import ConversionError

RESULT_SCHEMA = (
    "partition int, attempt int, rows long, shards long, raw_bytes long, zip_bytes long, "
    "index string, nulls string"
)
ERROR_TAG = "MDS_CONVERT_ERROR"
# Test hook: "fail_first_attempt" makes attempt 0 of every task write its shards plus a stray
# file, then fail, so retries and orphan removal can be proven end to end.
FAULT_ENV = "MDS_CONVERT_FAULT"
STRAY_NAME = "shard.99999.stray"

_RESULT_TYPES = pa.schema([
    ("partition", pa.int32()), ("attempt", pa.int32()), ("rows", pa.int64()),
    ("shards", pa.int64()), ("raw_bytes", pa.int64()), ("zip_bytes", pa.int64()),
    ("index", pa.string()), ("nulls", pa.string()),
])


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """Everything an executor needs to write its partition (pickled into every task)."""

    run_url: str  # URL or absolute path of ``<target>/<run dir>``
    plans: tuple[ColumnPlan, ...]
    compression: str | None
    hashes: tuple[str, ...]
    size_limit: int
    # Where executors send progress datagrams while they write (``worker.convert.progress``).
    progress_address: tuple[str, int] | None = None
    progress_token: str = ""
    # Compression/upload threads per task. Tasks already run in parallel on every core, and each
    # thread may hold a flushed shard (up to size_limit) in memory, so keep this small.
    writer_threads: int = 3


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """What one partition wrote; ``nulls`` (the counts of :class:`NullTally`) when it met
    missing values, in which case it stopped writing and ``index`` is empty."""

    rows: int
    index: Index
    nulls: dict[str, dict[str, int]] | None = None

    @property
    def raw_bytes(self) -> int:
        return sum(shard.raw_data.bytes for shard in self.index.shards)

    @property
    def zip_bytes(self) -> int:
        return sum(shard.file.bytes for shard in self.index.shards)


class PartitionWriter:
    """The ``mapInArrow`` function: writes the task's partition, yields one result row.

    ``counters`` are Spark accumulators (rows, shards, bytes, partitions) for progress; they reach
    the driver when the task finishes.
    """

    def __init__(self, options: WriteOptions, counters: tuple[Any, ...] = ()) -> None:
        self.options = options
        self.counters = counters

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        partition = context.partitionId() if context else 0
        attempt = context.attemptNumber() if context else 0
        try:
            stats = write_partition(self.options, partition, batches, attempt=attempt)
            _maybe_inject_fault(self.options, partition, attempt)
        except Exception as exc:
            raise executor_failure(exc) from exc
        count_into(self.counters, stats)
        yield result_batch(partition, attempt, stats)


def count_into(counters: tuple[Any, ...], stats: PartitionStats) -> None:
    """Add a finished partition to the progress accumulators (rows, shards, bytes, done)."""
    if counters:
        rows, shards, size, done = counters
        rows.add(stats.rows)
        shards.add(len(stats.index.shards))
        size.add(stats.zip_bytes)
        done.add(1)


def partition_dir(partition: int) -> str:
    """The directory of one partition below the run directory."""
    return f"{partition:05d}"


def write_partition(
    options: WriteOptions,
    partition: int,
    batches: Iterator[pa.RecordBatch],
    *,
    attempt: int = 0,
) -> PartitionStats:
    """Write every batch of one partition; an empty partition writes nothing at all.

    Missing values are counted as each batch is encoded (one pass over the source). At the first
    one the partition stops writing, removes its shards and only counts the rest, so the driver
    can fail the job with exact counts and publish nothing.
    """
    plans = list(options.plans)
    tally = NullTally()
    sender = ProgressSender.for_task(options, partition, attempt)
    writer = None
    rows = 0
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if tally.add_batch(batch, plans) or tally.has_nulls:
                writer = _drop(writer)
                continue
            if writer is None:
                writer = _open_writer(options, partition)
            writer.write_batch(convert_batch(batch, plans))
            rows += batch.num_rows
            sender.update(rows, *_written(writer))
        if tally.has_nulls:
            return PartitionStats(rows=0, index=Index(), nulls=tally.to_dict())
        index = writer.finish() if writer is not None else Index()
        stats = PartitionStats(rows=rows, index=index)
        sender.update(rows, len(index.shards), stats.zip_bytes, force=True)
        return stats
    except BaseException:
        _drop(writer)
        raise
    finally:
        sender.close()


def _open_writer(options: WriteOptions, partition: int) -> MDSWriter:
    return MDSWriter(
        columns=mds_columns(list(options.plans)),
        out=_join(options.run_url, partition_dir(partition)),
        compression=options.compression,
        hashes=list(options.hashes),
        size_limit=options.size_limit,
        max_workers=options.writer_threads,
        exist_ok=True,  # a retried attempt replaces what its predecessor wrote
    )


def _drop(writer: MDSWriter | None) -> None:
    if writer is not None:
        writer.abort()


def _written(writer: MDSWriter) -> tuple[int, int]:
    """(shards, stored bytes) the writer has finished so far, for progress only.

    ``MDSWriter`` keeps one future per flushed shard; reading the finished ones is cheap and
    never blocks.
    """
    shards = size = 0
    for future in getattr(writer, "_futures", ()):
        if future.done() and not future.cancelled() and future.exception() is None:
            info = future.result()
            shards += 1
            size += (info.zip_data or info.raw_data).bytes
    return shards, size


def result_row(partition: int, attempt: int, stats: PartitionStats) -> dict[str, object]:
    """What a task reports to the driver about its partition (see ``RESULT_SCHEMA``)."""
    return {
        "partition": partition, "attempt": attempt, "rows": stats.rows,
        "shards": len(stats.index.shards), "raw_bytes": stats.raw_bytes,
        "zip_bytes": stats.zip_bytes, "index": dump_index(stats.index).decode("ascii"),
        "nulls": json.dumps(stats.nulls) if stats.nulls else None,
    }


def result_batch(partition: int, attempt: int, stats: PartitionStats) -> pa.RecordBatch:
    """The one-row Arrow batch a ``mapInArrow`` task yields to the driver."""
    row = result_row(partition, attempt, stats)
    return pa.RecordBatch.from_arrays(
        [pa.array([row[f.name]], f.type) for f in _RESULT_TYPES], schema=_RESULT_TYPES
    )


def executor_failure(exc: BaseException) -> RuntimeError:
    """Wrap an executor-side error in a tagged message the driver can classify."""
    cls, code = _classify(exc)
    payload = json.dumps({"cls": cls, "code": code, "message": f"{exc}"})
    return RuntimeError(f"{ERROR_TAG}{payload}{ERROR_TAG}")


def _classify(exc: BaseException) -> tuple[str, str | None]:
    if isinstance(exc, ConversionError):
        return type(exc).__name__, exc.code
    if isinstance(exc, loader_errors.StorageUnavailableError | ConnectionError | TimeoutError):
        return "TransientConversionError", None
    if isinstance(exc, loader_errors.AccessDeniedError):
        return "PermanentConversionError", "access_denied"
    if isinstance(exc, loader_errors.ObjectNotFoundError):
        return "PermanentConversionError", "target_not_found"  # e.g. the bucket does not exist
    if isinstance(exc, loader_errors.StorageError):
        return "TransientConversionError", None
    if isinstance(exc, loader_errors.MDSError):
        return "PermanentConversionError", "encoding_failed"
    return "PermanentConversionError", "conversion_failed"


def _maybe_inject_fault(options: WriteOptions, partition: int, attempt: int) -> None:
    if os.environ.get(FAULT_ENV) != "fail_first_attempt" or attempt > 0:
        return
    from mdsloader.storage import open_storage

    open_storage(options.run_url).write_bytes(f"{partition_dir(partition)}/{STRAY_NAME}", b"x")
    raise OSError(f"injected failure of partition {partition}, attempt {attempt}")


def _join(base: str, child: str) -> str:
    return f"{base.rstrip('/')}/{child}"
