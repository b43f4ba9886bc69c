"""``py1e`` produced band by band of positions, with the compiled span regeneration.

The same sorted order of a canonical node as :class:`~mdsloader.ordering.py1e_stream.
Py1eNodeWindow`, by another route. A sample's position ``slot + shift`` lies within ``reach`` of
its slot, so the samples with positions in a band ``[a, b)`` all come from the spans whose
position range meets the band. :func:`collect_band` (compiled, see ``_shuffle_draws.c``)
regenerates those spans from the replay's snapshots, shuffles and shifts included, and keeps only
the band's samples, and counts those below ``a``; sorting the band gives ranks ``rank(a) ..`` in
order. Nothing is held between bands but the output.

What this buys is a first answer in time proportional to the spans around the wanted rank, not
to a sorted window of ``3 * reach`` samples: a band can be as narrow as the first chunk, and a
resume starts with a band a little below the wanted rank, whose own pass counts where it stands
(a second band only in the rare case that it started too high). Bands then widen to
``2 * reach``, where regenerating the straddling spans costs about as much per sample as the
window's masking did.
"""

from __future__ import annotations

import math

import numpy as np

from mdsloader.ordering.py1e_stream import (
    NodeSpans,
    Py1eNodeWindow,
    Py1eReplay,
    _sorted_by_position,
    release_before,
)

try:
    from mdsloader.ordering._shuffle_draws import collect_band
except ImportError:  # built without a C compiler: the numpy window is used instead
    collect_band = None

# The first band after a (re)start covers what was asked for plus this many positions; later
# bands grow by _GROWTH each, up to 2 * reach (and at least _MIN_WIDEST).
_FIRST_EXTRA = 1 << 13
_GROWTH = 4
_MIN_WIDEST = 1 << 16
# How close below the wanted rank a restart's band begins (a few ranks sorted for nothing).
_CLOSE = 1 << 12
# Ranks kept behind the last request (consumers step back a little near a node's end).
_RETAIN = 1 << 12


def band_window_available() -> bool:
    """Whether the compiled regeneration (and so :class:`Py1eBandWindow`) is available."""
    return collect_band is not None


def node_window(replay: Py1eReplay, node: int) -> Py1eBandWindow | Py1eNodeWindow:
    """The fastest producer of a node's sorted order here: bands when compiled, else windows.

    Both give the same ids for every rank (``tests/ordering/test_streamed_plan.py`` runs both).
    """
    if band_window_available():
        return Py1eBandWindow(replay, node)
    return Py1eNodeWindow(replay, node)


