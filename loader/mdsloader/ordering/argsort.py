"""Fast sorting by non-negative float positions, used by the ``py1e`` shuffle.

``np.argsort`` on float64 is a comparison sort over (value, index) pairs and dominates ``py1e``.
Positions there lie in ``[0, n)``, so a position quantised to fixed point and a payload (an element
index, or directly the sample id) fit together in one uint64 key, and numpy's SIMD sort of plain
uint64 keys is several times faster. Quantisation can only merge nearby positions, never reorder
them; elements whose quantised positions collide (rare: about ``n * 2**-fraction_bits`` of them) are
re-sorted on their exact positions, which the caller looks up by payload.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Below this many fractional bits collisions stop being rare and the plain argsort wins.
MIN_FRACTION_BITS = 6
# Elements per step of the chunked passes: big enough to amortise numpy's call overhead, small
# enough to stay in cache and to avoid full-size temporaries.
_CHUNK = 1 << 16


def fraction_bits(num_positions: int, payload_bits: int) -> int:
    """Fixed-point fraction bits left in a 64-bit key, or a negative number if none fit."""
    return 64 - max(int(num_positions - 1).bit_length(), 1) - payload_bits


def sort_by_position(positions: np.ndarray, payload: np.ndarray, payload_bits: int,
                     position_of: Callable[[np.ndarray], np.ndarray], out: np.ndarray,
                     position_bits: int | None = None) -> None:
    """Write ``payload`` ordered by ``positions`` (ties: smaller payload first) into ``out``.

    Args:
        positions: 1-D float64 values, all in ``[0, len(positions))``.
        payload: Distinct non-negative int64 values below ``2**payload_bits``, one per position.
        payload_bits: Bits the payload needs; the caller checks :func:`fraction_bits` is at least
            :data:`MIN_FRACTION_BITS`.
        position_of: Maps payload values back to their exact positions (for collisions only).
        out: uint64 buffer of ``len(positions)`` elements; receives the sorted payload.
        position_bits: Bits of the positions' integer part when they are not all below
            ``len(positions)``: every position must then be below ``2**position_bits``.
    """
    n = positions.size
    index_bits = position_bits or max(int(n - 1).bit_length(), 1)
    scale = float(1 << (64 - index_bits - payload_bits))
    shift = np.uint64(payload_bits)
    for begin in range(0, n, _CHUNK):
        end = min(begin + _CHUNK, n)
        chunk = out[begin:end]
        # The float -> uint64 cast truncates, which is floor for non-negative values.
        np.multiply(positions[begin:end], scale, out=chunk, casting="unsafe")
        chunk <<= shift
        chunk |= payload[begin:end].view(np.uint64)
    out.sort()
    _resolve_collisions(out, payload_bits, position_of)
    out &= np.uint64((1 << payload_bits) - 1)


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
    keys = np.empty(n, np.uint64) if out is None else out[:n]
    index = keys.view(np.int64)
    bits = max(int(n - 1).bit_length(), 1)
    fast = n >= 2 and fraction_bits(n, bits) >= MIN_FRACTION_BITS
    if not (fast and (in_range or _fits(positions, n))):
        index[:] = np.argsort(positions, kind="stable")
        return index
    sort_by_position(positions, np.arange(n, dtype=np.int64), bits, positions.__getitem__, keys)
    return index


def _fits(positions: np.ndarray, n: int) -> bool:
    return bool(positions.min() >= 0.0 and positions.max() < float(n))


def _colliding_neighbours(keys: np.ndarray, payload_bits: int) -> np.ndarray:
    """Indices i where sorted keys i and i+1 share their quantised position."""
    limit = np.uint64(1 << payload_bits)
    found = []
    scratch = np.empty(_CHUNK, np.uint64)
    for begin in range(0, keys.size - 1, _CHUNK):
        end = min(begin + _CHUNK, keys.size - 1)
        xor = np.bitwise_xor(keys[begin + 1:end + 1], keys[begin:end], out=scratch[:end - begin])
        hits = np.flatnonzero(xor < limit)
        if hits.size:
            found.append(hits + begin)
    return np.concatenate(found) if found else np.empty(0, np.int64)


def _resolve_collisions(keys: np.ndarray, payload_bits: int,
                        position_of: Callable[[np.ndarray], np.ndarray]) -> None:
    """Re-sort runs of sorted keys whose quantised positions are equal by their exact positions."""
    pairs = _colliding_neighbours(keys, payload_bits)
    if not pairs.size:
        return
    # A run is a maximal stretch of sorted slots linked by colliding neighbour pairs.
    where = np.union1d(pairs, pairs + 1)
    linked = np.isin(where[:-1], pairs)
    run = np.cumsum(np.concatenate([[True], ~linked]))
    sub = keys[where]
    payload = (sub & np.uint64((1 << payload_bits) - 1)).astype(np.int64)
    keys[where] = sub[np.lexsort((payload, position_of(payload), run))]
