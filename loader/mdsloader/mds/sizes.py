"""Parsing a writer's ``size_limit``: an int, or a human string such as ``"64mb"``."""

from __future__ import annotations

import re

__all__ = ["parse_size_limit"]

_UNITS = {"": 1, "b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}
_UNITS.update({"pb": 1 << 50, "eb": 1 << 60, "zb": 1 << 70, "yb": 1 << 80})
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtpezy]?b)?\s*$")


def parse_size_limit(value: int | float | str | None) -> int | None:
    """Convert a size limit to bytes, or None for unlimited (``None``, ``0``, ``""``).

    Units are binary, as in the reference: ``"100kb"`` is 102400 bytes; ``"1.5mb"`` is allowed.

    Raises:
        ValueError: A negative value, an unknown unit, or a limit of 2**32 bytes or more (shard
            offsets are uint32).
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid size_limit {value!r}")
    if not value:
        return None
    if isinstance(value, (int, float)):
        size = int(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value.lower())
        if match is None:
            raise ValueError(
                f"invalid size_limit {value!r}: use bytes or a number with b, kb, mb, gb, ... "
            )
        number, unit = match.groups()
        size = int(float(number) * _UNITS[unit or ""])
    else:
        raise ValueError(f"invalid size_limit {value!r}")
    if size < 0:
        raise ValueError(f"size_limit must not be negative, got {size}")
    if size >= 1 << 32:
        raise ValueError(
            f"`size_limit` must be less than 2**32 (sample offsets are uint32), got {size}"
        )
    return size or None
