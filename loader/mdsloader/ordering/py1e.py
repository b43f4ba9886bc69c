"""The ``py1e`` shuffle: spans spread over a window of about one shuffle block.

Per canonical node (mds-format.md 3.5): shuffle the node's span order, shuffle samples within each
span, give every sample a float position (its slot plus a uniform shift bounded by the span's random
block size and the node's ends) and sort the node by position. The draws are the reference's, call
for call; the sort packs (position, sample id) into uint64 keys (:func:`sort_by_position`), several
times faster than ``np.argsort`` and with no gather afterwards.
"""

from __future__ import annotations

import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial

import numpy as np

from mdsloader.ordering.argsort import MIN_FRACTION_BITS, fraction_bits, sort_by_position
from mdsloader.ordering.arrays import NARROW_SHUFFLE_MIN, shuffled_range
from mdsloader.ordering.spans import Pieces, shuffle_parts

# Canonical nodes smaller than this are sorted inline: a thread hand-off would cost more.
_PIPELINE_MIN = 1 << 16


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
    return py1e_order(pieces, seed, epoch, block_size)


def py1e_order(pieces: Pieces, seed: int, epoch: int, block_size: int,
               needed: np.ndarray | None = None) -> np.ndarray:
    """``py1e``, optionally sorting only the canonical nodes a worker reads from.

    Args:
        pieces: Shard spans in the run-fixed order, cut per canonical node.
        seed: Run seed.
        epoch: Epoch.
        block_size: Shuffle block size.
        needed: Optional boolean mask over canonical nodes. Nodes not needed consume exactly the
            same random draws but are not sorted, and their part of the result is unspecified.

    Returns:
        The int64 permutation: the sample id at every position of the epoch.

    Raises:
        ValueError: If a canonical node gets no samples (fewer samples than canonical nodes).
    """
    perm, clipped = py1e_order_quiet(pieces, seed, epoch, block_size, needed)
    if clipped:
        warn_clipped(stacklevel=3)
    return perm


def warn_clipped(stacklevel: int) -> None:
    """The reference's warning for shards larger than their shuffle block."""
    warnings.warn(
        "Shuffle block size was smaller than shard size for some shards, so those shards are "
        "not shuffled with other shards. Set shuffle_block_size higher for a better shuffle.",
        stacklevel=stacklevel,
    )


