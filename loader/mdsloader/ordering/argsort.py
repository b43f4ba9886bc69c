"""Fast argsort of non-negative float positions, used by the ``py1e`` shuffle.

``np.argsort`` on float64 is a comparison sort over (value, index) pairs and dominates ``py1e``.
Positions there lie in ``[0, n)``, so a position quantised to fixed point and the element index fit
together in one uint64 key, and numpy's SIMD sort of plain uint64 keys is several times faster.
Quantisation can only merge nearby positions, never reorder them; elements whose quantised positions
collide (rare: about ``n * 2**-fraction_bits`` of them) are re-sorted on their exact positions.
"""

from __future__ import annotations

import numpy as np

# Below this many fractional bits collisions stop being rare and the plain argsort wins.
_MIN_FRACTION_BITS = 6
# Elements per step of the chunked passes: big enough to amortise numpy's call overhead, small
# enough to stay in cache and to avoid full-size temporaries.
_CHUNK = 1 << 16


def argsort_positions(positions: np.ndarray, *, in_range: bool = False,
                      out: np.ndarray | None = None) -> np.ndarray:
    """Return indices that sort ``positions`` (ascending; equal values keep index order).

    Args:
        positions: 1-D float64 values; fast when they are all in ``[0, len(positions))``.
        in_range: The caller guarantees ``0 <= positions < len(positions)`` (skips a check).
        out: Optional uint64 buffer of at least ``len(positions)`` elements; the result is then
            written to (and returned as an int64 view of) its first ``len(positions)`` elements.

    Returns:
        An int64 permutation.
    """
    n = positions.size
    index_bits = max(int(n - 1).bit_length(), 1)
    fraction_bits = 64 - 2 * index_bits
    keys = np.empty(n, np.uint64) if out is None else out[:n]
    if n < 2 or fraction_bits < _MIN_FRACTION_BITS or not (in_range or _fits(positions, n)):
        index = keys.view(np.int64)
        index[:] = np.argsort(positions, kind="stable")
        return index
    scale = float(1 << fraction_bits)
    shift = np.uint64(index_bits)
    for begin in range(0, n, _CHUNK):
        end = min(begin + _CHUNK, n)
        chunk = keys[begin:end]
        # The float -> uint64 cast truncates, which is floor for non-negative values.
        np.multiply(positions[begin:end], scale, out=chunk, casting="unsafe")
        chunk <<= shift
        chunk |= np.arange(begin, end, dtype=np.uint64)
    keys.sort()
    _resolve_collisions(keys, positions, index_bits)
    keys &= np.uint64((1 << index_bits) - 1)
    return keys.view(np.int64)


def _fits(positions: np.ndarray, n: int) -> bool:
    return bool(positions.min() >= 0.0 and positions.max() < float(n))


def _colliding_neighbours(keys: np.ndarray, index_bits: int) -> np.ndarray:
    """Indices i where sorted keys i and i+1 share their quantised position."""
    limit = np.uint64(1 << index_bits)
    found = []
    scratch = np.empty(_CHUNK, np.uint64)
    for begin in range(0, keys.size - 1, _CHUNK):
        end = min(begin + _CHUNK, keys.size - 1)
        xor = np.bitwise_xor(keys[begin + 1:end + 1], keys[begin:end], out=scratch[:end - begin])
        hits = np.flatnonzero(xor < limit)
        if hits.size:
            found.append(hits + begin)
    return np.concatenate(found) if found else np.empty(0, np.int64)


def _resolve_collisions(keys: np.ndarray, positions: np.ndarray, index_bits: int) -> None:
    """Re-sort runs of sorted keys whose quantised positions are equal by their exact positions."""
    pairs = _colliding_neighbours(keys, index_bits)
    if not pairs.size:
        return
    # A run is a maximal stretch of sorted slots linked by colliding neighbour pairs.
    where = np.union1d(pairs, pairs + 1)
    linked = np.isin(where[:-1], pairs)
    run = np.cumsum(np.concatenate([[True], ~linked]))
    sub = keys[where]
    index = (sub & np.uint64((1 << index_bits) - 1)).astype(np.int64)
    keys[where] = sub[np.lexsort((index, positions[index], run))]
