"""Encode a whole batch of columns into sample records at once, with vectorised numpy.

The output is byte-for-byte what :class:`~mdsloader.mds.record.RecordEncoder` produces sample by
sample. Each column becomes one or more *pieces* (a fixed-width ``(n, w)`` byte matrix, or ragged
bytes with offsets); the pieces are then interleaved row by row into one contiguous buffer:

- fixed-width scalars: one ``astype('<i8').view(uint8).reshape(n, w)``;
- ``str``/``bytes`` (and any pass-through binary): Arrow's offsets and data buffers, zero-copy;
- ``ndarray``: Arrow list / fixed-size-list arrays or N-D numpy arrays;
- everything else (json, pkl, images, str_decimal, ...): per-value encoding.

Interleaving ragged pieces uses Arrow's ``binary_join_element_wise`` (memcpy speed) when pyarrow
is installed; pyarrow is optional for the loader, so a pure-Python join is the fallback.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mdsloader.errors import EncodingError
from mdsloader.mds.encodings import (
    NDARRAY_DTYPES,
    Encoding,
    NDArrayEncoding,
    ScalarEncoding,
    shape_header,
)
from mdsloader.mds.record import ColumnPlan

__all__ = ["EncodedBatch", "encode_batch"]


@dataclass(frozen=True, slots=True)
class EncodedBatch:
    """Sample records of a batch, concatenated.

    Attributes:
        data: Every record's bytes, back to back (uint8).
        sizes: The length of each record (int64).
    """

    data: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)


@dataclass(frozen=True, slots=True)
class _Piece:
    """Bytes of one part of every row: fixed width (``offsets`` None) or ragged."""

    data: np.ndarray  # uint8; (n, width) when fixed, flat when ragged
    offsets: np.ndarray | None = None  # int64, n + 1 entries, into ``data``

    def lengths(self, n: int) -> np.ndarray:
        if self.offsets is None:
            return np.full(n, self.data.shape[1], np.int64)
        return np.diff(self.offsets)


def _pyarrow() -> Any | None:
    try:
        return importlib.import_module("pyarrow")
    except ImportError:
        return None


def encode_batch(
    plan: ColumnPlan | Mapping[str, str], columns: Mapping[str, Any] | Any
) -> EncodedBatch:
    """Encode a batch of rows given column-wise.

    Args:
        plan: The dataset's columns (a :class:`ColumnPlan`, or name -> encoding string).
        columns: A mapping of column name to values (numpy array, pyarrow array, or list), or a
            ``pyarrow.RecordBatch``/``Table``. Extra columns are ignored.

    Raises:
        EncodingError: A missing column, columns of different lengths, or a value that its
            encoding cannot store (naming the column).
    """
    if not isinstance(plan, ColumnPlan):
        plan = ColumnPlan.from_columns(plan)
    values = _as_mapping(plan, columns)
    lengths = {len(v) for v in values.values()}
    if len(lengths) > 1:
        raise EncodingError(f"batch columns have different lengths: {sorted(lengths)}")
    n = lengths.pop()
    head: list[np.ndarray] = []
    pieces: list[_Piece] = []
    for name, coder in zip(plan.names, plan.coders()):
        try:
            column_pieces = _encode_column(coder, values[name], n)
        except EncodingError as exc:
            raise EncodingError(f"column {name!r}: {exc}") from exc
        if coder.size is None:
            head.append(sum(p.lengths(n) for p in column_pieces))
        pieces.extend(column_pieces)
    if head:
        lengths_matrix = np.stack(head, axis=1)
        if lengths_matrix.max(initial=0) >= 1 << 32:
            raise EncodingError("a column value is 4 GiB or larger")
        pieces.insert(0, _Piece(lengths_matrix.astype("<u4").view(np.uint8)))
    return _interleave(pieces, n)


def _as_mapping(plan: ColumnPlan, columns: Any) -> dict[str, Any]:
    if hasattr(columns, "schema") and hasattr(columns, "column"):  # RecordBatch or Table
        names = set(columns.schema.names)
        missing = [name for name in plan.names if name not in names]
        if missing:
            raise EncodingError(f"batch has no column(s) {missing}")
        return {name: _combine(columns.column(name)) for name in plan.names}
    if not isinstance(columns, Mapping):
        raise EncodingError("a batch must be a mapping of column -> values or a RecordBatch")
    missing = [name for name in plan.names if name not in columns]
    if missing:
        raise EncodingError(f"batch has no column(s) {missing}")
    return {name: _combine(columns[name]) for name in plan.names}


def _combine(values: Any) -> Any:
    # A Table column is a ChunkedArray; the kernels below want one contiguous array.
    return values.combine_chunks() if hasattr(values, "combine_chunks") else values


def _encode_column(coder: Encoding, values: Any, n: int) -> list[_Piece]:
    pieces = None
    if isinstance(coder, ScalarEncoding) or coder.name == "int":
        pieces = _scalars(coder, values, n)
    elif isinstance(coder, NDArrayEncoding):
        pieces = _ndarrays(coder, values, n)
    elif coder.size is None and coder.name in ("str", "bytes"):
        pieces = _strings(values)
    if pieces is None and _is_arrow_binary(values) and values.null_count == 0:
        pieces = [_arrow_binary(values)]  # pre-encoded bytes pass through whatever the encoding
        if coder.size is not None:
            pieces = _fixed_from_ragged(pieces[0], coder, n)
    if pieces is None:
        pieces = [_per_value(coder, values)]
    return pieces


# --- fixed-width scalars --------------------------------------------------------------------


def _numeric_array(values: Any) -> np.ndarray | None:
    """Return a 1-D numeric numpy view of ``values`` if it has no nulls, else None."""
    if _is_arrow(values):
        if values.null_count or not (
            values.type.id in _arrow_numeric_ids() or str(values.type) == "bool"
        ):
            return None
        return values.to_numpy(zero_copy_only=False)
    if isinstance(values, np.ndarray):
        array = values
    elif isinstance(values, (list, tuple)):
        array = _homogeneous_list(values)
        if array is None:
            return None
    else:
        return None
    return array if array.ndim == 1 and array.dtype.kind in "biuf" else None


def _homogeneous_list(values: list[Any] | tuple[Any, ...]) -> np.ndarray | None:
    """Vectorise a list only when numpy keeps every value exact.

    That is one Python type, and no floats standing in for big ints; anything else is left to
    per-value encoding.
    """
    kinds = {type(v) for v in values}
    if not values or len(kinds) != 1 or kinds.pop() not in (int, float, bool):
        return None
    array = np.asarray(values)
    expected = {int: "iu", float: "f", bool: "b"}[type(values[0])]
    return array if array.dtype.kind in expected else None


def _scalars(coder: Encoding, values: Any, n: int) -> list[_Piece] | None:
    array = _numeric_array(values)
    if array is None:
        return None
    target = np.dtype("<i8") if coder.name == "int" else coder.dtype  # type: ignore[attr-defined]
    if coder.name == "int" and array.dtype.kind == "f":
        return None  # the int encoding refuses floats; per-value raises the precise error
    if target.kind in "iu" and not _fits(array, target):
        return None  # per-value encoding raises (or numpy decides) exactly as write() would
    with np.errstate(over="ignore"):
        cast = array.astype(target)
    return [_Piece(cast.view(np.uint8).reshape(n, target.itemsize))]


def _fits(array: np.ndarray, target: np.dtype) -> bool:
    if array.size == 0:
        return True
    info = np.iinfo(target)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            return False
        array = np.trunc(array)
    return bool(array.min() >= info.min and array.max() <= info.max)


# --- str / bytes ----------------------------------------------------------------------------


def _strings(values: Any) -> list[_Piece] | None:
    if _is_arrow(values):
        if values.null_count or not (_is_arrow_binary(values) or _is_arrow_string(values)):
            return None
        return [_arrow_binary(values)]
    if isinstance(values, np.ndarray) and values.dtype.kind not in "OUS":
        return None
    items = list(values)
    if all(isinstance(v, bytes) for v in items):
        return [_ragged(items)]  # pass-through, as in per-value encoding
    if not all(isinstance(v, str) for v in items):
        return None
    return [_ragged([v.encode("utf-8") for v in items])]


def _ragged(items: list[bytes]) -> _Piece:
    offsets = np.zeros(len(items) + 1, np.int64)
    np.cumsum([len(v) for v in items], out=offsets[1:])
    return _Piece(np.frombuffer(b"".join(items), np.uint8), offsets)


def _arrow_binary(values: Any) -> _Piece:
    pa = _pyarrow()
    assert pa is not None  # only reached with an Arrow array in hand
    large = values.cast(pa.large_binary())
    _, offsets_buf, data_buf = large.buffers()
    offsets = np.frombuffer(offsets_buf, np.int64)[large.offset : large.offset + len(large) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return _Piece(data, offsets)


def _fixed_from_ragged(piece: _Piece, coder: Encoding, n: int) -> list[_Piece]:
    lengths = piece.lengths(n)
    if n and not (lengths == coder.size).all():
        raise EncodingError(f"encoding {coder.name!r} must produce {coder.size} bytes per value")
    assert piece.offsets is not None
    start = int(piece.offsets[0]) if n else 0
    matrix = piece.data[start : start + n * int(coder.size or 0)]
    return [_Piece(matrix.reshape(n, int(coder.size or 0)))]


# --- ndarray --------------------------------------------------------------------------------


def _ndarrays(coder: NDArrayEncoding, values: Any, n: int) -> list[_Piece] | None:
    if _is_arrow(values):
        return _arrow_lists(coder, values, n)
    if isinstance(values, np.ndarray) and values.ndim >= 2 and values.dtype.kind in "uif":
        return _dense_rows(coder, values)
    return None


def _dense_rows(coder: NDArrayEncoding, values: np.ndarray) -> list[_Piece]:
    """Rows of one shared shape (an N-D numpy array or a fixed-size list array)."""
    n, shape = len(values), tuple(values.shape[1:])
    dtype = _check_dtype(coder, values.dtype)
    if coder.shape is not None and shape != coder.shape:
        raise EncodingError(f"wrong shape: expected {coder.shape}, got {shape}")
    if int(np.prod(shape)) == 0:
        raise EncodingError("arrays with 0 elements are not supported")
    body = np.ascontiguousarray(values, dtype=dtype).reshape(n, -1).view(np.uint8)
    prefix = _prefix(coder, dtype) + (shape_header(shape) if coder.shape is None else b"")
    if not prefix:
        return [_Piece(body)]
    return [_Piece(np.tile(np.frombuffer(prefix, np.uint8), (n, 1))), _Piece(body)]


def _arrow_lists(coder: NDArrayEncoding, values: Any, n: int) -> list[_Piece] | None:
    pa = _pyarrow()
    kind = values.type
    if pa is None or values.null_count or not (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ):
        return None
    flat = values.flatten()
    if flat.null_count or flat.type.id not in _arrow_numeric_ids():
        return None
    items = flat.to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(kind):
        return _dense_rows(coder, items.reshape(n, kind.list_size))
    counts = values.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
    if n and counts.min() == counts.max():
        return _dense_rows(coder, items.reshape(n, int(counts[0]) if n else 0))
    dtype = _check_dtype(coder, items.dtype)
    if n and counts.min() == 0:
        raise EncodingError("arrays with 0 elements are not supported")
    if coder.shape is not None:
        raise EncodingError(f"wrong shape: expected {coder.shape}, got rows of varying length")
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(counts * dtype.itemsize, out=offsets[1:])
    body = _Piece(np.ascontiguousarray(items, dtype=dtype).view(np.uint8), offsets)
    return [_ragged_shape_prefix(_prefix(coder, dtype), counts), body]


def _ragged_shape_prefix(dtype_byte: bytes, counts: np.ndarray) -> _Piece:
    """Per-row ``[dtype byte] [(1 << 2) | code] [count as the code's uint]`` for 1-D rows."""
    code = np.select([counts < 1 << 8, counts < 1 << 16, counts < 1 << 32], [0, 1, 2], 3)
    width = len(dtype_byte) + 1 + (1 << code)
    matrix = np.zeros((len(counts), len(dtype_byte) + 9), np.uint8)
    if dtype_byte:
        matrix[:, 0] = dtype_byte[0]
    at = len(dtype_byte)
    matrix[:, at] = (1 << 2) | code
    matrix[:, at + 1 :] = counts.astype("<u8").view(np.uint8).reshape(-1, 8)
    keep = np.arange(matrix.shape[1]) < width[:, None]  # row-major order keeps rows in order
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(width, out=offsets[1:])
    return _Piece(matrix[keep], offsets)


def _check_dtype(coder: NDArrayEncoding, dtype: np.dtype) -> np.dtype:
    if dtype.name not in NDARRAY_DTYPES:
        raise EncodingError(f"unsupported dtype {dtype}")
    if coder.dtype is not None and dtype.name != coder.dtype.name:
        raise EncodingError(f"wrong dtype: expected {coder.dtype.name}, got {dtype.name}")
    return dtype.newbyteorder("<")


def _prefix(coder: NDArrayEncoding, dtype: np.dtype) -> bytes:
    return b"" if coder.dtype is not None else bytes([NDARRAY_DTYPES[dtype.name]])


# --- per-value fallback and assembly ----------------------------------------------------------


def _per_value(coder: Encoding, values: Any) -> _Piece:
    items = values.to_pylist() if _is_arrow(values) else list(values)
    encoded = [coder.encode(v) for v in items]
    if coder.size is not None and any(len(e) != coder.size for e in encoded):
        raise EncodingError(f"encoding {coder.name!r} must produce {coder.size} bytes per value")
    return _ragged(encoded)


def _interleave(pieces: list[_Piece], n: int) -> EncodedBatch:
    if n == 0:
        return EncodedBatch(np.zeros(0, np.uint8), np.zeros(0, np.int64))
    sizes = sum(p.lengths(n) for p in pieces)
    if all(p.offsets is None for p in pieces):
        return EncodedBatch(np.hstack([p.data for p in pieces]).reshape(-1), sizes)
    pa = _pyarrow()
    data = _join_arrow(pa, pieces, n) if pa is not None else _join_python(pieces, n)
    return EncodedBatch(data, sizes)


def _join_arrow(pa: Any, pieces: list[_Piece], n: int) -> np.ndarray:
    arrays = []
    for piece in pieces:
        offsets = piece.offsets
        if offsets is None:
            offsets = np.arange(n + 1, dtype=np.int64) * piece.data.shape[1]
        data = np.ascontiguousarray(piece.data).reshape(-1)
        arrays.append(
            pa.Array.from_buffers(
                pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
            )
        )
    # Gathering piece k of row i to position i * len(pieces) + k lays the records end to end in
    # one data buffer: a plain copy per value, several times faster than a per-row join.
    order = np.arange(n, dtype=np.int64)[:, None] + np.arange(len(arrays), dtype=np.int64) * n
    joined = pa.concat_arrays(arrays).take(pa.array(order.reshape(-1)))
    _, offsets_buf, data_buf = joined.buffers()
    end = int(np.frombuffer(offsets_buf, np.int64)[len(joined)])
    if data_buf is None or end == 0:
        return np.zeros(0, np.uint8)
    return np.frombuffer(data_buf, np.uint8, end)


def _join_python(pieces: list[_Piece], n: int) -> np.ndarray:
    rows = []
    for piece in pieces:
        if piece.offsets is None:
            rows.append([row.tobytes() for row in piece.data])
        else:
            blob, ends = piece.data.tobytes(), piece.offsets.tolist()
            rows.append([blob[a:b] for a, b in itertools.pairwise(ends)])
    return np.frombuffer(b"".join(b"".join(parts) for parts in zip(*rows)), np.uint8)


def _is_arrow(values: Any) -> bool:
    return type(values).__module__.startswith("pyarrow")


def _is_arrow_binary(values: Any) -> bool:
    return _is_arrow(values) and str(values.type) in ("binary", "large_binary")


def _is_arrow_string(values: Any) -> bool:
    return _is_arrow(values) and str(values.type) in ("string", "large_string")


def _arrow_numeric_ids() -> frozenset[int]:
    pa = _pyarrow()
    assert pa is not None
    kinds = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32()]
    kinds += [pa.uint64(), pa.float16(), pa.float32(), pa.float64()]
    return frozenset(t.id for t in kinds)
