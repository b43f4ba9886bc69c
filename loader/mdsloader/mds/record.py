"""One sample record: a dict of column values <-> its bytes inside a shard.

A record is one uint32 length per variable-size column (in column order), then the encoded bytes
of every column in column order. Columns are sorted by name (Unicode code point).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mdsloader.errors import EncodingError, ShardFormatError, UnsafeTypeError
from mdsloader.mds.encodings import Encoding, ScalarEncoding, get_encoding, is_unsafe

__all__ = ["ColumnPlan", "RecordEncoder", "SampleDecoder", "check_safe"]


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """The sorted columns of a dataset with their encodings and fixed sizes."""

    names: tuple[str, ...]
    encodings: tuple[str, ...]
    sizes: tuple[int | None, ...]

    @classmethod
    def from_columns(cls, columns: Mapping[str, str]) -> ColumnPlan:
        """Plan a writer's ``columns`` mapping (name -> encoding string).

        Raises:
            UnknownEncodingError: An encoding we do not know, naming the column.
            EncodingError: ``columns`` is empty or has a non-string name.
        """
        if not isinstance(columns, Mapping) or not columns:
            raise EncodingError("columns must be a non-empty mapping of name -> encoding")
        if not all(isinstance(name, str) for name in columns):
            raise EncodingError("column names must be strings")
        names = tuple(sorted(columns))
        coders = [get_encoding(columns[name], column=name) for name in names]
        return cls(names, tuple(columns[n] for n in names), tuple(c.size for c in coders))

    def coders(self) -> list[Encoding]:
        """Return the encoding object of each column, in column order."""
        return [get_encoding(e, column=n) for n, e in zip(self.names, self.encodings)]


def check_safe(names: Sequence[str], encodings: Sequence[str], *, where: str) -> None:
    """Refuse pickle columns before anything is decoded.

    Raises:
        UnsafeTypeError: A ``pkl`` column, naming it.
    """
    for name, encoding in zip(names, encodings):
        if is_unsafe(encoding):
            raise UnsafeTypeError(
                f"{where}: column {name!r} contains an unsafe type: {encoding!r} (pickle can run "
                "arbitrary code); pass allow_unsafe_types=True only if you trust the data"
            )


class RecordEncoder:
    """Encodes sample dicts into records, one value at a time."""

    def __init__(self, plan: ColumnPlan) -> None:
        self.plan = plan
        coders = plan.coders()
        self._steps = [
            (name, coder, size, coder.name == "str", *_int_packer(coder))
            for name, coder, size in zip(plan.names, coders, plan.sizes)
        ]
        num_var = sum(size is None for size in plan.sizes)
        self._pack_lengths = struct.Struct(f"<{num_var}I").pack

    def encode(self, sample: Mapping[str, Any]) -> bytes:
        """Encode one sample; keys that are not columns are ignored, as in the reference.

        Raises:
            EncodingError: A missing column, or a value its encoding cannot store (naming both).
        """
        lengths = []
        parts = [b""]  # parts[0] becomes the length header: one join, one copy
        for name, coder, size, is_str, pack, lo, hi in self._steps:
            try:
                value = sample[name]
                # Inlined common cases (str, pass-through bytes): this loop is the hot path.
                if is_str and type(value) is str:
                    data = value.encode("utf-8")
                elif pack is not None and type(value) is int and lo <= value <= hi:
                    data = pack(value)
                elif type(value) is bytes:
                    data = value
                else:
                    data = coder.encode(value)
            except KeyError:
                raise EncodingError(f"sample has no value for column {name!r}") from None
            except UnicodeEncodeError as exc:
                raise EncodingError(f"column {name!r}: cannot encode as UTF-8: {exc}") from exc
            except EncodingError as exc:
                raise EncodingError(f"column {name!r}: {exc}") from exc
            if size is None:
                lengths.append(len(data))
            elif len(data) != size:
                raise EncodingError(
                    f"column {name!r}: encoding {coder.name!r} must produce {size} bytes, "
                    f"got {len(data)} (a bytes value passes through unchanged)"
                )
            parts.append(data)
        try:
            parts[0] = self._pack_lengths(*lengths)
        except struct.error as exc:
            raise EncodingError(f"a column value is 4 GiB or larger: {exc}") from None
        return b"".join(parts)


def _int_packer(coder: Encoding) -> tuple[Any, int, int]:
    """A struct packer and range for Python ints into an integer column (else no fast path)."""
    if coder.name == "int":
        return struct.Struct("<q").pack, -(1 << 63), (1 << 63) - 1
    if isinstance(coder, ScalarEncoding) and coder.dtype.kind in "iu":
        info = np.iinfo(coder.dtype)
        char = {1: "b", 2: "h", 4: "i", 8: "q"}[coder.dtype.itemsize]
        char = char.upper() if coder.dtype.kind == "u" else char
        return struct.Struct(f"<{char}").pack, int(info.min), int(info.max)
    return None, 0, -1


class SampleDecoder:
    """Decodes sample records of one shard layout into dicts.

    The plan is computed once: variable-size lengths come from one ``struct.unpack_from``,
    fixed-width scalars from a struct read wrapped in their numpy type, strings straight from
    a memoryview, and every other value from a zero-copy slice of the record.
    """

    def __init__(self, info: Any) -> None:
        """Plan decoding for a :class:`ShardInfo` (or anything with the three column fields)."""
        self.names = tuple(info.column_names)
        pairs = zip(info.column_names, info.column_encodings)
        coders = [get_encoding(encoding, column=name) for name, encoding in pairs]
        sizes = list(info.column_sizes)
        self._num_var = sum(size is None for size in sizes)
        self._unpack_lengths = struct.Struct(f"<{self._num_var}I").unpack_from
        self._steps = [
            (name, size, *_decode_plan(coder))
            for name, coder, size in zip(self.names, coders, sizes)
        ]

    def decode(self, data: bytes | memoryview) -> dict[str, Any]:
        """Decode one record (arrays in the result are read-only views of ``data``).

        Raises:
            ShardFormatError: The record is shorter than its column lengths say.
            EncodingError: A value cannot be decoded (naming the column).
        """
        try:
            lengths = iter(self._unpack_lengths(data))
        except struct.error:
            raise ShardFormatError("sample record is shorter than its header") from None
        view = memoryview(data)
        total = len(view)
        pos = 4 * self._num_var
        sample = {}
        for name, size, kind, decode in self._steps:
            end = pos + (next(lengths) if size is None else size)
            if end > total:
                raise ShardFormatError(f"sample record is truncated in column {name!r}")
            try:
                if kind is _SCALAR:
                    sample[name] = decode(view, pos)
                elif kind is _STR:
                    sample[name] = str(view[pos:end], "utf-8")
                else:
                    sample[name] = decode(view[pos:end])
            except (EncodingError, UnicodeDecodeError) as exc:
                raise EncodingError(f"column {name!r}: {exc}") from exc
            pos = end
        return sample


_SCALAR, _STR, _OTHER = "scalar", "str", "other"


def _decode_plan(coder: Encoding) -> tuple[str, Any]:
    if isinstance(coder, ScalarEncoding):
        unpack = struct.Struct("<" + coder.struct_code).unpack_from
        make = coder.dtype.type

        def scalar(view: memoryview, pos: int) -> Any:
            return make(unpack(view, pos)[0])

        return _SCALAR, scalar
    if coder.name == "str":
        return _STR, None
    return _OTHER, coder.decode
