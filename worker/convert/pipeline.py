"""The conversion: a Spark DataFrame (or table) to a published MDS dataset.

Order of work, so that a bad request never leaves files behind:
1. validate everything on the driver (columns and encodings, compression, hashes, size limit,
   the target's existing index under ``mode``);
2. count nulls in one Spark aggregation and apply the null policy;
3. write shards from the executors (``mapInArrow``) under ``<target>/<run dir>/<partition>/``,
   inside a Spark job group that a cancel request cancels;
4. merge the partitions' shard lists and publish ``index.json`` last (``worker.convert.publish``).
A failure or cancellation after step 3 started removes the run directory and publishes nothing.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyspark.sql import DataFrame, Row, SparkSession

from mdsloader.errors import MDSError
from mdsloader.mds.compression import get_codec
from mdsloader.mds.hashing import check_hash_names
from mdsloader.mds.index import parse_index
from mdsloader.storage import Storage, open_storage
from worker.convert.failures import to_conversion_error
from worker.convert.model import ConversionResult, ConversionSpec, Mode, NullPolicy
from worker.convert.nulls import apply_null_policy, count_nulls
from worker.convert.partitions import RESULT_SCHEMA, PartitionWriter, WriteOptions
from worker.convert.progress import JobMonitor, ProgressCallback
from worker.convert.publish import INDEX, PartitionOutput, Publisher, check_run_dir
from worker.convert.schema import ColumnPlan, mds_columns, plan_columns, projection
from worker.convert.source import resolve_source
from worker.errors import ConversionCancelled, ConversionError, PermanentConversionError

MAX_SIZE_LIMIT = (1 << 32) - 1  # uint32 offsets (mds-format.md 1.3)
_CANCELLED = "the conversion was cancelled; nothing was published"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _NullPolicy:
    name: NullPolicy
    fill_values: dict[str, object]


@dataclass(frozen=True, slots=True)
class _Request:
    plans: list[ColumnPlan]
    options: WriteOptions
    publisher: Publisher
    storage: Storage


def convert_table(
    spec: ConversionSpec,
    *,
    spark: SparkSession,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ConversionResult:
    """Convert ``spec.source_table`` into an MDS dataset at ``spec.target``.

    Raises:
        ConversionError: a ``worker.errors`` subclass; ``TransientConversionError`` is worth a
            retry, ``ConversionCancelled`` when ``cancel`` was set.
    """
    try:
        df = resolve_source(spark, spec.source_table)
    except Exception as exc:
        raise to_conversion_error(exc) from exc
    return dataframe_to_mds(
        df, spec.target, columns=spec.columns, compression=spec.compression, hashes=spec.hashes,
        size_limit=spec.size_limit, partitions=spec.partitions, mode=spec.mode,
        progress=progress, cancel=cancel, null_policy=spec.null_policy,
        fill_values=spec.fill_values, run_id=spec.run_id,
    )


def dataframe_to_mds(
    df: DataFrame,
    out: str,
    *,
    columns: Mapping[str, str | None] | None = None,
    compression: str | None = "zstd",
    hashes: Sequence[str] = ("xxh64",),
    size_limit: int = 1 << 26,
    partitions: int | None = None,
    mode: Mode = "error",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    null_policy: NullPolicy = "error",
    fill_values: Mapping[str, object] | None = None,
    run_id: str | None = None,
) -> ConversionResult:
    """Write ``df`` as an MDS dataset at ``out`` (a local directory or ``s3://bucket/prefix``).

    Args:
        df: The rows to convert.
        out: The dataset root; ``index.json`` is published there last.
        columns: Selected columns and encoding overrides (None = infer); None = all columns.
        compression: An MDS compression string, or None.
        hashes: Hash algorithms recorded for every shard file.
        size_limit: Maximum uncompressed shard size in bytes (< 4 GiB).
        partitions: Repartition to this many partitions first (the write parallelism).
        mode: ``error`` refuses an existing dataset; ``overwrite`` replaces it atomically.
        progress: Called about once a second with a :class:`ConversionProgress`.
        cancel: When set, the Spark jobs are cancelled and what was written is removed.
        null_policy: ``error``, ``skip`` (drop rows with nulls) or ``fill`` (``fill_values``).
        fill_values: Per-column replacement values for ``null_policy="fill"``.
        run_id: Names the run directory; a redelivered job passes the same id.

    Raises:
        ConversionError: see :func:`convert_table`.
    """
    try:
        request = _prepare(df, out, columns, compression, hashes, size_limit, mode, run_id)
        _check_cancel(cancel)
        policy = _NullPolicy(null_policy, dict(fill_values or {}))
        outputs = _run_jobs(df, request, policy, partitions, progress, cancel)
        return _publish(request, outputs)
    except ConversionError:
        raise
    except Exception as exc:
        raise to_conversion_error(exc) from exc


def _prepare(
    df: DataFrame,
    out: str,
    columns: Mapping[str, str | None] | None,
    compression: str | None,
    hashes: Sequence[str],
    size_limit: int,
    mode: Mode,
    run_id: str | None,
) -> _Request:
    """Every check that can fail before anything is written."""
    if mode not in ("error", "overwrite"):
        raise PermanentConversionError(f"unknown mode {mode!r}", code="invalid_request")
    if not 0 < int(size_limit) <= MAX_SIZE_LIMIT:
        raise PermanentConversionError(
            f"size_limit must be between 1 and {MAX_SIZE_LIMIT} bytes", code="invalid_request"
        )
    try:
        get_codec(compression)
        hash_names = tuple(check_hash_names(hashes))
        storage = open_storage(out)
    except (MDSError, ValueError) as exc:
        raise PermanentConversionError(str(exc), code="invalid_request") from exc
    plans = plan_columns(df.schema, columns)
    run_dir = check_run_dir(run_id or f"run-{uuid.uuid4().hex[:16]}")
    publisher = Publisher(storage, run_dir, mode)
    publisher.check_target()
    options = WriteOptions(
        run_url=storage.child_url(run_dir), plans=tuple(plans), compression=compression,
        hashes=hash_names, size_limit=int(size_limit),
    )
    return _Request(plans, options, publisher, storage)


def _run_jobs(
    df: DataFrame,
    request: _Request,
    policy: _NullPolicy,
    partitions: int | None,
    progress: ProgressCallback | None,
    cancel: threading.Event | None,
) -> list[PartitionOutput]:
    """Count nulls, then write every partition, all in one cancellable Spark job group."""
    sc = df.sparkSession.sparkContext
    group = f"mds-convert-{uuid.uuid4().hex[:12]}"
    monitor = JobMonitor(sc, group, progress=progress, cancel=cancel)
    sc.setJobGroup(group, f"MDS conversion to {request.storage.url}", interruptOnCancel=True)
    try:
        with monitor:
            collected = _write(df, request, policy, partitions, monitor)
        monitor.report()
    except BaseException as exc:
        _abandon(monitor, request.publisher)
        if monitor.cancelled:
            raise ConversionCancelled(_CANCELLED) from exc
        raise
    finally:
        for key in ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel"):
            sc.setLocalProperty(key, None)  # the thread's later jobs are not ours
    if cancel is not None and cancel.is_set():
        _abandon(monitor, request.publisher)
        raise ConversionCancelled(_CANCELLED)
    return _outputs(collected)


def _write(
    df: DataFrame,
    request: _Request,
    policy: _NullPolicy,
    partitions: int | None,
    monitor: JobMonitor,
) -> list[Row]:
    counts = count_nulls(df, request.plans)
    rows = apply_null_policy(df, request.plans, counts, policy.name, policy.fill_values)
    if partitions:
        rows = rows.repartition(int(partitions))
    projected = rows.select(*projection(request.plans))
    monitor.partitions_total = projected.rdd.getNumPartitions()
    writer = PartitionWriter(request.options, monitor.counters)
    return projected.mapInArrow(writer, RESULT_SCHEMA).collect()


def _outputs(collected: list[Row]) -> list[PartitionOutput]:
    for row in collected:
        if row["attempt"]:
            log.info(
                "conversion.partition_retried partition=%d attempt=%d",
                row["partition"], row["attempt"],
            )
    return [
        PartitionOutput(row["partition"], row["rows"], parse_index(row["index"], source="task"))
        for row in collected
    ]


def _publish(request: _Request, outputs: list[PartitionOutput]) -> ConversionResult:
    if sum(o.rows for o in outputs) == 0:
        request.publisher.discard()
        raise PermanentConversionError("the source has no rows to convert", code="empty_source")
    try:
        index = request.publisher.publish(outputs)
    except BaseException:
        request.publisher.discard()
        raise
    return ConversionResult(
        index_url=request.storage.child_url(INDEX),
        samples=index.num_samples,
        shards=len(index.shards),
        raw_bytes=sum(shard.raw_data.bytes for shard in index.shards),
        zip_bytes=sum(shard.file.bytes for shard in index.shards),
        columns=mds_columns(request.plans),
    )


def _abandon(monitor: JobMonitor, publisher: Publisher) -> None:
    """Wait for the group's tasks to stop, then remove everything the run wrote."""
    if not monitor.drain():
        log.warning("conversion.tasks_still_running group=%s", monitor.group)
    try:
        publisher.discard()
    except Exception:
        log.exception("conversion.cleanup_failed run=%s", publisher.run_dir)


def _check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise ConversionCancelled("the conversion was cancelled before writing")
