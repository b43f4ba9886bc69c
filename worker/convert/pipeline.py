"""The conversion: a Spark DataFrame (or table) to a published MDS dataset.

Order of work, so that a bad request never leaves files behind:
1. validate everything on the driver (columns and encodings, compression, hashes, size limit,
   the target's existing index under ``mode``);
2. choose the read path: a bare Parquet/ORC table is read by the executors with pyarrow along
   Spark's own splits (``worker.convert.direct_plan``); anything else goes through
   ``mapInArrow``, with the reason recorded in the result;
3. write shards from the executors under ``<target>/<run dir>/<partition>/``, counting missing
   values as they encode (one pass over the source), inside a Spark job group that a cancel
   request cancels;
4. fail on missing values (the null policy), or merge the partitions' shard lists and publish
   ``index.json`` last (``worker.convert.publish``).
A failure, a null under ``null_policy="error"`` or a cancellation removes the run directory and
publishes nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from mdsloader.errors import MDSError
from mdsloader.mds.compression import get_codec
from mdsloader.mds.hashing import check_hash_names
from mdsloader.mds.index import Index, parse_index
from mdsloader.storage import Storage, open_storage
from worker.convert.failures import to_conversion_error
from worker.convert.model import ConversionResult, ConversionSpec, Mode, NullPolicy
from worker.convert.null_tally import NullTally
from worker.convert.nulls import NullCounts, apply_null_policy, null_error
from worker.convert.partitions import RESULT_SCHEMA, PartitionWriter, WriteOptions
from worker.convert.progress import JobMonitor, ProgressCallback
from worker.convert.publish import INDEX, PartitionOutput, Publisher, check_run_dir
from worker.convert.read_paths import (
    ReadPath,
    choose_read_path,
    with_progress_channel,
    write_direct,
)
from worker.convert.row_select import apply_filter, split_frames
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


@dataclass(slots=True)
class _Written:
    """What the executors reported, and which read path produced it."""

    rows: list[Mapping[str, Any]]
    read_path: str
    reason: str


def convert_table(
    spec: ConversionSpec,
    *,
    spark: SparkSession,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    source_timeout: float | None = None,
) -> ConversionResult:
    """Convert ``spec.source_table`` into an MDS dataset at ``spec.target``.

    ``source_timeout`` bounds the time resolving the source may take (see ``resolve_source``).

    Raises:
        ConversionError: a ``worker.errors`` subclass; ``TransientConversionError`` is worth a
            retry, ``ConversionCancelled`` when ``cancel`` was set.
    """
    try:
        df = apply_filter(resolve_source(spark, spec.source_table, timeout=source_timeout),
                          spec.filter)
    except Exception as exc:
        raise to_conversion_error(exc) from exc
    if spec.splits is not None:
        return convert_splits(df, spec, progress=progress, cancel=cancel)
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
    read_path: ReadPath = "auto",
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
        read_path: ``auto`` reads bare Parquet/ORC tables with pyarrow on the executors and
            everything else through ``mapInArrow``; ``spark`` always uses ``mapInArrow``.

    Raises:
        ConversionError: see :func:`convert_table`.
    """
    try:
        request = _prepare(df, out, columns, compression, hashes, size_limit, mode, run_id)
        _check_cancel(cancel)
        policy = _NullPolicy(null_policy, dict(fill_values or {}))
        written = _run_jobs(df, request, policy, partitions, progress, cancel, read_path)
        return _publish(request, written)
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
    if mode not in ("error", "overwrite", "append"):
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
    if mode == "append" and publisher.previous is not None and publisher.previous.shards:
        check_appendable(publisher.previous, mds_columns(plans), storage.child_url(INDEX))
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
    read_path: ReadPath,
) -> _Written:
    """Write every partition, all in one cancellable Spark job group, and apply the null
    policy to what the executors counted."""
    sc = df.sparkSession.sparkContext
    group = f"mds-convert-{uuid.uuid4().hex[:12]}"
    monitor = JobMonitor(sc, group, progress=progress, cancel=cancel)
    monitor.phase = "planning"
    sc.setJobGroup(group, f"MDS conversion to {request.storage.url}", interruptOnCancel=True)
    try:
        with monitor:
            written = _write(df, request, policy, partitions, monitor, read_path)
            _check_nulls(written.rows, policy.name)
            monitor.phase = "publishing"
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
    return written


def _write(
    df: DataFrame,
    request: _Request,
    policy: _NullPolicy,
    partitions: int | None,
    monitor: JobMonitor,
    read_path: ReadPath,
) -> _Written:
    rows = apply_null_policy(df, request.plans, policy.name, policy.fill_values)
    if partitions:
        rows = rows.repartition(int(partitions))
    projected = rows.select(*projection(request.plans))
    direct, reason = choose_read_path(
        projected, request.plans, policy.name, partitions, read_path
    )
    options = with_progress_channel(request.options, monitor, df.sparkSession)
    if direct is not None:
        monitor.read_path, monitor.phase = "direct", "writing"
        collected = write_direct(df.sparkSession, direct, options, monitor)
        unreadable = [row["unreadable"] for row in collected if row.get("unreadable")]
        if not unreadable:
            return _Written(collected, "direct", reason)
        # A file pyarrow cannot read as Spark does (e.g. a schema-evolved table): start over.
        reason = f"direct read refused: {unreadable[0]}"
        log.info("conversion.direct_read_refused reason=%s", reason)
        request.publisher.discard()
        monitor.reset_counts()
    monitor.read_path, monitor.phase = "spark", "writing"
    monitor.partitions_total = projected.rdd.getNumPartitions()
    writer = PartitionWriter(options, monitor.counters)
    collected = [row.asDict() for row in projected.mapInArrow(writer, RESULT_SCHEMA).collect()]
    return _Written(collected, "spark", reason)


