"""Epoch shuffles of the global sample order: ``py1e``, ``py1br``, ``py1s``, ``py2s``, ``naive``.

Each returns the same permutation as the reference's algorithm of that name (mds-format.md 3.5):
the random draws are the same numpy ``default_rng`` calls in the same order, and everything between
them (span bookkeeping, layout, block bounds) is done with array operations. Within-span shuffles
stay one ``Generator.shuffle`` call per span because their draws are data dependent (rejection
sampling), so no vectorised form can reproduce them.
"""

from __future__ import annotations

import numpy as np

from mdsloader.ordering.arrays import concat_ranges, segment_starts, shuffled_range
from mdsloader.ordering.py1e import shuffle_py1e
from mdsloader.ordering.spans import (
    Pieces,
    cut_pieces,
    fixed_shard_order,
    shard_offsets,
    shuffle_part,
    shuffle_parts,
)

SHUFFLE_ALGOS = ("py1e", "py1br", "py1s", "py2s", "naive")


def get_shuffle(
    algo: str,
    shard_sizes: np.ndarray,
    num_canonical_nodes: int,
    seed: int,
    epoch: int,
    block_size: int = 1 << 18,
) -> np.ndarray:
    """Get the shuffled global order of an epoch's samples.

    Same result as the reference's ``streaming.base.shuffle.get_shuffle``.

    Args:
        algo: One of ``py1e``, ``py1br``, ``py1s``, ``py2s``, ``naive``.
        shard_sizes: Samples per shard (or per shuffle unit), in order.
        num_canonical_nodes: Canonical node count.
        seed: Run seed (``shuffle_seed``); the shard order is fixed by it for the whole run.
        epoch: Epoch, added to the seed for the per-epoch draws.
        block_size: Shuffle block size (``py1e``, ``py1br``).

    Returns:
        An int64 array ``perm`` of length ``sum(shard_sizes)``: position i of the epoch holds
        sample ``perm[i]``.

    Raises:
        ValueError: On an unknown algorithm or invalid numbers, or (``py1e``) a canonical node
            that gets no samples.
    """
    sizes = validate_shuffle_args(algo, shard_sizes, num_canonical_nodes, seed, epoch, block_size)
    return _ALGOS[algo](sizes, int(num_canonical_nodes), int(seed), int(epoch), int(block_size))


def validate_shuffle_args(algo: str, shard_sizes: np.ndarray, num_canonical_nodes: int,
                          seed: int, epoch: int, block_size: int) -> np.ndarray:
    """Check shuffle arguments and return the shard sizes as int64.

    Raises:
        ValueError: Naming the offending parameter.
    """
    if algo not in _ALGOS:
        raise ValueError(f"`shuffle_algo` must be one of {SHUFFLE_ALGOS}, got {algo!r}")
    if num_canonical_nodes < 1:
        raise ValueError(f"`num_canonical_nodes` must be positive, got {num_canonical_nodes}")
    if seed < 0:
        raise ValueError(f"`shuffle_seed` must be non-negative, got {seed}")
    if epoch < 0:
        raise ValueError(f"`epoch` must be non-negative, got {epoch}")
    if block_size < 1:
        raise ValueError(f"`shuffle_block_size` must be positive, got {block_size}")
    sizes = np.asarray(shard_sizes, np.int64).reshape(-1)
    if (sizes < 0).any():
        raise ValueError("`shard_sizes` must be non-negative")
    return sizes


def fixed_pieces(sizes: np.ndarray, num_canonical_nodes: int, seed: int) -> Pieces:
    """Shards in the run-fixed order, cut at canonical-node boundaries (py1s/py1br/py1e)."""
    order = fixed_shard_order(len(sizes), seed)
    return cut_pieces(shard_offsets(sizes)[order], sizes[order], num_canonical_nodes)


def shuffle_segments(values: np.ndarray, sizes: np.ndarray, rng: np.random.Generator,
                     offset: int = 0) -> None:
    """Shuffle consecutive segments of ``values`` in place, one ``rng.shuffle`` per segment."""
    ends = np.cumsum(sizes) + offset
    begins = ends - sizes
    # Segments of 0 or 1 element draw nothing in numpy, so skipping them keeps the stream equal.
    for begin, end in zip(begins[sizes > 1].tolist(), ends[sizes > 1].tolist()):
        rng.shuffle(values[begin:end])


