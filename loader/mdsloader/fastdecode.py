"""A per-schema decode function for the iteration hot path, generated once per shard layout.

``mdsloader.mds.record.SampleDecoder`` walks a list of column steps for every sample. At hundreds
of thousands of samples per second that loop, its tuple unpacking and the per-value calls are
most of the loader's CPU time. This module writes the same walk out as straight-line Python, once
per distinct layout:

* one ``struct`` call reads every variable-size length together with the fixed-width numeric
  columns that sit at constant offsets right after them, and one more call reads each later
  stretch of consecutive fixed-width numeric columns; values are wrapped in their numpy type;
* ``str`` and ``bytes`` are sliced (and decoded) inline;
* a typed ``ndarray`` without a fixed shape (``ndarray:float32``, the usual token or embedding
  column) reads its one-byte ``ndim``/size-code header and a 1-D shape inline and is one
  ``np.frombuffer`` on the record itself at an offset (no slice copy, no reshape); 2-D values
  take a small helper, anything else the encoding's own decoder;
* every other encoding calls the format package's own decoder.

The result is value-, dtype-, shape- and type-identical to ``SampleDecoder`` (a test checks every
encoding). Any record the inline code cannot take as it is (too short for its lengths, a damaged
array header, an array that does not fill its column) is handed to ``SampleDecoder``, which
returns what it would have returned or raises its error.

Arrays are read-only views of the record passed in: callers pass a ``bytes`` copy (a slice of the
shard's mmap), so nothing decoded aliases the file.

The generated source contains only integers and ``repr()`` of column names, never data.
"""

from __future__ import annotations

import functools
import struct
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

Decoder = Callable[[bytes], dict[str, Any]]

# float16 goes through numpy: a struct round trip could alter NaN payload bits.
_STRUCT_SAFE = frozenset("bBhHiIqQfd")

# Dynamic-shape ndarray header byte ``(ndim << 2) | size code`` -> (struct of the dims, bytes they
# take) for the 2-D shapes _array2d decodes without the generic path.
_DIMS_2D = {
    8: (struct.Struct("<2B"), 2),
    9: (struct.Struct("<2H"), 4),
    10: (struct.Struct("<2I"), 8),
}
# What the generated code hands to SampleDecoder instead of raising: a short or damaged record
# (struct.error, IndexError, ValueError incl. UnicodeDecodeError) and a value its encoding cannot
# decode (EncodingError is a ValueError; SampleDecoder raises it naming the column).
_FALLBACK = (struct.error, IndexError, ValueError)
_U16 = struct.Struct("<H").unpack_from
_U32 = struct.Struct("<I").unpack_from


def _array2d(data: bytes, pos: int, end: int, dtype: np.dtype, generic: Callable) -> np.ndarray:
    """A dynamic-shape typed ndarray stored at ``data[pos:end]`` whose header is not 1-D.

    2-D shapes are read from the header and the values viewed in place; every other header
    (more axes, 64-bit dims, a damaged value) goes to the encoding's decoder on a slice, which
    returns the array or raises.
    """
    dims = _DIMS_2D.get(data[pos])
    if dims is not None:
        rows, cols = dims[0].unpack_from(data, pos + 1)
        start = pos + 1 + dims[1]
        if rows and cols and start + rows * cols * dtype.itemsize == end:
            return np.frombuffer(data, dtype, rows * cols, start).reshape(rows, cols)
    return generic(data[pos:end])


class _Source:
    """The generated body: source lines, the names they use, and where the read position is.

    The position is tracked at generation time while it is a constant (before the first
    variable-size column) and in the local ``p`` after that, so fixed offsets cost nothing.
    """

    def __init__(self, header: int) -> None:
        self.lines: list[str] = []
        self.env: dict[str, Any] = {}
        self.const: int | None = header  # the position, while it is known in advance
        self.extra = 0  # bytes past ``p`` already read, once the position is dynamic

    def at(self, delta: int = 0) -> str:
        """The expression of the current position plus ``delta``."""
        if self.const is not None:
            return str(self.const + delta)
        return "p" if not self.extra + delta else f"p + {self.extra + delta}"

    def advance(self, width: int | str) -> None:
        """Move past a column of ``width`` bytes (an int, or the name of a length variable)."""
        if isinstance(width, int):
            if self.const is not None:
                self.const += width
            else:
                self.extra += width
            return
        self.lines.append(f"p = {self.at()} + {width}")
        self.const, self.extra = None, 0


