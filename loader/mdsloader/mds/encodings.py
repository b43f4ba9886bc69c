"""Column encodings of MDS v2: one value <-> the bytes stored for it in a sample.

Every encoding of the reference's registry is here, under the same names, producing the same bytes.
Use :func:`get_encoding` to obtain one; encodings are immutable and cached per name.

The pass-through rule (mds-format.md 1.4): a ``bytes`` value is stored verbatim whatever the
column's encoding, so pre-encoded payloads (JPEG files, pickles, ...) can be written directly.
"""

from __future__ import annotations

import functools
import json
import pickle
import struct
from decimal import Decimal
from typing import Any

import numpy as np

from mdsloader.errors import EncodingError, UnknownEncodingError
from mdsloader.mds import images
from mdsloader.mds.encoding_base import Encoding

__all__ = [
    "NDARRAY_DTYPES",
    "Encoding",
    "NDArrayEncoding",
    "ScalarEncoding",
    "encoding_names",
    "get_encoding",
    "is_unsafe",
    "validate_encoding",
]

# Value dtype <-> the dtype byte of a dynamic-dtype ndarray (mds-format.md 1.6).
NDARRAY_DTYPES: dict[str, int] = {
    "uint8": 8, "int8": 9, "uint16": 16, "int16": 17, "float16": 18, "uint32": 32,
    "int32": 33, "float32": 34, "uint64": 64, "int64": 65, "float64": 66,
}
_DTYPE_OF_CODE = {code: np.dtype(name).newbyteorder("<") for name, code in NDARRAY_DTYPES.items()}
_STRUCT_CODES = {
    "int8": "b", "uint8": "B", "int16": "h", "uint16": "H", "int32": "i", "uint32": "I",
    "int64": "q", "uint64": "Q", "float16": "e", "float32": "f", "float64": "d",
}
_UNSAFE = frozenset({"pkl"})


class _Bytes(Encoding):
    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        self._require(value, (bytearray, memoryview))
        return bytes(value)

    def _decode(self, data: bytes | memoryview) -> bytes:
        return bytes(data)


class _Str(Encoding):
    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        self._require(value, str)
        return value.encode("utf-8")

    def _decode(self, data: bytes | memoryview) -> str:
        return str(data, "utf-8")


class _Int(Encoding):
    """Python int as int64; numpy integers are refused like the reference does."""

    __slots__ = ()

    def __init__(self, name: str) -> None:
        super().__init__(name, 8)

    def _encode(self, value: Any) -> bytes:
        self._require(value, int)
        if not -(1 << 63) <= value < (1 << 63):
            raise self._error(value, f"{value} is out of the int64 range")
        return struct.pack("<q", value)

    def _decode(self, data: bytes | memoryview) -> int:
        return int.from_bytes(data, "little", signed=True)


class ScalarEncoding(Encoding):
    """A numpy scalar of fixed dtype (``int8`` ... ``float64``), decoded as a numpy scalar."""

    __slots__ = ("_pack", "dtype", "struct_code")

    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(name).newbyteorder("<")
        super().__init__(name, self.dtype.itemsize)
        # struct is ~3x faster than numpy for the common case of a Python int/float value.
        self.struct_code = _STRUCT_CODES[name]
        self._pack = struct.Struct("<" + self.struct_code).pack

    def _encode(self, value: Any) -> bytes:
        kind = type(value)
        if kind is int or (kind is float and self.dtype.kind == "f"):
            try:
                return self._pack(value)
            except (struct.error, OverflowError):
                pass  # numpy decides: ints raise on overflow, floats become inf
        if isinstance(value, (str, bytes)) or value is None:
            raise self._error(value)
        if isinstance(value, np.generic) and self.dtype.kind in "iu":
            self._check_range(value)
        with np.errstate(over="ignore"):  # float overflow to inf is allowed, as in the reference
            return self.dtype.type(value).tobytes()

    def _check_range(self, value: np.generic) -> None:
        # numpy casts numpy scalars silently (wrapping, or garbage for NaN); Python ints raise.
        info = np.iinfo(self.dtype)
        if isinstance(value, np.floating) and not np.isfinite(value):
            raise self._error(value, f"{value} is not a finite number")
        if isinstance(value, (np.integer, np.floating)) and not info.min <= value <= info.max:
            raise self._error(value, f"{value} is out of the {self.name} range")

    def _decode(self, data: bytes | memoryview) -> Any:
        if len(data) != self.dtype.itemsize:
            raise EncodingError(f"cannot decode {self.name!r}: needs {self.dtype.itemsize} bytes")
        return np.frombuffer(data, self.dtype)[0]