def py1e_order_quiet(pieces: Pieces, seed: int, epoch: int, block_size: int,
                     needed: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """:func:`py1e_order` without its warning (for a helper thread): ``(perm, clipped)``.

    ``clipped`` says whether :func:`warn_clipped` is due.
    """
    rng = np.random.default_rng(seed + epoch)
    spans = shuffle_parts(pieces, rng)
    bounds = pieces.sample_bounds.tolist()
    perm = np.empty(bounds[-1], np.int64)
    widest = max(int(np.diff(pieces.sample_bounds).max(initial=0)), 1)
    id_bits = max(int(bounds[-1] - 1).bit_length(), 1)
    low, high = int(0.75 * block_size), int(1.25 * block_size)
    clipped = False
    with _NodeSorter(widest, id_bits, pipelined=pieces.num_parts > 1) as sorter:
        for c in range(pieces.num_parts):
            begin, end = bounds[c], bounds[c + 1]
            if begin == end:
                raise ValueError(
                    f"Canonical node {c} gets no samples. The number of samples assigned to a "
                    "canonical node is 0: the dataset (or a stream) has fewer samples than "
                    f"num_canonical_nodes ({pieces.num_parts}). Reduce num_canonical_nodes."
                )
            chosen = spans[pieces.part(c)]
            begins, sizes = pieces.begins[chosen], pieces.sizes[chosen]
            if sizes[sizes > 0].min() >= high:
                # Every span exceeds any block it can draw, so none shifts (see below): the
                # node's order is its shuffled spans as they are, written straight into ``perm``.
                _fill_shuffled_spans(perm[begin:end], begins.tolist(), sizes.tolist(), rng)
                clipped |= _shift_positions(None, sizes.tolist(), rng, low, high)[0]
                continue
            node_ids, node_positions = sorter.scratch(end - begin)
            _fill_shuffled_spans(node_ids, begins.tolist(), sizes.tolist(), rng)
            if needed is not None and not needed[c]:
                clipped |= _shift_positions(None, sizes.tolist(), rng, low, high)[0]
                continue
            node_clipped, shifted = _shift_positions(node_positions, sizes.tolist(), rng, low, high)
            clipped |= node_clipped
            if not shifted:
                # Every position is its slot, so the stable sort is the identity.
                perm[begin:end] = node_ids
                continue
            sorter.submit(node_positions, node_ids, _SpanLookup(node_ids, begins, sizes),
                          perm[begin:end])
    return perm, clipped


class _NodeSorter:
    """Sorts canonical nodes, each sort overlapping the next node's random draws.

    numpy releases the GIL in both its sort and its shuffles, so a helper thread sorting node ``c``
    while the caller replays node ``c + 1``'s draws cuts the wall time. Two scratch sets alternate
    so that the node being sorted is never overwritten. Results are the same either way.
    """

    def __init__(self, widest: int, id_bits: int, *, pipelined: bool) -> None:
        pipelined = pipelined and widest >= _PIPELINE_MIN
        self._sets = [(np.empty(widest, np.int64), np.empty(widest, np.float64))
                      for _ in range(2 if pipelined else 1)]
        self._id_bits = id_bits
        self._turn = 0
        self._pool = ThreadPoolExecutor(1, "mdsloader-py1e") if pipelined else None
        self._pending: Future[None] | None = None

    def scratch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The (ids, positions) buffers to fill for the next node."""
        ids, positions = self._sets[self._turn % len(self._sets)]
        return ids[:size], positions[:size]

    def submit(self, positions: np.ndarray, ids: np.ndarray, lookup: _SpanLookup,
               out: np.ndarray) -> None:
        """Sort a filled node into ``out`` (now, or in the helper thread)."""
        job = partial(_sort_node, positions, ids, lookup, self._id_bits, out)
        if self._pool is None:
            job()
        else:
            self._wait()
            self._pending = self._pool.submit(job)
        self._turn += 1

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> _NodeSorter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown()


def _sort_node(positions: np.ndarray, ids: np.ndarray, lookup: _SpanLookup, id_bits: int,
               out: np.ndarray) -> None:
    """Write one canonical node's ids in position order into ``out``."""
    if fraction_bits(positions.size, id_bits) < MIN_FRACTION_BITS:
        out[:] = ids[np.argsort(positions, kind="stable")]
        return
    # The sample ids ride in the sort keys, so the sorted keys are the answer: no gather.
    sort_by_position(positions, ids, id_bits, lambda x: positions[lookup.local_index(x)],
                     out.view(np.uint64))


class _SpanLookup:
    """Finds where given sample ids sit in a node's span-shuffled id array (for collisions)."""

    def __init__(self, ids: np.ndarray, begins: np.ndarray, sizes: np.ndarray) -> None:
        offsets = np.cumsum(sizes) - sizes
        keep = sizes > 0
        by_id = np.argsort(begins[keep], kind="stable")
        self._ids = ids
        self._begins = begins[keep][by_id]
        self._offsets = offsets[keep][by_id]
        self._sizes = sizes[keep][by_id]

    def local_index(self, wanted: np.ndarray) -> np.ndarray:
        """Index into ``ids`` of every wanted id (each must be present)."""
        span = np.searchsorted(self._begins, wanted, "right") - 1
        found = np.empty(wanted.size, np.int64)
        for one in np.unique(span).tolist():
            begin, offset, size = (int(a[one]) for a in (self._begins, self._offsets, self._sizes))
            # Invert this span's shuffle once, then read every wanted id of the span from it.
            inverse = np.empty(size, np.int64)
            inverse[self._ids[offset:offset + size] - begin] = np.arange(size, dtype=np.int64)
            hit = span == one
            found[hit] = offset + inverse[wanted[hit] - begin]
        return found


def _fill_shuffled_spans(node: np.ndarray, begins: list[int], sizes: list[int],
                         rng: np.random.Generator) -> None:
    """Write each span's sample ids into ``node`` and shuffle them, span by span (cache-hot)."""
    counting = np.arange(min(max(sizes, default=0), NARROW_SHUFFLE_MIN), dtype=np.int64)
    offset = 0
    for begin, size in zip(begins, sizes):
        span = node[offset:offset + size]
        if size >= NARROW_SHUFFLE_MIN:
            shuffled_range(span, begin, rng)
        else:
            np.add(counting[:size], begin, out=span)
            if size > 1:
                rng.shuffle(span)
        offset += size


def _shift_positions(positions: np.ndarray | None, sizes: list[int], rng: np.random.Generator,
                     low: int, high: int) -> tuple[bool, bool]:
    """Add each span's uniform shifts to ``positions`` (or only draw them when it is None).

    A span whose shift bounds are both 0 (larger than its block, or alone in its node) only
    advances ``rng``: its shifts are all exactly 0. ``positions`` is filled with the slot numbers
    only once some span really shifts, so a node where none does costs no pass over it.

    Returns:
        Whether some span was larger than its random block, so its shifts were clipped to 0,
        and whether ``positions`` was filled (False: every position equals its slot).
    """
    total = sum(sizes)
    offset = 0
    clipped = shifted = False
    for size in sizes:
        block = int(rng.integers(low, high))
        cutoff: float = (block - size) / 2
        if cutoff < 0:
            cutoff = 0
            clipped = True
        # Same bounds as the reference: never leave this canonical node's range.
        lower = max(-cutoff, -offset)
        upper = min(cutoff, total - offset - size)
        if positions is None or lower == upper == 0:
            # uniform(0, 0) is 0 + 0 * u == 0 exactly: skip the draws, add nothing.
            _skip_uniforms(rng, size)
        else:
            if not shifted:
                _fill_counting(positions)
                shifted = True
            # The reference's ``arange(n).astype(float64)[span] += shifts``, the same sum.
            positions[offset:offset + size] += rng.uniform(lower, upper, size)
        offset += size
    return clipped, shifted


def _fill_counting(values: np.ndarray, chunk: int = 1 << 16) -> None:
    """``values[:] = arange(len(values))`` as floats, without a full-size temporary."""
    counting = np.arange(min(chunk, values.size), dtype=np.float64)
    for begin in range(0, values.size, chunk):
        end = min(begin + chunk, values.size)
        np.add(counting[:end - begin], begin, out=values[begin:end])


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
