"""Small vectorised array helpers shared by the ordering modules."""

from __future__ import annotations

import numpy as np


def concat_ranges(begins: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(b, b + s)`` for every (begin, size) pair, without a Python loop.

    Args:
        begins: First value of each range.
        sizes: Length of each range (non-negative).

    Returns:
        An int64 array of length ``sizes.sum()``.
    """
    begins = np.asarray(begins, np.int64)
    sizes = np.asarray(sizes, np.int64)
    total = int(sizes.sum())
    if not total:
        return np.empty(0, np.int64)
    # Each output element is its own position plus a per-range shift that maps the range's first
    # output slot onto the range's first value.
    starts = np.cumsum(sizes) - sizes
    out = np.arange(total, dtype=np.int64)
    out += np.repeat(begins - starts, sizes)
    return out


def segment_starts(sizes: np.ndarray) -> np.ndarray:
    """Exclusive prefix sums: the offset at which each segment of ``sizes`` starts."""
    sizes = np.asarray(sizes, np.int64)
    return np.cumsum(sizes) - sizes