class _StrInt(Encoding):
    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        # bool is refused: the reference writes "True", which it then cannot read back.
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._error(value)
        return str(value).encode("utf-8")

    def _decode(self, data: bytes | memoryview) -> int:
        return int(str(data, "utf-8"))


class _StrFloat(Encoding):
    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        self._require(value, float)
        return str(value).encode("utf-8")

    def _decode(self, data: bytes | memoryview) -> float:
        return float(str(data, "utf-8"))


class _StrDecimal(Encoding):
    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        self._require(value, Decimal)
        return str(value).encode("utf-8")

    def _decode(self, data: bytes | memoryview) -> Decimal:
        return Decimal(str(data, "utf-8"))


class _Json(Encoding):
    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        # json.dumps output always parses again, so the reference's re-parse check is not repeated.
        return json.dumps(value).encode("utf-8")

    def _decode(self, data: bytes | memoryview) -> Any:
        return json.loads(str(data, "utf-8"))


class _Pickle(Encoding):
    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        return pickle.dumps(value)

    def _decode(self, data: bytes | memoryview) -> Any:
        return pickle.loads(data)


class NDArrayEncoding(Encoding):
    """``ndarray[:dtype[:shape]]``: a numpy array; the stored header depends on what is static.

    Layout: ``[dtype byte, if dtype is dynamic] [(ndim << 2) | shape code, shape ints, if the
    shape is dynamic] [values, C order, little-endian]``. The shape code selects the smallest
    unsigned type holding max(shape): 0 uint8, 1 uint16, 2 uint32, 3 uint64.
    """

    __slots__ = ("_code", "dtype", "shape")

    def __init__(self, name: str, dtype: str | None, shape: tuple[int, ...] | None) -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<") if dtype else None
        self._code = NDARRAY_DTYPES[dtype] if dtype else -1
        self.shape = shape
        size = None
        if self.dtype is not None and shape is not None:
            size = int(np.prod(shape)) * self.dtype.itemsize
        super().__init__(name, size)

    def _encode(self, value: Any) -> bytes:
        if not isinstance(value, np.ndarray):
            raise self._error(value)
        dtype = value.dtype
        code = _dtype_code(dtype)
        if code < 0:
            raise self._error(value, f"unsupported dtype {dtype}")
        if self.dtype is not None and code != self._code:
            raise self._error(value, f"wrong dtype: expected {self.dtype.name}, got {dtype.name}")
        if value.ndim == 0:
            raise self._error(value, "0-d arrays are not supported; use a scalar encoding")
        if value.size == 0:
            raise self._error(value, "arrays with 0 elements are not supported")
        if dtype.byteorder == ">":
            value = value.astype(dtype.newbyteorder("<"))
        if self.shape is None:
            head = shape_header(value.shape)
            if self.dtype is None:
                head = bytes([code]) + head
            return head + value.tobytes()
        if value.shape != self.shape:
            raise self._error(value, f"wrong shape: expected {self.shape}, got {value.shape}")
        return value.tobytes() if self.dtype is not None else bytes([code]) + value.tobytes()

    def _decode(self, data: bytes | memoryview) -> np.ndarray:
        pos = 0
        dtype = self.dtype
        if dtype is None:
            dtype = _DTYPE_OF_CODE[data[0]]
            pos = 1
        shape = self.shape
        if shape is None:
            head = data[pos]
            ndim, code = head >> 2, head & 3
            shape = _shape_struct(ndim, code).unpack_from(data, pos + 1)
            pos += 1 + ndim * (1 << code)
        return np.frombuffer(data, dtype, offset=pos).reshape(shape)


@functools.lru_cache(maxsize=256)
def _shape_struct(ndim: int, code: int) -> struct.Struct:
    return struct.Struct(f"<{ndim}{'BHIQ'[code]}")


