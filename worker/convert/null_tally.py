"""Executor side: count missing values in Arrow batches while they are encoded (one pass).

MDS has no null, so a column value is "missing" when it is null or, for an ``ndarray``, empty;
a numeric array holding a null element is counted separately ("null elements"). These are the
same rules as the Spark predicates of ``worker.convert.nulls``, applied to the Arrow batch a task
is about to encode, so the source is read once. Pure pyarrow/numpy: no Spark needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from worker.convert.schema import ColumnPlan


@dataclass(slots=True)
class NullTally:
    """Per column, how many rows are missing and how many hold null elements (mutable sums)."""

    missing: dict[str, int] = field(default_factory=dict)
    null_elements: dict[str, int] = field(default_factory=dict)

    @property
    def has_nulls(self) -> bool:
        return any(self.missing.values()) or any(self.null_elements.values())

    def add_batch(self, batch: pa.RecordBatch, plans: Iterable[ColumnPlan]) -> bool:
        """Count ``batch``; True when it holds anything missing."""
        found = False
        for plan in plans:
            missing, holes = count_column(batch.column(plan.name), plan)
            if missing:
                self.missing[plan.name] = self.missing.get(plan.name, 0) + missing
                found = True
            if holes:
                self.null_elements[plan.name] = self.null_elements.get(plan.name, 0) + holes
                found = True
        return found

    def merge(self, other: Mapping[str, Mapping[str, int]]) -> None:
        """Add counts in the form of :meth:`to_dict`."""
        for name, n in other.get("missing", {}).items():
            self.missing[name] = self.missing.get(name, 0) + int(n)
        for name, n in other.get("null_elements", {}).items():
            self.null_elements[name] = self.null_elements.get(name, 0) + int(n)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {"missing": dict(self.missing), "null_elements": dict(self.null_elements)}


def count_column(array: pa.Array | pa.ChunkedArray, plan: ColumnPlan) -> tuple[int, int]:
    """(missing rows, rows with null elements) of one column under ``plan``."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if plan.kind == "ndarray" and plan.source != "vector":
        return _missing_list(array), _rows_with_null_values(array)
    if plan.kind == "ndarray2d":
        return _missing_list(array), _rows_with_bad_inner(array)
    return array.null_count, 0


def _missing_list(array: pa.Array) -> int:
    """Null or empty lists."""
    if array.null_count == len(array):
        return len(array)
    lengths = pc.list_value_length(array)
    return array.null_count + int(pc.sum(pc.equal(lengths, 0)).as_py() or 0)


def _rows_with_null_values(array: pa.Array) -> int:
    """Non-null list rows that hold at least one null element."""
    values, offsets, valid = _children(array)
    if values.null_count == 0:
        return 0
    flags = np.asarray(values.is_null().to_numpy(zero_copy_only=False))
    return _rows_flagged(flags, offsets, valid)


def _rows_with_bad_inner(array: pa.Array) -> int:
    """Rows of a list of lists holding a null or empty inner list, or a null element."""
    inner, offsets, valid = _children(array)
    inner_valid = ~np.asarray(inner.is_null().to_numpy(zero_copy_only=False))
    lengths = np.asarray(pc.list_value_length(inner).fill_null(0).to_numpy(), np.int64)
    bad_inner = ~inner_valid | (lengths == 0)
    values, inner_offsets, _ = _children(inner)
    if values.null_count:
        bad_inner |= _flagged_per_row(
            np.asarray(values.is_null().to_numpy(zero_copy_only=False)), inner_offsets
        )
    return _rows_flagged(bad_inner, offsets, valid)


def _children(array: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(values, offsets from 0, row validity) of a list array, honouring slices."""
    valid = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    if pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        offsets = np.arange(len(array) + 1, dtype=np.int64) * size
        values = array.values.slice(array.offset * size, len(array) * size)
        return values, offsets, valid
    offsets = np.asarray(array.offsets.to_numpy(), dtype=np.int64)
    values = array.values.slice(offsets[0], offsets[-1] - offsets[0])
    return values, offsets - offsets[0], valid


def _flagged_per_row(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per row, whether any of its elements ``offsets[i]:offsets[i+1]`` is flagged."""
    totals = np.concatenate([[0], np.cumsum(flags, dtype=np.int64)])
    return totals[offsets[1:]] > totals[offsets[:-1]]


def _rows_flagged(flags: np.ndarray, offsets: np.ndarray, valid: np.ndarray) -> int:
    return int(np.count_nonzero(_flagged_per_row(flags, offsets) & valid))
