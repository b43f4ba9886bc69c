"""Executor side of the direct read path: read one Spark partition's file splits with pyarrow.

Rows come out in Spark's order: the splits of the partition in plan order, and in each split the
Parquet row groups Spark would read (those whose midpoint lies in the split's byte range, the
rule of parquet-mr's range filter), or the whole ORC file. Partition columns are added as
constants. A file whose columns do not have exactly the types Spark reads (a schema-evolved
table, INT96 written in the legacy calendar, ...) raises :class:`UnreadableSplit`; the driver then
converts the table through ``mapInArrow`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from worker.convert.direct_plan import DirectPlan, FileSplit

BATCH_ROWS = 16384  # ~16 MB of typical rows: big enough for vectorised work, cheap to allocate
_LEGACY_KEYS = (b"org.apache.spark.legacyDateTime", b"org.apache.spark.legacyINT96")
_ARROW_OF: dict[str, pa.DataType] = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(),
    "string": pa.string(), "date32": pa.date32(),
}


class UnreadableSplit(Exception):
    """pyarrow cannot read this file the way Spark does; the message says why."""


def read_partition(plan: DirectPlan, splits: Sequence[FileSplit]) -> Iterator[pa.RecordBatch]:
    """The record batches of one Spark partition, data columns then partition columns."""
    readers = [_open(plan, split) for split in splits]  # check every file before any row
    for split, reader in zip(splits, readers, strict=True):
        for batch in reader():
            yield _with_partition_values(batch, plan, split)


def canonical_arrow_type(kind: pa.DataType, int96: bool = False) -> str:
    """The name of ``kind`` in the vocabulary of ``direct_plan.canonical_spark_type``."""
    if pa.types.is_timestamp(kind):
        if kind.unit not in ("ms", "us") and not int96:
            return f"timestamp[{kind.unit}]"  # Spark keeps microseconds; ns would be cut
        return "timestamp_tz" if kind.tz is not None or int96 else "timestamp_ntz"
    if pa.types.is_large_string(kind) or pa.types.is_string(kind):
        return "string"
    if pa.types.is_large_binary(kind) or pa.types.is_binary(kind):
        return "binary"
    if pa.types.is_decimal(kind):
        return f"decimal({kind.precision},{kind.scale})"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return f"list<{canonical_arrow_type(kind.value_type)}>"
    for name, arrow in _ARROW_OF.items():
        if kind == arrow:
            return name
    return str(kind)


def _open(plan: DirectPlan, split: FileSplit) -> Any:
    if plan.file_format == "parquet":
        return _open_parquet(plan, split)
    return _open_orc(plan, split)


def _open_parquet(plan: DirectPlan, split: FileSplit) -> Any:
    import pyarrow.parquet as pq

    names = [name for name, _ in plan.data_columns]
    meta = pq.read_metadata(split.path)
    if any(key in (meta.metadata or {}) for key in _LEGACY_KEYS):
        raise UnreadableSplit(f"{split.path} was written in Spark's legacy calendar mode")
    int96 = {
        meta.schema.column(i).path for i in range(meta.num_columns)
        if meta.schema.column(i).physical_type == "INT96"
    }
    options = {"metadata": meta, "coerce_int96_timestamp_unit": "us"}
    with pq.ParquetFile(split.path, **options) as file:
        _check_types(plan, split, file.schema_arrow, int96)
    groups = _row_groups(meta, split)

    def batches() -> Iterator[pa.RecordBatch]:
        # Opened only now: a partition of thousands of small files never holds them all open.
        if names and groups:
            with pq.ParquetFile(split.path, **options) as file:
                yield from file.iter_batches(
                    batch_size=BATCH_ROWS, row_groups=groups, columns=names, use_threads=False
                )
            return
        for group in groups:  # only partition columns are selected
            yield _empty_rows(meta.row_group(group).num_rows)

    return batches


def _open_orc(plan: DirectPlan, split: FileSplit) -> Any:
    from pyarrow import orc

    names = [name for name, _ in plan.data_columns]
    _check_types(plan, split, orc.ORCFile(split.path).schema, set())

    def batches() -> Iterator[pa.RecordBatch]:
        file = orc.ORCFile(split.path)  # opened only now, as for Parquet
        for stripe in range(file.nstripes):
            if names:
                yield file.read_stripe(stripe, columns=names)
            else:
                yield _empty_rows(file.read_stripe(stripe).num_rows)

    return batches


def _check_types(plan: DirectPlan, split: FileSplit, schema: pa.Schema, int96: set[str]) -> None:
    for name, wanted in plan.data_columns:
        index = schema.get_field_index(name)
        if index < 0:
            raise UnreadableSplit(f"{split.path} has no column {name!r}")
        found = canonical_arrow_type(schema.field(index).type, name in int96)
        if found != wanted:
            raise UnreadableSplit(
                f"column {name!r} is {found} in {split.path}, but the table reads {wanted}"
            )


def _row_groups(meta: Any, split: FileSplit) -> list[int]:
    """The row groups Spark reads for ``split``: parquet-mr keeps a row group when its midpoint
    (first column chunk's offset + half the compressed size) lies in [start, start + length)."""
    if split.start == 0 and split.length >= split.file_size:
        return list(range(meta.num_row_groups))
    end = split.start + split.length
    chosen = []
    for index in range(meta.num_row_groups):
        group = meta.row_group(index)
        first = group.column(0)
        offset = first.data_page_offset
        if first.has_dictionary_page and 0 < first.dictionary_page_offset < offset:
            offset = first.dictionary_page_offset
        size = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        if split.start <= offset + size // 2 < end:
            chosen.append(index)
    return chosen


def _empty_rows(n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.nulls(n, pa.null())], names=["__rows"])


def _with_partition_values(
    batch: pa.RecordBatch, plan: DirectPlan, split: FileSplit
) -> pa.RecordBatch:
    if not plan.partition_columns:
        return batch
    arrays = [batch.column(name) for name, _ in plan.data_columns]
    names = [name for name, _ in plan.data_columns]
    for (name, kind), value in zip(plan.partition_columns, split.partition_values, strict=True):
        arrays.append(_constant(value, _ARROW_OF[kind], batch.num_rows))
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _constant(value: object, kind: pa.DataType, n: int) -> pa.Array:
    if value is None:
        return pa.nulls(n, kind)
    return pa.repeat(pa.scalar(value, kind), n)


class DirectPartitionWriter:
    """The ``mapPartitions`` function of the direct path: each task gets ``(partition, splits)``
    and writes that Spark partition's rows exactly as ``PartitionWriter`` would."""

    def __init__(self, options: Any, plan: DirectPlan, counters: tuple[Any, ...] = ()) -> None:
        self.options, self.plan, self.counters = options, plan, counters

    def __call__(
        self, items: Iterator[tuple[int, Sequence[FileSplit]]]
    ) -> Iterator[dict[str, object]]:
        from pyspark import TaskContext

        from worker.convert.partitions import (
            count_into,
            executor_failure,
            result_row,
            write_partition,
        )

        context = TaskContext.get()
        attempt = context.attemptNumber() if context else 0
        for partition, splits in items:
            try:
                stats = write_partition(
                    self.options, partition, read_partition(self.plan, splits), attempt=attempt
                )
            except UnreadableSplit as exc:
                yield {"partition": partition, "attempt": attempt, "unreadable": str(exc)}
                continue
            except Exception as exc:
                raise executor_failure(exc) from exc
            count_into(self.counters, stats)
            yield result_row(partition, attempt, stats)
