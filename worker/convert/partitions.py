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
from worker.convert.arrow import convert_batch
from worker.convert.schema import ColumnPlan, mds_columns
from worker.errors import ConversionError

RESULT_SCHEMA = (
    "partition int, attempt int, rows long, shards long, raw_bytes long, zip_bytes long, "
    "index string"
)
ERROR_TAG = "MDS_CONVERT_ERROR"
# Test hook: "fail_first_attempt" makes attempt 0 of every task write its shards plus a stray
# file, then fail, so retries and orphan removal can be proven end to end.
FAULT_ENV = "MDS_CONVERT_FAULT"
STRAY_NAME = "shard.99999.stray"

_RESULT_TYPES = pa.schema([
    ("partition", pa.int32()), ("attempt", pa.int32()), ("rows", pa.int64()),
    ("shards", pa.int64()), ("raw_bytes", pa.int64()), ("zip_bytes", pa.int64()),
    ("index", pa.string()),
])


@dataclass(frozen=True, slots=True)
class WriteOptions:
    """Everything an executor needs to write its partition (pickled into every task)."""

    run_url: str  # URL or absolute path of ``<target>/<run dir>``
    plans: tuple[ColumnPlan, ...]
    compression: str | None
    hashes: tuple[str, ...]
    size_limit: int
    # Compression/upload threads per task. Tasks already run in parallel on every core, and each
    # thread may hold a flushed shard (up to size_limit) in memory, so keep this small.
    writer_threads: int = 3


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """What one partition wrote."""

    rows: int
    index: Index

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
            stats = write_partition(self.options, partition, batches)
            _maybe_inject_fault(self.options, partition, attempt)
        except Exception as exc:
            raise executor_failure(exc) from exc
        self._count(stats)
        yield result_batch(partition, attempt, stats)

    def _count(self, stats: PartitionStats) -> None:
        if self.counters:
            rows, shards, size, done = self.counters
            rows.add(stats.rows)
            shards.add(len(stats.index.shards))
            size.add(stats.zip_bytes)
            done.add(1)


def partition_dir(partition: int) -> str:
    """The directory of one partition below the run directory."""
    return f"{partition:05d}"


def write_partition(
    options: WriteOptions, partition: int, batches: Iterator[pa.RecordBatch]
) -> PartitionStats:
    """Write every batch of one partition; an empty partition writes nothing at all."""
    from mdsloader.mds.writer import MDSWriter

    plans = list(options.plans)
    writer = None
    rows = 0
    try:
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if writer is None:
                writer = MDSWriter(
                    columns=mds_columns(plans),
                    out=_join(options.run_url, partition_dir(partition)),
                    compression=options.compression,
                    hashes=list(options.hashes),
                    size_limit=options.size_limit,
                    max_workers=options.writer_threads,
                    exist_ok=True,  # a retried attempt replaces what its predecessor wrote
                )
            writer.write_batch(convert_batch(batch, plans))
            rows += batch.num_rows
        index = writer.finish() if writer is not None else Index()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return PartitionStats(rows=rows, index=index)


def result_batch(partition: int, attempt: int, stats: PartitionStats) -> pa.RecordBatch:
    """The one-row Arrow batch a task yields to the driver."""
    values = [
        [partition], [attempt], [stats.rows], [len(stats.index.shards)], [stats.raw_bytes],
        [stats.zip_bytes], [dump_index(stats.index).decode("ascii")],
    ]
    return pa.RecordBatch.from_arrays(
        [pa.array(v, f.type) for v, f in zip(values, _RESULT_TYPES)], schema=_RESULT_TYPES
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