def shuffle_naive(sizes: np.ndarray, ncn: int, seed: int, epoch: int, block: int) -> np.ndarray:
    """All-to-all permutation (``Generator.permutation``'s, built by :func:`shuffled_range`)."""
    out = np.empty(int(sizes.sum()), np.int64)
    shuffled_range(out, 0, np.random.default_rng(seed + epoch))
    return out


def shuffle_py1s(sizes: np.ndarray, ncn: int, seed: int, epoch: int, block: int) -> np.ndarray:
    """Shuffle spans within each canonical node, then samples within each span."""
    pieces = fixed_pieces(sizes, ncn, seed)
    rng = np.random.default_rng(seed + epoch)
    order = shuffle_parts(pieces, rng)
    ids = concat_ranges(pieces.begins[order], pieces.sizes[order])
    shuffle_segments(ids, pieces.sizes[order], rng)
    return ids


def shuffle_py2s(sizes: np.ndarray, ncn: int, seed: int, epoch: int, block: int) -> np.ndarray:
    """Like py1s, but each shard's samples are also shuffled once (run-fixed) before the cut."""
    fixed = np.random.default_rng(seed)
    shard_order = np.arange(len(sizes), dtype=np.int64)
    if len(sizes) > 1:
        fixed.shuffle(shard_order)
    ordered = sizes[shard_order]
    layout = concat_ranges(shard_offsets(sizes)[shard_order], ordered)
    shuffle_segments(layout, ordered, fixed)
    pieces = cut_pieces(segment_starts(ordered), ordered, ncn)
    rng = np.random.default_rng(seed + epoch)
    out = np.empty(len(layout), np.int64)
    order = np.arange(len(pieces.sizes), dtype=np.int64)
    for c in range(ncn):
        # The reference shuffles a part's piece list and then its pieces before the next part.
        part = pieces.part(c)
        shuffle_part(order, part, rng)
        begin, end = pieces.sample_bounds[c], pieces.sample_bounds[c + 1]
        chosen = order[part]
        out[begin:end] = layout[concat_ranges(pieces.begins[chosen], pieces.sizes[chosen])]
        shuffle_segments(out, pieces.sizes[chosen], rng, offset=int(begin))
    return out


def shuffle_py1br(sizes: np.ndarray, ncn: int, seed: int, epoch: int, block: int) -> np.ndarray:
    """Shuffle within randomly sized, per-node staggered blocks of the span layout."""
    pieces = fixed_pieces(sizes, ncn, seed)
    rng = np.random.default_rng(seed + epoch)
    order = shuffle_parts(pieces, rng)
    ids = concat_ranges(pieces.begins[order], pieces.sizes[order])
    low, high = int(0.75 * block), int(1.25 * block)
    stagger = rng.integers(0, low, (ncn,))
    for c in range(ncn):
        begin, end = int(pieces.sample_bounds[c]), int(pieces.sample_bounds[c + 1])
        for start, stop in _staggered_blocks(begin, end, int(stagger[c]), low, high, rng):
            rng.shuffle(ids[start:stop])
    return ids


def _staggered_blocks(begin: int, end: int, stagger: int, low: int, high: int,
                      rng: np.random.Generator) -> list[tuple[int, int]]:
    """Block bounds of one canonical node; all block sizes are drawn before any block shuffles."""
    blocks = []
    cursor = begin
    while cursor < end:
        size = int(rng.integers(low, high))
        start = max(cursor - stagger, begin)
        stop = min(cursor + size - stagger, end)
        blocks.append((start, stop))
        cursor += stop - start
    return blocks


def _py1e(sizes: np.ndarray, ncn: int, seed: int, epoch: int, block: int) -> np.ndarray:
    return shuffle_py1e(fixed_pieces(sizes, ncn, seed), seed, epoch, block)


_ALGOS = {
    "py1e": _py1e,
    "py1br": shuffle_py1br,
    "py1s": shuffle_py1s,
    "py2s": shuffle_py2s,
    "naive": shuffle_naive,
}