def shape_header(shape: tuple[int, ...]) -> bytes:
    """Return the ``(ndim << 2) | code`` byte plus the shape ints of a dynamic-shape ndarray."""
    ndim = len(shape)
    if ndim >= 64:
        raise EncodingError(f"ndarray has too many axes: at most 63, got {ndim}")
    biggest = max(shape)
    code = 0 if biggest < 1 << 8 else 1 if biggest < 1 << 16 else 2 if biggest < 1 << 32 else 3
    return bytes([(ndim << 2) | code]) + _shape_struct(ndim, code).pack(*shape)


# dtype -> its dtype byte, or -1 if ndarray cannot store it; dtype.name is slow in numpy.
_DTYPE_CODES: dict[np.dtype, int] = {}


def _dtype_code(dtype: np.dtype) -> int:
    code = _DTYPE_CODES.get(dtype)
    if code is None:
        code = NDARRAY_DTYPES.get(dtype.name, -1) if dtype.kind in "uif" else -1
        _DTYPE_CODES[dtype] = code
    return code


def _parse_ndarray(name: str) -> NDArrayEncoding:
    parts = name.split(":")
    if len(parts) > 3:
        raise UnknownEncodingError(f"invalid ndarray encoding {name!r}")
    dtype = parts[1] if len(parts) > 1 and parts[1] else None
    if len(parts) > 1 and parts[1] and dtype not in NDARRAY_DTYPES:
        raise UnknownEncodingError(
            f"invalid ndarray encoding {name!r}: dtype must be one of {sorted(NDARRAY_DTYPES)}"
        )
    shape = None
    if len(parts) == 3:
        if dtype is None:
            raise UnknownEncodingError(f"invalid ndarray encoding {name!r}: shape without dtype")
        try:
            shape = tuple(int(dim) for dim in parts[2].split(","))
        except ValueError:
            raise UnknownEncodingError(f"invalid ndarray encoding {name!r}: bad shape") from None
        if any(dim < 1 for dim in shape):
            raise UnknownEncodingError(f"invalid ndarray encoding {name!r}: dims must be >= 1")
    return NDArrayEncoding(name, dtype, shape)


_SIMPLE: dict[str, Any] = {
    "bytes": _Bytes,
    "str": _Str,
    "int": _Int,
    "str_int": _StrInt,
    "str_float": _StrFloat,
    "str_decimal": _StrDecimal,
    "json": _Json,
    "pkl": _Pickle,
    **dict.fromkeys(_STRUCT_CODES, ScalarEncoding),
    **images.IMAGE_ENCODINGS,
}


def encoding_names() -> frozenset[str]:
    """Return the supported encoding names (``ndarray`` also takes ``:dtype[:shape]``)."""
    return frozenset({*_SIMPLE, "ndarray"})


@functools.lru_cache(maxsize=256)
def _lookup(name: str) -> Encoding:
    if name == "ndarray" or name.startswith("ndarray:"):
        return _parse_ndarray(name)
    factory = _SIMPLE.get(name)
    if factory is None:
        raise UnknownEncodingError(
            f"unknown encoding {name!r}; supported: {sorted(encoding_names())}"
        )
    return factory(name)


def get_encoding(name: str, *, column: str | None = None) -> Encoding:
    """Return the encoding called ``name``.

    Args:
        name: An encoding string as stored in ``column_encodings``.
        column: The column name, only used to make error messages precise.

    Raises:
        UnknownEncodingError: ``name`` is not an encoding we know (custom encodings registered
            at runtime in the reference cannot be decoded here).
    """
    if not isinstance(name, str):
        raise UnknownEncodingError(f"encoding must be a string, got {type(name).__name__}")
    try:
        return _lookup(name)
    except UnknownEncodingError as exc:
        if column is None:
            raise
        raise UnknownEncodingError(f"column {column!r}: {exc}") from None


def validate_encoding(name: str, *, column: str | None = None) -> None:
    """Raise :class:`UnknownEncodingError` unless ``name`` is a valid encoding string."""
    get_encoding(name, column=column)


def is_unsafe(name: str) -> bool:
    """Return whether decoding ``name`` can execute arbitrary code (only ``pkl``)."""
    return name in _UNSAFE
