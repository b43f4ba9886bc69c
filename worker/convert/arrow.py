"""Executor side: turn a Spark Arrow batch into the columns that ``MDSWriter.write_batch`` takes.

All conversions are vectorised (pyarrow compute casts and numpy on the value buffers); no Python
loop runs per row. Booleans become uint8, dates int32 days, timestamps int64 microseconds
(Spark hands them over in UTC for TimestampType), decimals their text. JSON columns arrive
already rendered by Spark's ``to_json``. Text for ``json`` and ``str_decimal`` is handed over as
binary, which the writer stores verbatim (the pass-through rule, mds-format.md 1.4).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from worker.convert.schema import ColumnPlan
from worker.errors import ColumnOverrideError, UnsupportedTypeError

_ARROW_TYPES: dict[str, pa.DataType] = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
    "float16": pa.float16(), "float32": pa.float32(), "float64": pa.float64(),
    "string": pa.string(), "binary": pa.binary(),
}
_SHAPE_DTYPES = (np.dtype("<u1"), np.dtype("<u2"), np.dtype("<u4"), np.dtype("<u8"))


def convert_batch(batch: pa.RecordBatch, plans: list[ColumnPlan]) -> pa.RecordBatch:
    """Convert every planned column of ``batch``; the result has the plans' names and order."""
    arrays = [convert_column(batch.column(plan.name), plan) for plan in plans]
    return pa.RecordBatch.from_arrays(arrays, names=[plan.name for plan in plans])


def convert_column(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    """Convert one column according to its plan (see :class:`ColumnPlan`)."""
    if plan.kind == "ndarray":
        return _ndarray_1d(array, plan)
    if plan.kind == "ndarray2d":
        return _ndarray_2d(array, plan)
    return _scalar(array, plan)


def _scalar(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    target = _ARROW_TYPES[plan.arrow_type]
    if pa.types.is_timestamp(array.type):
        # The int64 behind a timestamp is microseconds since the epoch (UTC when zoned).
        array = array.cast(pa.timestamp("us", array.type.tz)).view(pa.int64())
    if pa.types.is_date32(array.type) and pa.types.is_integer(target):
        array = array.view(pa.int32())
    if target == pa.binary() and not _is_text(array.type):
        array = pc.cast(array, pa.string())  # decimals: their text, stored as bytes
    return array if array.type == target else pc.cast(array, target)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(
        kind
    ) or pa.types.is_large_binary(kind)


def _ndarray_1d(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    values, offsets = _flatten(array)
    lengths = np.diff(offsets)
    values = pc.cast(values, _ARROW_TYPES[plan.arrow_type])
    if plan.shape is not None:
        size = math.prod(plan.shape)
        _check_lengths(lengths == size, plan, f"{size} elements")
        return pa.FixedSizeListArray.from_arrays(values, size)
    _check_lengths(lengths > 0, plan, "at least one element")
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def _ndarray_2d(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    """Encode a list of equal-length lists per row as ``ndarray`` bytes (pass-through binary).

    The row's shape is dynamic, so each value carries the shape header of mds-format.md 1.6:
    one byte ``(ndim << 2) | code`` and the dims in the smallest unsigned type that holds them.
    """
    inner, outer_offsets = _flatten(array)
    values, inner_offsets = _flatten(inner)
    rows, cols = _row_shapes(outer_offsets, np.diff(inner_offsets), plan)
    if plan.shape is not None:  # static dtype and shape: the values alone, like a 1-D array
        cast = pc.cast(values, _ARROW_TYPES[plan.arrow_type])
        return pa.FixedSizeListArray.from_arrays(cast, math.prod(plan.shape))
    dtype = np.dtype(plan.arrow_type).newbyteorder("<")
    flat = np.asarray(pc.cast(values, _ARROW_TYPES[plan.arrow_type]).to_numpy(), dtype=dtype)
    return _encode_shaped(np.stack([rows, cols], axis=1), flat.view(np.uint8), dtype.itemsize)


def _row_shapes(
    outer_offsets: np.ndarray, inner_lengths: np.ndarray, plan: ColumnPlan
) -> tuple[np.ndarray, np.ndarray]:
    rows = np.diff(outer_offsets)
    _check_lengths(rows > 0, plan, "at least one inner array")
    cols = inner_lengths[outer_offsets[:-1]] if len(rows) else np.zeros(0, np.int64)
    ragged = np.repeat(cols, rows) != inner_lengths
    if ragged.any():
        row = int(np.searchsorted(outer_offsets, np.flatnonzero(ragged)[0], side="right") - 1)
        raise UnsupportedTypeError(
            f"column {plan.name!r} ({plan.spark_type}): row {row} has inner arrays of different "
            "lengths; a 2-D ndarray needs equal lengths per row (use the json encoding instead)"
        )
    _check_lengths(cols > 0, plan, "non-empty inner arrays")
    if plan.shape is not None:
        fits = (rows == plan.shape[0]) & (cols == plan.shape[1])
        _check_lengths(fits, plan, f"shape {plan.shape}")
    return rows.astype(np.int64), cols.astype(np.int64)


def _encode_shaped(shapes: np.ndarray, value_bytes: np.ndarray, itemsize: int) -> pa.Array:
    """One binary value per row: the dynamic-shape header (unless the shape is static) + values."""
    n, ndim = shapes.shape
    codes = np.searchsorted([1 << 8, 1 << 16, 1 << 32], shapes.max(axis=1), side="right")
    widths = np.array([dt.itemsize for dt in _SHAPE_DTYPES])[codes]
    header_len = 1 + ndim * widths
    value_len = shapes.prod(axis=1) * itemsize
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(header_len + value_len, out=offsets[1:])
    out = np.empty(int(offsets[-1]), np.uint8)
    is_value = np.ones(len(out), bool)
    for code in np.unique(codes):
        rows = np.flatnonzero(codes == code)
        header = _headers(shapes[rows], int(code))
        positions = offsets[rows, None] + np.arange(header.shape[1])
        out[positions] = header
        is_value[positions] = False
    out[is_value] = value_bytes  # values follow each header, so their order is the row order
    return pa.Array.from_buffers(
        pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(out)]
    ).cast(pa.binary())


def _headers(shapes: np.ndarray, code: int) -> np.ndarray:
    ndim = shapes.shape[1]
    first = np.full((len(shapes), 1), (ndim << 2) | code, np.uint8)
    dims = shapes.astype(_SHAPE_DTYPES[code]).view(np.uint8).reshape(len(shapes), -1)
    return np.concatenate([first, dims], axis=1)


def _flatten(array: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(values, offsets from 0) of a list array, honouring slices."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        offsets = np.arange(len(array) + 1, dtype=np.int64) * size
        return array.flatten(), offsets
    offsets = np.asarray(array.offsets.to_numpy(), dtype=np.int64)
    values = array.values.slice(offsets[0], offsets[-1] - offsets[0])
    return values, offsets - offsets[0]


def _check_lengths(ok: np.ndarray, plan: ColumnPlan, expected: str) -> None:
    if ok.all():
        return
    bad = int(np.flatnonzero(~ok)[0])
    error = ColumnOverrideError if plan.shape is not None else UnsupportedTypeError
    raise error(
        f"column {plan.name!r} ({plan.spark_type} as {plan.encoding!r}): row {bad} does not "
        f"have {expected}"
    )

