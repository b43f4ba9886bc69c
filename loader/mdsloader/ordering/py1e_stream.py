"""``py1e`` produced window by window: the same permutation, without building the epoch.

``py1e`` (see :mod:`mdsloader.ordering.py1e`) gives every sample of a canonical node the float
position ``slot + shift``, with ``|shift|`` bounded by the node's largest span cutoff (``reach``,
about ``0.6 * shuffle_block_size``), and sorts the node by position. So once the spans covering
slots ``[0, S)`` are known, every sample with position below ``S - reach`` is final: no later slot
can sort before it. :class:`Py1eNodeWindow` walks a node that way, holding about ``3 * reach``
samples at a time.

What cannot be local is the random stream: a node draws all its within-span shuffles before the
first shift, so the shifts of span 0 depend on the draws of every span. :func:`replay_py1e` runs
those draws once (the only work proportional to the epoch: under 2 ns per sample with the
compiled helper of :mod:`mdsloader.ordering.shuffle_draws`, about 10 ns with numpy's own shuffle
loop) and records where each span's shuffle and shifts begin (:class:`Py1eReplay`, a few dozen
bytes per span, which :mod:`mdsloader.plan_cache` keeps per node). A window then regenerates
any span from its snapshot, so resuming anywhere costs one window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mdsloader.ordering.argsort import MIN_FRACTION_BITS, sort_by_position
from mdsloader.ordering.arrays import segment_starts
from mdsloader.ordering.py1e import _skip_uniforms
from mdsloader.ordering.rngstate import StateTable
from mdsloader.ordering.shuffle_draws import skip_shuffles
from mdsloader.ordering.spans import Pieces, shuffle_parts

# Smallest step a window advances by: below this numpy's per-call overhead dominates.
_MIN_STEP = 1 << 16


@dataclass(slots=True)
class Py1eReplay:
    """One epoch of ``py1e`` reduced to its spans and the random stream's place at each.

    Spans are listed node by node, each node's in its shuffled order.

    Attributes:
        begins: First (big) sample id of each span.
        sizes: Samples of each span.
        node_spans: ``(C + 1,)`` offsets: node ``c`` owns spans ``node_spans[c:c + 2]`` bounds.
        node_bounds: ``(C + 1,)`` first epoch position of each node, then the epoch size.
        shuffles: Generator snapshot before each span's within-span shuffle.
        shifts: Generator snapshot before each span's uniform shifts (after its block draw).
        lower: Lower bound of each span's shifts.
        upper: Upper bound of each span's shifts.
        clipped: Whether some span was larger than its block (the reference then warns).
    """

    begins: np.ndarray
    sizes: np.ndarray
    node_spans: np.ndarray
    node_bounds: np.ndarray
    shuffles: StateTable
    shifts: StateTable
    lower: np.ndarray
    upper: np.ndarray
    clipped: bool

    @property
    def num_nodes(self) -> int:
        """Canonical nodes."""
        return len(self.node_spans) - 1


def replay_py1e(pieces: Pieces, seed: int, epoch: int, block_size: int) -> Py1eReplay:
    """Consume one epoch's ``py1e`` draws in the reference's order, recording each span's place.

    Args:
        pieces: Shard spans in the run-fixed order, cut per canonical node.
        seed: Run seed.
        epoch: Epoch.
        block_size: Shuffle block size.

    Raises:
        ValueError: If a canonical node gets no samples (fewer samples than canonical nodes).
    """
    rng = np.random.default_rng(seed + epoch)
    order = shuffle_parts(pieces, rng)
    begins, sizes = pieces.begins[order], pieces.sizes[order]
    count = len(sizes)
    shuffles, shifts = StateTable.empty(count, rng), StateTable.empty(count, rng)
    lower, upper = np.zeros(count), np.zeros(count)
    low, high = int(0.75 * block_size), int(1.25 * block_size)
    clipped = False
    bounds = pieces.sample_bounds.tolist()
    for c in range(pieces.num_parts):
        if bounds[c] == bounds[c + 1]:
            raise ValueError(
                f"Canonical node {c} gets no samples. The number of samples assigned to a "
                "canonical node is 0: the dataset (or a stream) has fewer samples than "
                f"num_canonical_nodes ({pieces.num_parts}). Reduce num_canonical_nodes."
            )
        part = range(int(pieces.part_bounds[c]), int(pieces.part_bounds[c + 1]))
        # The shuffles only have to advance the generator (the windows redo the spans they need).
        skip_shuffles(rng, sizes[part.start:part.stop], shuffles, part.start)
        node_sizes = sizes[part.start:part.stop].tolist()
        total, offset = bounds[c + 1] - bounds[c], 0
        for j, size in zip(part, node_sizes):
            block = int(rng.integers(low, high))
            shifts.save(j, rng)
            cutoff: float = (block - size) / 2
            if cutoff < 0:
                cutoff, clipped = 0, True
            # The reference's bounds: a span never leaves its canonical node.
            lower[j] = max(-cutoff, -offset)
            upper[j] = min(cutoff, total - offset - size)
            _skip_uniforms(rng, size)
            offset += size
    return Py1eReplay(begins, sizes, pieces.part_bounds.copy(), pieces.sample_bounds.copy(),
                      shuffles, shifts, lower, upper, clipped)


@dataclass(slots=True)
class NodeSpans:
    """One canonical node's spans, in its shuffled order, and where their samples can sort.

    Attributes:
        first: Index of the node's first span in the replay.
        begins: First (big) sample id of each span.
        sizes: Samples of each span.
        slots: Node-local slot of each span's first sample.
        lower: Lower bound of each span's shifts.
        upper: Upper bound of each span's shifts.
        size: Samples of the node.
        reach: No shift goes further: samples of slots >= S sit at or after S - reach.
        floor: The earliest position any sample of spans j.. can take (non-decreasing in j).
        ceiling: The latest position any sample of spans ..j can take (non-decreasing in j).
            Both are exact bounds, tighter than ``slot -+ reach``.
    """

    first: int
    begins: np.ndarray
    sizes: np.ndarray
    slots: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    size: int
    reach: float
    floor: np.ndarray
    ceiling: np.ndarray

    @classmethod
    def of(cls, replay: Py1eReplay, node: int) -> NodeSpans:
        """Node ``node`` of ``replay``."""
        lo, hi = int(replay.node_spans[node]), int(replay.node_spans[node + 1])
        sizes = np.ascontiguousarray(replay.sizes[lo:hi], np.int64)
        slots = np.ascontiguousarray(segment_starts(sizes), np.int64)
        lower = np.ascontiguousarray(replay.lower[lo:hi], np.float64)
        upper = np.ascontiguousarray(replay.upper[lo:hi], np.float64)
        empty = sizes == 0
        earliest = np.where(empty, np.inf, slots + lower)
        latest = np.where(empty, -np.inf, slots + sizes - 1 + upper)
        return cls(
            first=lo,
            begins=np.ascontiguousarray(replay.begins[lo:hi], np.int64),
            sizes=sizes,
            slots=slots,
            lower=lower,
            upper=upper,
            size=int(replay.node_bounds[node + 1] - replay.node_bounds[node]),
            reach=float(max(-lower.min(initial=0.0), upper.max(initial=0.0), 0.0)),
            floor=np.minimum.accumulate(earliest[::-1])[::-1].copy(),
            ceiling=np.maximum.accumulate(latest),
        )


class Py1eNodeWindow:
    """The sorted order of one canonical node, produced front to back (``take`` any range).

    Memory is about ``3 * reach`` samples (positions and ids) plus what was asked for; asking
    for a range far ahead, or behind what is still held, restarts the window there.

    Args:
        replay: The epoch's replay.
        node: The canonical node.
    """

    def __init__(self, replay: Py1eReplay, node: int) -> None:
        spans = NodeSpans.of(replay, node)
        self._replay = replay
        self._first_span = spans.first
        self._begins = spans.begins.tolist()
        self._sizes, self._slots = spans.sizes, spans.slots
        self._size_list = self._sizes.tolist()
        self._slot_list = self._slots.tolist()
        self.size, self.reach = spans.size, spans.reach
        self._lower, self._upper = spans.lower.tolist(), spans.upper.tolist()
        self._floor, self._ceiling = spans.floor, spans.ceiling
        self._step = max(math.ceil(self.reach), _MIN_STEP)
        self._rng = np.random.Generator(np.random.PCG64())
        widest = int(self._sizes.max(initial=0))
        self._counting = np.arange(widest, dtype=np.int64)
        self._counting_float = np.arange(widest, dtype=np.float64)
        self._kept: dict[int, np.ndarray] = {}
        self._restart(0)

    # ---- public ---------------------------------------------------------------------------

    def take(self, lo: int, hi: int) -> np.ndarray:
        """Ids at sorted ranks ``[lo, hi)`` of the node (a view; valid until the next call).

        Ranks before ``lo`` (minus a small margin) are released.
        """
        if not 0 <= lo <= hi <= self.size:
            raise ValueError(f"ranks [{lo}, {hi}) are outside the node's [0, {self.size})")
        if lo < self._out_lo or lo > self._out_hi + 2 * self._step:
            self._restart(lo)
        while self._out_hi < hi:
            self._advance(hi)
        self._out, self._out_lo = release_before(self._out, self._out_lo, lo - _RETAIN)
        return self._out[lo - self._out_lo:hi - self._out_lo]

    # ---- internals ------------------------------------------------------------------------

    @property
    def _out_hi(self) -> int:
        return self._out_lo + self._out.size

    def _restart(self, rank: int) -> None:
        """Start emitting at a threshold whose rank is at most ``rank``, skipping what precedes.

        A threshold ``reach`` before ``rank`` is always early enough but holds a third more than
        needed; so the threshold is first placed just below ``rank`` by counting (positions only,
        no ids, no sort) and corrected by what the count says, falling back to the safe one.
        """
        if self.reach == 0.0:
            # Nothing moves (every span at least its block): restart at the span holding rank.
            first = max(int(np.searchsorted(self._slots, rank, "right")) - 1, 0)
            self._start_empty()
            self._next_span, self._covered = first, self._slot_list[first]
            self._out_lo = self._covered
            return
        threshold = float(rank)
        for _ in range(4):
            if threshold <= 0.0:
                break
            off = self._rank_of(threshold) - rank
            if -_CLOSE <= off <= 0:
                break
            threshold -= off + _CLOSE // 2
        else:
            threshold = rank - self.reach
        if threshold <= 0.0:
            self._start_empty()
        elif self._start_at(threshold) > rank:
            self._start_at(rank - self.reach)
        self._kept.clear()

    def _positions(self, j: int) -> np.ndarray:
        """Span ``j``'s float positions: the reference's ``float(slot) + uniform(lower, upper)``.

        A restart computes them while counting and again when it starts, so they are kept
        until the restart ends.
        """
        kept = self._kept.pop(j, None)
        if kept is not None:
            return kept
        size, slot = self._size_list[j], self._slot_list[j]
        out = np.add(self._counting_float[:size], float(slot))
        lower, upper = self._lower[j], self._upper[j]
        if not lower == upper == 0:
            self._replay.shifts.restore(self._first_span + j, self._rng)
            out += self._rng.uniform(lower, upper, size)
        return out

    def _rank_of(self, threshold: float) -> int:
        """How many samples of the node sort before ``threshold`` (counted, not sorted)."""
        first = self._first_undecided(threshold)
        count = self._slot_list[first]
        for j in range(first, self._cover_span(threshold)):
            if not self._size_list[j]:
                continue
            positions = self._kept[j] = self._positions(j)
            count += int(np.count_nonzero(positions < threshold))
        return count

    def _first_undecided(self, threshold: float) -> int:
        """The first span not wholly before ``threshold`` (every earlier sample sorts before it)."""
        return int(np.searchsorted(self._ceiling, threshold, "left"))

    def _cover_span(self, position: float) -> int:
        """The first span from which on every sample sorts at or after ``position``."""
        return int(np.searchsorted(self._floor, position, "left"))

    def _cover(self, position: float) -> int:
        """The slot up to which spans must be added so that nothing unadded sorts before
        ``position``."""
        span = self._cover_span(position)
        return self._slot_list[span] if span < len(self._slot_list) else self.size

    def _start_empty(self) -> None:
        self._next_span, self._covered = 0, 0
        self._threshold = 0.0
        self._pend_ids = np.empty(0, np.int64)
        self._pend_pos = np.empty(0, np.float64)
        self._out, self._out_lo = np.empty(0, np.int64), 0
        self._fresh, self._grow = True, _MIN_STEP

    def _start_at(self, threshold: float) -> int:
        """Hold everything from ``threshold`` on, nothing before; return the threshold's rank."""
        # Every slot below threshold - reach sorts before the threshold, every slot at or past
        # threshold + reach after it: only the spans in between decide the threshold's rank.
        first = min(self._first_undecided(threshold), len(self._slot_list) - 1)
        self._next_span, self._covered = first, self._slot_list[first]
        ids, pos = self._add_spans(self._cover(threshold))
        before = pos < threshold
        self._out_lo = self._slot_list[first] + int(np.count_nonzero(before))
        self._out = np.empty(0, np.int64)
        self._pend_ids, self._pend_pos = ids[~before], pos[~before]
        self._threshold = threshold
        self._fresh, self._grow = True, _MIN_STEP
        self._emit()
        return self._out_lo

    def _advance(self, wanted: int) -> None:
        """Add spans so that ranks up to about ``wanted`` are final.

        After a (re)start only what ``wanted`` needs is added, for a quick first answer; later
        advances add at least a step, so each pending sample is scanned a few times at most.
        """
        target = self._cover(wanted + _AHEAD)
        if not self._fresh:
            target = max(target, self._covered + self._grow)
            # Steps grow from small to ``reach``: the first chunks, while the consumer is busy
            # with its first batches, stay cheap.
            self._grow = min(2 * self._grow, self._step)
        self._fresh = False
        if self.reach == 0.0:  # slot order is the order: no positions, no sort
            ids, _ = self._add_spans(min(self.size, target), positions=False)
            self._out = np.concatenate([self._out, ids]) if self._out.size else ids
            return
        ids, pos = self._add_spans(min(self.size, target))
        if self._pend_ids.size:
            self._pend_ids = np.concatenate([self._pend_ids, ids])
            self._pend_pos = np.concatenate([self._pend_pos, pos])
        else:  # no copy (fresh large arrays cost page faults)
            self._pend_ids, self._pend_pos = ids, pos
        self._emit()

    def _emit(self) -> None:
        """Move every pending sample that is now final, in order, to the output."""
        done = self._covered >= self.size
        limit = math.inf if done else float(self._floor[self._next_span])
        if limit <= self._threshold and not done:
            return
        if done:  # everything left is final: no split
            ids, pos = self._pend_ids, self._pend_pos
            self._pend_ids, self._pend_pos = ids[:0], pos[:0]
        else:
            final = self._pend_pos < limit
            ids, pos = self._pend_ids[final], self._pend_pos[final]
            keep = ~final
            self._pend_ids, self._pend_pos = self._pend_ids[keep], self._pend_pos[keep]
        ordered = _sorted_by_position(ids, pos, math.floor(self._threshold))
        self._out = np.concatenate([self._out, ordered]) if self._out.size else ordered
        self._threshold = limit

    def _add_spans(self, target: int,
                   positions: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Regenerate the next spans until slots ``[.., target)`` are covered: ids and positions
        (an empty array for the positions when ``positions`` is False)."""
        stop = self._next_span
        while stop < len(self._size_list) and self._slot_list[stop] < target:
            stop += 1
        first = self._next_span
        count = sum(self._size_list[first:stop])
        ids = np.empty(count, np.int64)
        pos = np.empty(count if positions else 0, np.float64)
        offset = 0
        rng, replay = self._rng, self._replay
        for j in range(first, stop):
            size = self._size_list[j]
            if not size:
                continue
            span = ids[offset:offset + size]
            replay.shuffles.restore(self._first_span + j, rng)
            # Shuffled as int64, which numpy's shuffle special-cases (faster than int32 here).
            np.add(self._counting[:size], self._begins[j], out=span)
            if size > 1:
                rng.shuffle(span)
            if positions:
                pos[offset:offset + size] = self._positions(j)
            offset += size
        self._next_span = stop
        self._covered = self._slot_list[stop] if stop < len(self._slot_list) else self.size
        return ids, pos


# Positions past the wanted rank that an advance makes final (a rank strays from its position by
# tens of thousands at default block sizes; a shortfall costs another advance).
_AHEAD = 1 << 15
# How far below the wanted rank a restart may begin (a few samples decoded for nothing).
_CLOSE = 1 << 12
# Ranks kept behind the last request: consumers step back a little near a node's end (padding
# repeats earlier columns); further back restarts the window.
_RETAIN = 1 << 12


def release_before(out: np.ndarray, out_lo: int, keep: int) -> tuple[np.ndarray, int]:
    """``out`` (ranks from ``out_lo``) without the ranks before ``keep``, once they are half of it.

    Copying only then keeps the cost per rank constant while memory stays bounded.
    """
    keep = max(keep, out_lo)
    if keep - out_lo > out.size // 2:
        return out[keep - out_lo:].copy(), keep
    return out, out_lo


def _sorted_by_position(ids: np.ndarray, positions: np.ndarray, base: int) -> np.ndarray:
    """``ids`` ordered by ``positions`` (all ``>= base``); equal positions keep their order."""
    count = ids.size
    if count < 2:
        return ids.copy()
    relative = positions - base
    extent = float(relative.max()) + 1.0
    position_bits = max(math.ceil(extent).bit_length(), 1)
    index_bits = max(int(count - 1).bit_length(), 1)
    if 64 - position_bits - index_bits < MIN_FRACTION_BITS:
        return ids[np.argsort(relative, kind="stable")]
    keys = np.empty(count, np.uint64)
    sort_by_position(relative, np.arange(count, dtype=np.int64), index_bits,
                     relative.__getitem__, keys, position_bits=position_bits)
    return ids[keys.view(np.int64)]
