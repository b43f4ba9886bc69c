"""A per-schema decode function for the iteration hot path, generated once per shard layout.

``mdsloader.mds.record.SampleDecoder`` walks a list of column steps for every sample. At tens of
thousands of samples per second that loop, its tuple unpacking and a ``np.frombuffer`` per
scalar are most of the loader's CPU time. This module writes the same walk out as straight-line
Python, once per distinct layout: one ``struct`` call reads every variable-size length, scalars
are read with precompiled ``struct`` unpackers and wrapped in their numpy type, ``str`` and
``bytes`` are sliced inline, and every other encoding calls the format package's own decoder.
The result is value- and type-identical to ``SampleDecoder`` (a test checks every encoding); a
record that is too short for its lengths is handed to ``SampleDecoder`` to raise its error.

The generated source contains only integers and ``repr()`` of column names, never data.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

Decoder = Callable[[bytes], dict[str, Any]]

# float16 goes through numpy: a struct round trip could alter NaN payload bits.
_STRUCT_SAFE = frozenset("bBhHiIqQfd")


def _column_lines(j: int, coder: Any, size: int | None, var: int, env: dict[str, Any]) -> list[str]:
    """Source lines that decode column ``j`` at position ``p`` into ``v{j}``."""
    from mdsloader.mds.encodings import NDArrayEncoding, ScalarEncoding

    width = str(size) if size is not None else f"l{var}"
    code = getattr(coder, "struct_code", None)
    if size is not None and isinstance(coder, ScalarEncoding) and code in _STRUCT_SAFE:
        env[f"_u{j}"] = struct.Struct("<" + code).unpack_from
        env[f"_t{j}"] = coder.dtype.type
        line = f"v{j} = _t{j}(_u{j}(data, p)[0])"
    elif isinstance(coder, NDArrayEncoding) and coder.dtype is not None:
        # ``coder._decode`` without ``Encoding.decode``'s error mapping: every error it can raise
        # (IndexError, ValueError, struct.error) sends the record to ``_slow``, which maps it.
        env[f"_n{j}"] = coder._decode
        line = f"v{j} = _n{j}(data[p:p + {width}])"
        if coder.shape is not None:
            env["_frombuffer"] = np.frombuffer
            env[f"_dt{j}"], env[f"_s{j}"] = coder.dtype, coder.shape
            line = f"v{j} = _frombuffer(data[p:p + {width}], _dt{j}).reshape(_s{j})"
    elif coder.name == "str":
        line = f"v{j} = str(data[p:p + {width}], 'utf-8')"
    elif coder.name == "bytes":
        line = f"v{j} = data[p:p + {width}]"
    else:
        env[f"_d{j}"] = coder.decode
        line = f"v{j} = _d{j}(data[p:p + {width}])"
    return [line, f"p += {width}"]


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
    num_var = sum(size is None for size in sizes)
    env: dict[str, Any] = {"_slow": SampleDecoder(info).decode}
    body: list[str] = []
    if num_var:
        env["_lengths"] = struct.Struct(f"<{num_var}I").unpack_from
        targets = "".join(f"l{k}, " for k in range(num_var))
        body.append(f"{targets}= _lengths(data, 0)")
    body.append(f"p = {4 * num_var}")
    var = 0
    for j, (coder, size) in enumerate(zip(coders, sizes)):
        body += _column_lines(j, coder, size, var, env)
        var += size is None
    body.append("if p > len(data): return _slow(data)")
    items = ", ".join(f"{name!r}: v{j}" for j, name in enumerate(names))
    body.append(f"return {{{items}}}")
    source = "def decode(data):\n    try:\n" + "".join(f"        {line}\n" for line in body)
    source += "    except (struct_error, IndexError, ValueError):\n        return _slow(data)\n"
    env["struct_error"] = struct.error
    exec(compile(source, f"<mdsloader decoder {names}>", "exec"), env)
    return env["decode"]
