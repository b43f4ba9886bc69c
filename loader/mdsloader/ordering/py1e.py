"""The ``py1e`` shuffle: spans spread over a window of about one shuffle block.

Per canonical node (mds-format.md 3.5): shuffle the node's span order, shuffle samples within each
span, give every sample a float position (its slot plus a uniform shift bounded by the span's random
block size and the node's ends) and sort the node by position. The draws are the reference's, call
for call; the sort uses :func:`argsort_positions`, several times faster than ``np.argsort``.
"""

from __future__ import annotations

import warnings

import numpy as np

from mdsloader.ordering.argsort import argsort_positions
from mdsloader.ordering.spans import Pieces, shuffle_parts


def shuffle_py1e(pieces: Pieces, seed: int, epoch: int, block_size: int) -> np.ndarray:
    """Run ``py1e`` over pieces already cut at canonical-node boundaries.

    Args:
        pieces: Shard spans in the run-fixed order, cut per canonical node.
        seed: Run seed.
        epoch: Epoch.
        block_size: Shuffle block size.

    Returns:
        The int64 permutation of ``pieces.sample_bounds[-1]`` sample ids.

    Raises:
        ValueError: If a canonical node gets no samples (fewer samples than canonical nodes).
    """
    ids, order = py1e_order(pieces, seed, epoch, block_size)
    return np.take(ids, order, out=order, mode="clip")


def py1e_order(pieces: Pieces, seed: int, epoch: int, block_size: int,
               needed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``py1e`` as two arrays: the shuffle is ``ids[order]``, left for the caller to gather.

    A worker needs only some positions of the permutation, so it gathers ``ids[order[p]]`` for
    those instead of materialising the permutation.

    Args:
        pieces: Shard spans in the run-fixed order, cut per canonical node.
        seed: Run seed.
        epoch: Epoch.
        block_size: Shuffle block size.
        needed: Optional boolean mask over canonical nodes. Nodes not needed consume exactly the
            same random draws but are not sorted, and their part of ``order`` is unspecified.

    Returns:
        ``(ids, order)``: every node's span-shuffled sample ids, and the global index into
        ``ids`` of each position of the epoch.

    Raises:
        ValueError: If a canonical node gets no samples (fewer samples than canonical nodes).
    """
    rng = np.random.default_rng(seed + epoch)
    spans = shuffle_parts(pieces, rng)
    bounds = pieces.sample_bounds.tolist()
    ids = np.empty(bounds[-1], np.int64)
    keys = np.empty(bounds[-1], np.uint64)
    positions = np.empty(max(np.diff(pieces.sample_bounds).max(initial=0), 1), np.float64)
    low, high = int(0.75 * block_size), int(1.25 * block_size)
    clipped = False
    for c in range(pieces.num_parts):
        begin, end = bounds[c], bounds[c + 1]
        if begin == end:
            raise ValueError(
                f"Canonical node {c} gets no samples: the dataset (or a stream) has fewer samples "
                f"than num_canonical_nodes ({pieces.num_parts}). Reduce num_canonical_nodes."
            )
        chosen = spans[pieces.part(c)]
        sizes = pieces.sizes[chosen].tolist()
        _fill_shuffled_spans(ids[begin:end], pieces.begins[chosen].tolist(), sizes, rng)
        if needed is not None and not needed[c]:
            clipped |= _shift_positions(None, sizes, rng, low, high)
            continue
        node_positions = positions[:end - begin]
        clipped |= _shift_positions(node_positions, sizes, rng, low, high)
        local = argsort_positions(node_positions, in_range=True, out=keys[begin:end])
        local += begin
    if clipped:
        warnings.warn(
            "Shuffle block size was smaller than shard size for some shards, so those shards are "
            "not shuffled with other shards. Set shuffle_block_size higher for a better shuffle.",
            stacklevel=2,
        )
    return ids, keys.view(np.int64)


def _fill_shuffled_spans(node: np.ndarray, begins: list[int], sizes: list[int],
                         rng: np.random.Generator) -> None:
    """Write each span's sample ids into ``node`` and shuffle them, span by span (cache-hot)."""
    offset = 0
    for begin, size in zip(begins, sizes):
        span = node[offset:offset + size]
        span[:] = np.arange(begin, begin + size, dtype=np.int64)
        if size > 1:
            rng.shuffle(span)
        offset += size


def _shift_positions(positions: np.ndarray | None, sizes: list[int], rng: np.random.Generator,
                     low: int, high: int) -> bool:
    """Add each span's uniform shifts to ``positions`` (or only draw them when it is None).

    Returns:
        Whether some span was larger than its random block, so its shifts were clipped to 0.
    """
    total = sum(sizes)
    offset = 0
    clipped = False
    for size in sizes:
        block = int(rng.integers(low, high))
        cutoff: float = (block - size) / 2
        if cutoff < 0:
            cutoff = 0
            clipped = True
        # Same bounds as the reference: never leave this canonical node's range.
        lower = max(-cutoff, -offset)
        upper = min(cutoff, total - offset - size)
        if positions is None:
            _skip_uniforms(rng, size)
        else:
            # Same sum as the reference's ``arange(n).astype(float64)[span] += shifts``.
            np.add(rng.uniform(lower, upper, size),
                   np.arange(offset, offset + size, dtype=np.float64),
                   out=positions[offset:offset + size])
        offset += size
    return clipped


def _skip_uniforms(rng: np.random.Generator, count: int) -> None:
    """Advance ``rng`` exactly as ``rng.uniform(size=count)`` would, without making the values."""
    bits = rng.bit_generator
    if count < 4096 or not isinstance(bits, np.random.PCG64):
        rng.uniform(0.0, 1.0, count)
        return
    # One double is one 64-bit step of PCG64. ``advance`` also clears the buffered 32-bit half
    # that integer draws may have left behind, so put it back.
    state = bits.state
    bits.advance(count)
    if state["has_uint32"]:
        after = bits.state
        after["has_uint32"], after["uinteger"] = state["has_uint32"], state["uinteger"]
        bits.state = after