def _scalar_code(coder: Any, size: int | None) -> str | None:
    """The struct code of a fixed-width column read with struct (None: not one of those)."""
    from mdsloader.mds.encodings import ScalarEncoding

    if size is None:
        return None
    if isinstance(coder, ScalarEncoding) and coder.struct_code in _STRUCT_SAFE:
        return coder.struct_code
    if coder.name == "int":
        return "q"  # int.from_bytes(..., signed=True) of 8 bytes: the same Python int
    return None


def _wrap_scalars(src: _Source, group: list[tuple[int, Any]]) -> None:
    """Give each struct-read value of ``group`` its numpy type (``int`` stays a Python int)."""
    for j, coder in group:
        if coder.name == "int":
            continue
        zero = _identity_zero(coder.dtype)
        if zero is not None:
            src.env[f"_z{j}"] = zero
            src.lines.append(f"v{j} = _z{j} + v{j}")
        else:
            src.env[f"_t{j}"] = coder.dtype.type
            src.lines.append(f"v{j} = _t{j}(v{j})")


@functools.lru_cache(maxsize=16)
def _identity_zero(dtype: np.dtype) -> np.generic | None:
    """A numpy zero whose sum with a Python number is that number as a ``dtype`` scalar.

    ``np.int64(0) + x`` costs a fifth of ``np.int64(x)``. It relies on NumPy 2's promotion rules
    (a Python number takes the numpy operand's type) and, for floats, on ``-0.0`` being the exact
    additive identity (``-0.0 + x`` is ``x`` for every ``x``, signed zeros, infinities and NaN
    included). Both are checked here on the extreme values, bit for bit against the constructor;
    where they do not hold (NumPy 1.x value-based casting) the constructor is used.
    """
    kind = dtype.type
    if dtype.kind == "f":
        zero = kind(-0.0)
        info = np.finfo(dtype)
        probes = [0.0, -0.0, 1.5, float(info.max), float(info.min), float(info.tiny)]
        probes += [float("inf"), float("-inf"), float("nan")]
    else:
        zero = kind(0)
        info = np.iinfo(dtype)
        probes = [int(info.min), int(info.max), 0, 1, int(info.max) // 3]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for value in probes:
                got, want = zero + value, kind(value)
                if type(got) is not kind or got.tobytes() != want.tobytes():
                    return None
    except (ArithmeticError, RuntimeWarning, OverflowError, TypeError, ValueError):
        return None
    return zero


def _read_group(src: _Source, group: list[tuple[int, Any]], codes: str) -> None:
    """One struct call for a stretch of consecutive fixed-width numeric columns."""
    first = group[0][0]
    src.env[f"_g{first}"] = struct.Struct("<" + codes).unpack_from
    targets = "".join(f"v{j}, " for j, _ in group)
    src.lines.append(f"{targets}= _g{first}(data, {src.at()})")
    src.advance(struct.calcsize("<" + codes))
    _wrap_scalars(src, group)


def _array_lines(src: _Source, j: int, coder: Any, width: str) -> None:
    """Inline decode of a typed, dynamic-shape ndarray column (see the module docstring)."""
    env, start, end = src.env, src.at(), f"{src.at()} + {width}"
    env["_frombuffer"], env["_u16"], env["_u32"], env["_array2d"] = (
        np.frombuffer,
        _U16,
        _U32,
        _array2d,
    )
    env[f"_dt{j}"], env[f"_n{j}"] = coder.dtype, coder._decode
    item = coder.dtype.itemsize
    # Header byte 4/5/6: one axis whose length is a uint8/uint16/uint32.
    src.lines += [
        f"h = data[{start}]",
        "if h == 4:",
        f"    n = data[{src.at(1)}]",
        f"    q = {src.at(2)}",
        "elif h == 5:",
        f"    n, = _u16(data, {src.at(1)})",
        f"    q = {src.at(3)}",
        "elif h == 6:",
        f"    n, = _u32(data, {src.at(1)})",
        f"    q = {src.at(5)}",
        "else:",
        "    n = q = 0",
        # A length that does not fill the column exactly is left to the generic decoder (which
        # raises what SampleDecoder raises); so is an empty array.
        f"if n and q + n * {item} == {end}:",
        f"    v{j} = _frombuffer(data, _dt{j}, n, q)",
        "else:",
        f"    v{j} = _array2d(data, {start}, {end}, _dt{j}, _n{j})",
    ]


def _column_lines(src: _Source, j: int, coder: Any, width: str) -> None:
    """Source lines that decode column ``j`` (not a struct-read scalar) into ``v{j}``."""
    from mdsloader.mds.encodings import NDArrayEncoding

    env = src.env
    span = f"data[{src.at()}:{src.at()} + {width}]"
    if isinstance(coder, NDArrayEncoding) and coder.dtype is not None:
        if coder.shape is None:
            _array_lines(src, j, coder, width)
            return
        env["_frombuffer"] = np.frombuffer
        env[f"_dt{j}"], env[f"_s{j}"] = coder.dtype, coder.shape
        src.lines.append(f"v{j} = _frombuffer({span}, _dt{j}).reshape(_s{j})")
    elif coder.name == "str":
        src.lines.append(f"v{j} = {span}.decode()")  # bytes.decode: always strict UTF-8
    elif coder.name == "bytes":
        src.lines.append(f"v{j} = {span}")
    else:
        # Its EncodingError goes to _slow too, which raises it with the column name added.
        env[f"_d{j}"] = coder.decode
        src.lines.append(f"v{j} = _d{j}({span})")


def decoder_for(info: Any) -> Decoder:
    """The (cached) decode function of a shard's layout; shards of one dataset share it."""
    return _cached(tuple(info.column_names), tuple(info.column_encodings), tuple(info.column_sizes))


@functools.lru_cache(maxsize=256)
def _cached(names: tuple[str, ...], encodings: tuple[str, ...], sizes: tuple[int | None, ...]):
    return build_decoder(_Layout(names, encodings, sizes))


class _Layout:
    __slots__ = ("column_encodings", "column_names", "column_sizes")

    def __init__(self, names: tuple, encodings: tuple, sizes: tuple) -> None:
        self.column_names, self.column_encodings, self.column_sizes = names, encodings, sizes


def build_decoder(info: Any) -> Decoder:
    """Generate the decode function of a shard layout (column names, encodings and sizes).

    Args:
        info: A ``ShardInfo`` (or anything with ``column_names``, ``column_encodings`` and
            ``column_sizes``).

    Returns:
        ``decode(record: bytes) -> dict``, equal to ``SampleDecoder(info).decode``.

    Raises:
        UnknownEncodingError: A column's encoding is not known.
    """
    from mdsloader.mds.encodings import get_encoding
    from mdsloader.mds.record import SampleDecoder

    names = list(info.column_names)
    sizes = list(info.column_sizes)
    coders = [get_encoding(e, column=n) for n, e in zip(names, info.column_encodings)]
    codes = [_scalar_code(coder, size) for coder, size in zip(coders, sizes)]
    num_var = sum(size is None for size in sizes)
    src = _Source(4 * num_var)
    j = 0
    # The lengths and the numeric columns at constant offsets right after them: one call.
    lead = []
    while j < len(coders) and codes[j] is not None:
        lead.append((j, coders[j]))
        j += 1
    head = "<" + (f"{num_var}I" if num_var else "") + "".join(codes[k] for k, _ in lead)
    if len(head) > 1:
        src.env["_head"] = struct.Struct(head).unpack_from
        targets = [f"l{k}" for k in range(num_var)] + [f"v{k}" for k, _ in lead]
        src.lines.append(f"{', '.join(targets)}, = _head(data, 0)")
        src.advance(struct.calcsize(head) - 4 * num_var)
        _wrap_scalars(src, lead)
    var = 0
    while j < len(coders):
        if codes[j] is not None:
            group = []
            while j < len(coders) and codes[j] is not None:
                group.append((j, coders[j]))
                j += 1
            _read_group(src, group, "".join(codes[k] for k, _ in group))
            continue
        width = str(sizes[j]) if sizes[j] is not None else f"l{var}"
        _column_lines(src, j, coders[j], width)
        src.advance(sizes[j] if sizes[j] is not None else width)
        var += sizes[j] is None
        j += 1
    # Slices stop quietly at the end of the record: a record shorter than its lengths say is
    # only noticed here, and SampleDecoder raises the error naming the column.
    src.lines.append(f"if {src.at()} > len(data): return _slow(data)")
    items = ", ".join(f"{name!r}: v{k}" for k, name in enumerate(names))
    src.lines.append(f"return {{{items}}}")
    source = "def decode(data):\n    try:\n" + "".join(f"        {line}\n" for line in src.lines)
    source += "    except _FALLBACK:\n        return _slow(data)\n"
    env = src.env
    env["_slow"], env["_FALLBACK"] = SampleDecoder(info).decode, _FALLBACK
    exec(compile(source, f"<mdsloader decoder {names}>", "exec"), env)
    return env["decode"]
