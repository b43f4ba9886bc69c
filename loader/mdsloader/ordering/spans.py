"""Shard spans for the shuffles: the run-fixed shard order and its cut at canonical-node bounds.

The shuffles lay the shards out in an order that is fixed for the whole run, then cut that layout
into ``num_canonical_nodes`` consecutive parts of ``N*(c+1)//C - N*c//C`` samples, splitting a shard
where a boundary falls inside it. This module does that cut with array operations instead of the
reference's span-by-span loop, including its placement of empty shards (an empty shard belongs to
the first part whose end is at or after its position).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdsloader.ordering.arrays import segment_starts, sorted_unique


@dataclass(frozen=True, slots=True)
class Pieces:
    """Shard parts after cutting a layout at canonical-node boundaries, in layout order.

    Attributes:
        begins: First value (a sample id, or a layout position) of each piece.
        sizes: Length of each piece; empty shards stay as empty pieces.
        part_bounds: ``(num_parts + 1,)`` offsets into the pieces: part ``c`` owns pieces
            ``[part_bounds[c], part_bounds[c + 1])``.
        sample_bounds: ``(num_parts + 1,)`` first layout position of each part, then the total.
    """

    begins: np.ndarray
    sizes: np.ndarray
    part_bounds: np.ndarray
    sample_bounds: np.ndarray

    @property
    def num_parts(self) -> int:
        """Number of parts (canonical nodes)."""
        return len(self.part_bounds) - 1

    def part(self, index: int) -> slice:
        """Slice of the pieces that belong to part ``index``."""
        return slice(int(self.part_bounds[index]), int(self.part_bounds[index + 1]))


def shard_offsets(shard_sizes: np.ndarray) -> np.ndarray:
    """First global sample id of every shard."""
    return segment_starts(shard_sizes)


def fixed_shard_order(num_shards: int, seed: int) -> np.ndarray:
    """The run-fixed shard order: ``default_rng(seed)`` shuffling the shard list."""
    order = np.arange(num_shards, dtype=np.int64)
    np.random.default_rng(seed).shuffle(order)
    return order


def cut_pieces(begins: np.ndarray, sizes: np.ndarray, num_parts: int) -> Pieces:
    """Cut consecutive spans into pieces at the part boundaries ``total*(c+1)//num_parts``.

    Args:
        begins: First value of each span (carried into its pieces, offset by the cut).
        sizes: Length of each span, laid out back to back.
        num_parts: Number of parts (canonical nodes).

    Returns:
        The pieces, grouped by part, in layout order.
    """
    begins = np.asarray(begins, np.int64)
    sizes = np.asarray(sizes, np.int64)
    starts = segment_starts(sizes)
    ends = starts + sizes
    total = int(sizes.sum())
    sample_bounds = np.array([total * c // num_parts for c in range(num_parts + 1)], np.int64)
    # Boundaries strictly inside a span cut it; equal boundaries (empty parts) cut only once.
    cuts = sorted_unique(sample_bounds[1:-1])
    first_cut = np.searchsorted(cuts, starts, "right")
    num_cuts = np.maximum(np.searchsorted(cuts, ends, "left") - first_cut, 0)
    per_span = num_cuts + 1
    span = np.repeat(np.arange(len(sizes), dtype=np.int64), per_span)
    first_piece = segment_starts(per_span)
    within = np.arange(len(span), dtype=np.int64) - first_piece[span]
    padded_cuts = np.append(cuts, 0)
    piece_start = np.where(
        within == 0, starts[span], padded_cuts[np.maximum(first_cut[span] + within - 1, 0)]
    )
    piece_end = np.empty_like(piece_start)
    piece_end[:-1] = piece_start[1:]
    piece_end[first_piece + per_span - 1] = ends
    piece_size = piece_end - piece_start
    # A non-empty piece lies in the last part starting at or before it; an empty one in the first
    # part ending at or after it (where the reference's loop is when it reaches it).
    part = np.where(
        piece_size > 0,
        np.searchsorted(sample_bounds, piece_start, "right") - 1,
        np.searchsorted(sample_bounds[1:], piece_start, "left"),
    )
    counts = np.bincount(part, minlength=num_parts)
    part_bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Pieces(
        begins=begins[span] + (piece_start - starts[span]),
        sizes=piece_size,
        part_bounds=part_bounds,
        sample_bounds=sample_bounds,
    )


def shuffle_parts(pieces: Pieces, rng: np.random.Generator) -> np.ndarray:
    """Shuffle the piece order within every part with ``rng`` (one list shuffle per part).

    Returns:
        Piece indices in the new layout order.
    """
    order = np.arange(len(pieces.sizes), dtype=np.int64)
    for c in range(pieces.num_parts):
        shuffle_part(order, pieces.part(c), rng)
    return order


def shuffle_part(order: np.ndarray, part: slice, rng: np.random.Generator) -> None:
    """Shuffle one part's slice of ``order`` in place; short parts draw nothing, as in numpy."""
    if part.stop - part.start > 1:
        rng.shuffle(order[part])
