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


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` of an already sorted array.

    Also cheaper at startup: ``np.unique`` imports ``numpy.ma`` on its first call, about 10 ms
    that every fresh DataLoader worker would pay before its first sample.
    """
    values = np.asarray(values)
    if values.size == 0:
        return values.copy()
    keep = np.empty(values.size, bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def present_values(values: np.ndarray, limit: int) -> np.ndarray:
    """The distinct values of an int array with values in ``[0, limit)``, ascending."""
    return np.flatnonzero(np.bincount(values, minlength=limit))


def segment_starts(sizes: np.ndarray) -> np.ndarray:
    """Exclusive prefix sums: the offset at which each segment of ``sizes`` starts."""
    sizes = np.asarray(sizes, np.int64)
    return np.cumsum(sizes) - sizes


# Spans at least this long are shuffled as int32: numpy's shuffle is bound by cache misses on
# long arrays, and half the bytes per element makes it about 1.5x faster. Shorter spans stay
# cache-resident, where the extra pass would cost more than it saves.
NARROW_SHUFFLE_MIN = 1 << 16


def shuffled_range(out: np.ndarray, begin: int, rng: np.random.Generator) -> None:
    """Fill ``out`` with ``rng.shuffle(np.arange(begin, begin + len(out)))``, bit for bit.

    ``Generator.shuffle`` of a 1-D array draws the same swap indices whatever the element width,
    so shuffling local offsets as int32 and adding ``begin`` afterwards gives the same
    permutation as shuffling the int64 ids themselves, with the same draws consumed.

    Args:
        out: The int64 destination, one element per id.
        begin: The first id.
        rng: The generator, advanced exactly as the int64 shuffle would advance it.
    """
    size = len(out)
    if size < NARROW_SHUFFLE_MIN or size > np.iinfo(np.int32).max:
        out[:] = np.arange(begin, begin + size, dtype=np.int64)
        if size > 1:
            rng.shuffle(out)
        return
    local = np.arange(size, dtype=np.int32)
    rng.shuffle(local)
    # dtype=int64 makes numpy add in 64 bits: an int32 loop would overflow past 2**31 - begin.
    np.add(local, begin, out=out, dtype=np.int64)