def _check_nulls(rows: list[Mapping[str, Any]], policy: NullPolicy) -> None:
    tally = NullTally()
    for row in rows:
        if row.get("nulls"):
            tally.merge(json.loads(row["nulls"]))
    if tally.has_nulls:
        raise null_error(NullCounts(tally.missing, tally.null_elements), policy)


def _outputs(collected: list[Mapping[str, Any]]) -> list[PartitionOutput]:
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


def _publish(request: _Request, written: _Written, *, retire: bool = True) -> ConversionResult:
    outputs = _outputs(written.rows)
    if sum(o.rows for o in outputs) == 0:
        request.publisher.discard()
        raise PermanentConversionError("the source has no rows to convert", code="empty_source")
    try:
        index = request.publisher.publish(outputs, retire=retire)
    except BaseException:
        request.publisher.discard()
        raise
    added = None
    if request.publisher.mode == "append":
        kept = request.publisher.previous.shards if request.publisher.previous else ()
        added = index.shards[len(kept) :]
    return ConversionResult(
        index_url=request.storage.child_url(INDEX),
        samples=index.num_samples,
        shards=len(index.shards),
        added_samples=None if added is None else sum(s.samples for s in added),
        added_shards=None if added is None else len(added),
        raw_bytes=sum(shard.raw_data.bytes for shard in index.shards),
        zip_bytes=sum(shard.file.bytes for shard in index.shards),
        columns=mds_columns(request.plans),
        read_path=written.read_path,
        read_path_reason=written.reason,
    )


def convert_splits(
    df: DataFrame,
    spec: ConversionSpec,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> ConversionResult:
    """Convert each part of ``spec.splits`` into its own dataset under ``<target>/<part>/``.

    Every part is checked, then written, and only then published, so a failure before the
    publications publishes nothing. The publications are one write per part; if one of them
    fails, the parts already published are put back as they were (their replaced generations
    are retired only once every part is published).
    """
    root = open_storage(spec.target)
    parts = split_frames(df, spec.splits)
    requests: dict[str, _Request] = {}
    written: dict[str, _Written] = {}
    policy = _NullPolicy(spec.null_policy, dict(spec.fill_values))
    try:
        for name, frame in parts.items():
            requests[name] = _prepare(
                frame, root.child_url(name), spec.columns, spec.compression, spec.hashes,
                spec.size_limit, spec.mode, spec.run_id,
            )  # fmt: skip
        for name, frame in parts.items():
            _check_cancel(cancel)
            written[name] = _run_jobs(
                frame, requests[name], policy, spec.partitions, progress, cancel, "auto"
            )
        empty = [name for name in parts if not sum(int(r["rows"]) for r in written[name].rows)]
        if empty:
            raise PermanentConversionError(
                f"split part(s) {', '.join(map(repr, empty))} received no rows; nothing was "
                "published (a smaller table needs larger shares)",
                code="empty_source",
            )
    except BaseException as exc:
        for request in requests.values():
            request.publisher.discard()
        if isinstance(exc, ConversionError | KeyboardInterrupt | SystemExit):
            raise
        raise to_conversion_error(exc) from exc
    results: dict[str, ConversionResult] = {}
    try:
        for name in parts:
            results[name] = _publish(requests[name], written[name], retire=False)
    except BaseException:
        for name in results:
            requests[name].publisher.rollback()
        for request in requests.values():
            request.publisher.discard()
        raise
    for request in requests.values():
        request.publisher.retire_previous()
    return _combined(root.url, results)


def _combined(root: str, results: Mapping[str, ConversionResult]) -> ConversionResult:
    first = next(iter(results.values()))
    appended = all(r.added_samples is not None for r in results.values())
    return ConversionResult(
        index_url=root,
        samples=sum(r.samples for r in results.values()),
        shards=sum(r.shards for r in results.values()),
        raw_bytes=sum(r.raw_bytes for r in results.values()),
        zip_bytes=sum(r.zip_bytes for r in results.values()),
        columns=first.columns,
        read_path=first.read_path,
        read_path_reason=first.read_path_reason,
        added_samples=sum(r.added_samples or 0 for r in results.values()) if appended else None,
        added_shards=sum(r.added_shards or 0 for r in results.values()) if appended else None,
        splits={
            name: {
                "index_url": r.index_url, "samples": r.samples, "shards": r.shards,
                "raw_bytes": r.raw_bytes, "zip_bytes": r.zip_bytes,
                "added_samples": r.added_samples, "added_shards": r.added_shards,
            }
            for name, r in results.items()
        },
    )  # fmt: skip


def check_appendable(previous: Index, columns: Mapping[str, str], where: str) -> None:
    """Refuse an append whose columns or encodings differ from the dataset's, naming each
    difference (before anything is written)."""
    first = previous.shards[0]
    existing = dict(zip(first.column_names, first.column_encodings))
    problems = [
        f"column {name!r} is not in the dataset" for name in columns if name not in existing
    ]
    problems += [f"column {name!r} of the dataset is missing" for name in existing
                 if name not in columns]  # fmt: skip
    problems += [
        f"column {name!r} would be {columns[name]!r}, the dataset has {existing[name]!r}"
        for name in columns
        if name in existing and columns[name] != existing[name]
    ]
    if problems:
        raise PermanentConversionError(
            f"cannot append to {where}: " + "; ".join(problems), code="append_mismatch"
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