class Py1eBandWindow:
    """The sorted order of one canonical node, produced band by band (``take`` any range).

    Args:
        replay: The epoch's replay.
        node: The canonical node.
    """

    def __init__(self, replay: Py1eReplay, node: int) -> None:
        if collect_band is None:
            raise RuntimeError("mdsloader.ordering._shuffle_draws is not built")
        spans = NodeSpans.of(replay, node)
        lo, hi = spans.first, spans.first + len(spans.sizes)
        self._inc = replay.shuffles.inc
        self._shuffles = (replay.shuffles.high[lo:hi], replay.shuffles.low[lo:hi],
                          replay.shuffles.has_half[lo:hi], replay.shuffles.half[lo:hi])
        self._shifts = (replay.shifts.high[lo:hi], replay.shifts.low[lo:hi])
        self._begins, self._sizes, self._slots = spans.begins, spans.sizes, spans.slots
        self._lower, self._upper = spans.lower, spans.upper
        self.size, self.reach = spans.size, spans.reach
        # Spans before first_undecided(a) lie wholly below a, spans from cover(b) on wholly at
        # or above b.
        self._floor, self._ceiling = spans.floor, spans.ceiling
        self._slot_list = self._slots.tolist()
        self._widest = max(math.ceil(2 * self.reach), _MIN_WIDEST)
        self._start(0.0, 0)

    # ---- public ---------------------------------------------------------------------------

    def take(self, lo: int, hi: int) -> np.ndarray:
        """Ids at sorted ranks ``[lo, hi)`` of the node (a view; valid until the next call)."""
        if not 0 <= lo <= hi <= self.size:
            raise ValueError(f"ranks [{lo}, {hi}) are outside the node's [0, {self.size})")
        if lo < self._out_lo or lo > self._out_lo + self._out.size + self._widest:
            self._restart(lo, hi)
        while self._out_lo + self._out.size < hi:
            self._next_band(hi)
        self._out, self._out_lo = release_before(self._out, self._out_lo, lo - _RETAIN)
        return self._out[lo - self._out_lo:hi - self._out_lo]

    # ---- internals ------------------------------------------------------------------------

    def _start(self, position: float, rank: int) -> None:
        """Continue from ``position``, whose rank (samples sorting before it) is ``rank``."""
        self._a, self._rank_a = position, rank
        self._out, self._out_lo = np.empty(0, np.int64), rank
        self._width = 0

    def _restart(self, lo: int, hi: int) -> None:
        """Go on from rank ``lo``: one band from a little below it, which also counts its rank.

        The band's start must have a rank of at most ``lo``; a position ``_CLOSE`` below ``lo``
        almost always does (ranks stray from positions by about the square root of the samples
        in reach), and when it does not, the count says by how much to move down.
        """
        if lo == 0:
            self._start(0.0, 0)
            return
        position = float(lo - _CLOSE)
        for _ in range(4):
            if position <= 0.0:
                self._start(0.0, 0)
                return
            width = (hi - lo) + 2 * _CLOSE + _FIRST_EXTRA
            ids, pos, rank = self._collect(position, position + width)
            if rank <= lo:
                break
            position -= (rank - lo) + _CLOSE
        else:
            # Always early enough: a sample below lo - reach has its slot below lo.
            position = lo - self.reach
            if position <= 0.0:
                self._start(0.0, 0)
                return
            width = (hi - lo) + math.ceil(self.reach) + _FIRST_EXTRA
            ids, pos, rank = self._collect(position, position + width)
        self._start(position, rank)
        self._width = width
        self._append(ids, pos, position + width)

    def _spans(self, a: float, b: float) -> tuple[int, int]:
        """The spans whose positions may fall in ``[a, b)``."""
        first = int(np.searchsorted(self._ceiling, a, "left"))
        stop = int(np.searchsorted(self._floor, b, "left"))
        return first, max(first, stop)

    def _collect(self, a: float, b: float) -> tuple[np.ndarray, np.ndarray, int]:
        """Ids and positions in ``[a, b)`` (span order) and the rank of ``a``."""
        first, stop = self._spans(a, b)
        part = slice(first, stop)
        capacity = int(self._sizes[part].sum())
        ids, pos = np.empty(capacity, np.int64), np.empty(capacity, np.float64)
        count, below = collect_band(
            self._inc, *(table[part] for table in self._shuffles),
            *(table[part] for table in self._shifts), self._begins[part], self._sizes[part],
            self._slots[part], self._lower[part], self._upper[part], a, b, ids, pos)
        before = self._slot_list[first] if first < len(self._slot_list) else self.size
        return ids[:count], pos[:count], before + below

    def _next_band(self, wanted: int) -> None:
        """Sort the next band onto the output; it reaches at least toward rank ``wanted``."""
        if self._width == 0:  # first band after a start: just what was asked for, and a bit
            self._width = max(wanted - self._rank_a, 0) + _FIRST_EXTRA
        else:
            self._width = min(self._width * _GROWTH, self._widest)
        b = self._a + self._width
        ids, pos, rank_a = self._collect(self._a, b)
        if rank_a != self._rank_a:
            raise RuntimeError(f"py1e band at {self._a}: rank {rank_a}, expected {self._rank_a}")
        self._append(ids, pos, b)

    def _append(self, ids: np.ndarray, pos: np.ndarray, b: float) -> None:
        """Sort the band ``[self._a, b)`` (its ids and positions) onto the output."""
        if self.reach > 0.0 and ids.size > 1:
            ids = _sorted_by_position(ids, pos, math.floor(self._a))
        # (With nothing moving, span order is position order already.)
        self._out = np.concatenate([self._out, ids]) if self._out.size else ids
        self._a, self._rank_a = b, self._rank_a + ids.size
        if b >= self.size and self._rank_a != self.size:
            raise RuntimeError(f"py1e bands ended at rank {self._rank_a} of {self.size}")
