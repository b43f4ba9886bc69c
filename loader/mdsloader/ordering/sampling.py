"""Stream weighting and per-epoch resampling: how many samples each stream and shard contributes.

Mirrors mds-format.md 3.2 and the reference's ``Stream.apply_weights``, ``get_sampling`` and
``StreamingDataset.resample_streams``: same draws from the same generators, with the bookkeeping
vectorised. Resampling produces "shuffle units" (the resampled shard sizes that the shuffle sees)
and ``small_per_big``, which maps each resampled ("big") sample id to a real global sample id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mdsloader.ordering.arrays import concat_ranges, segment_starts

SAMPLING_METHODS = ("balanced", "fixed")


@dataclass(frozen=True, slots=True, eq=False)
class StreamSpec:
    """What the ordering needs to know about one stream.

    Attributes:
        num_samples: Samples in the stream (``samples_per_shard.sum()``).
        samples_per_shard: Samples of each of the stream's shards, in index order.
        proportion: Relative weight, or None.
        repeat: Multiplier on the stream's size, or None.
        choose: Absolute samples per epoch, or None.
    """

    num_samples: int
    samples_per_shard: np.ndarray
    proportion: float | None = None
    repeat: float | None = None
    choose: int | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("proportion", "repeat", "choose") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(
                f"At most one of `proportion`, `repeat` and `choose` may be set, got {given}"
            )
        for name in given:
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be non-negative, got {getattr(self, name)}")
        sizes = np.asarray(self.samples_per_shard, np.int64).reshape(-1)
        if (sizes < 0).any() or int(sizes.sum()) != self.num_samples:
            raise ValueError(
                f"`samples_per_shard` must be non-negative and sum to `num_samples` "
                f"({self.num_samples}), got a sum of {int(sizes.sum())}"
            )
        object.__setattr__(self, "samples_per_shard", sizes)


def _weighting(streams: Sequence[StreamSpec]) -> tuple[bool, bool]:
    """Return (relative, unspecified) like the reference's ``Stream.validate_weights``."""
    relative = streams[0].proportion is not None
    for index, stream in enumerate(streams):
        if (stream.proportion is not None) != relative:
            raise ValueError(
                "Relative (`proportion`) and absolute (`repeat`, `choose`, none) stream weights "
                f"are incompatible with each other (error in stream {index})"
            )
    unspecified = all(s.proportion is None and s.repeat is None and s.choose is None
                      for s in streams)
    return relative, unspecified


def _spread(epoch_size: int, weights: np.ndarray, seed: int) -> np.ndarray:
    """Split ``epoch_size`` by ``weights``: floor, then hand the shortfall out at random."""
    choose = (epoch_size * (weights / weights.sum())).astype(np.int64)
    shortfall = epoch_size - choose.sum()
    choose[np.random.default_rng(seed).choice(len(weights), shortfall, False)] += 1
    return choose


def resolve_stream_choose(streams: Sequence[StreamSpec], epoch_size: int | None,
                          seed: int) -> list[int]:
    """Samples each stream contributes per epoch (mds-format.md 3.2).

    Args:
        streams: The streams, in order.
        epoch_size: Requested epoch size, or None (0 also means unset, as in the reference).
        seed: ``shuffle_seed``; it decides who gets the rounding shortfall.

    Returns:
        Samples chosen from each stream per epoch; their sum is the epoch size.

    Raises:
        ValueError: On no streams, an empty stream, mixed relative and absolute weights, a
            negative epoch size, proportions summing to 0, or ``epoch_size`` with absolute weights.
    """
    if not streams:
        raise ValueError("`streams` must not be empty")
    for index, stream in enumerate(streams):
        if stream.num_samples <= 0:
            raise ValueError(f"Stream {index} contains no samples")
    if epoch_size is not None and epoch_size < 0:
        raise ValueError(f"`epoch_size` cannot be negative, got {epoch_size}")
    relative, unspecified = _weighting(streams)
    sizes = np.array([s.num_samples for s in streams], np.int64)
    if relative:
        weights = np.array([s.proportion for s in streams], np.float64)
        if not weights.sum() > 0:
            raise ValueError("Stream `proportion`s must not all be 0")
        return _spread(int(epoch_size or sizes.sum()), weights, seed).tolist()
    if unspecified and epoch_size:
        return _spread(int(epoch_size), sizes.astype(np.float64), seed).tolist()
    if epoch_size:
        raise ValueError("`epoch_size` can only be given when streams are weighted relatively "
                         "(by `proportion`) or not at all")
    return [_absolute_choose(s) for s in streams]


def _absolute_choose(stream: StreamSpec) -> int:
    if stream.repeat is not None:
        return int(stream.repeat * stream.num_samples)
    if stream.choose is not None:
        return int(stream.choose)
    return int(stream.num_samples)


def choose_per_shard(samples_per_shard: np.ndarray, choose: int, granularity: int, seed: int,
                     epoch: int, use_epoch: bool) -> np.ndarray:
    """How many samples to draw from each shard of one stream (the reference's ``get_sampling``).

    Whole repeats take every sample of every shard; the fractional rest is filled by picks of up
    to ``granularity`` samples from a shard, in the order of a seeded permutation of all picks.

    Args:
        samples_per_shard: Shard sizes of the stream.
        choose: Samples to draw from the stream.
        granularity: Samples per pick.
        seed: ``shuffle_seed``.
        epoch: Epoch.
        use_epoch: Whether the pick order changes every epoch (``balanced`` and shuffling).

    Returns:
        int64 samples drawn per shard.

    Raises:
        ValueError: On a negative count, seed or epoch, or a non-positive granularity.
    """
    for name, value in (("choose", choose), ("seed", seed), ("epoch", epoch)):
        if value < 0:
            raise ValueError(f"`{name}` must be a non-negative integer, got {value}")
    if granularity <= 0:
        raise ValueError(f"`sampling_granularity` must be a positive integer, got {granularity}")
    sizes = np.asarray(samples_per_shard, np.int64)
    total = int(sizes.sum())
    whole, rest = divmod(int(choose), total)
    if not rest:
        return sizes * whole
    picks = (sizes + granularity - 1) // granularity
    pick_shard = np.repeat(np.arange(len(sizes), dtype=np.int64), picks)
    pick_size = np.full(int(picks.sum()), granularity, np.int64)
    # Same fancy assignment as the reference, including its effect for empty shards (whose
    # "last pick" index points at the previous shard's last pick).
    pick_size[np.cumsum(picks) - 1] = sizes - (picks - 1) * granularity
    rng = np.random.default_rng(seed + epoch if use_epoch else seed)
    ordered = rng.permutation(len(pick_size))
    taken = np.cumsum(pick_size[ordered])
    last = int(np.searchsorted(taken, rest, "left"))
    amounts = pick_size[ordered[:last + 1]].copy()
    amounts[-1] = rest - (int(taken[last - 1]) if last else 0)
    extra = np.bincount(pick_shard[ordered[:last + 1]], weights=amounts, minlength=len(sizes))
    return sizes * whole + extra.astype(np.int64)


@dataclass(frozen=True, slots=True, eq=False)
class Resampled:
    """Per-epoch resampling in compact form.

    Attributes:
        unit_sizes: Shuffle units: each shard's whole repeats, then its partial repeat.
        unit_shard: Global shard index of each unit.
        unit_partial: Whether each unit is a partial repeat (a sorted random subset).
        partial_ids: Concatenated global sample ids of the partial units, in unit order.
        shard_offsets: First global sample id of every shard.
    """

    unit_sizes: np.ndarray
    unit_shard: np.ndarray
    unit_partial: np.ndarray
    partial_ids: np.ndarray
    shard_offsets: np.ndarray

    @property
    def is_identity(self) -> bool:
        """Whether every big id is its own sample id (each non-empty shard taken once, in order)."""
        if self.unit_partial.any():
            return False
        starts = self.shard_offsets[self.unit_shard]
        return bool(np.array_equal(starts, segment_starts(self.unit_sizes)))

    def small_per_big(self) -> np.ndarray:
        """Global sample id of every big id (the reference's ``small_per_big``)."""
        ids = concat_ranges(self.shard_offsets[self.unit_shard], self.unit_sizes)
        if self.partial_ids.size:
            unit_starts = segment_starts(self.unit_sizes)
            slots = concat_ranges(unit_starts[self.unit_partial],
                                  self.unit_sizes[self.unit_partial])
            ids[slots] = self.partial_ids
        return ids

    def small_ids(self, big_ids: np.ndarray) -> np.ndarray:
        """Map big ids (all valid, no -1) to global sample ids."""
        if self.is_identity:
            return big_ids
        return self.small_per_big()[big_ids]


def resample(
    streams: Sequence[StreamSpec],
    choose_per_stream: Sequence[int],
    *,
    epoch: int,
    seed: int,
    shuffle: bool,
    sampling_method: str,
    sampling_granularity: int,
) -> Resampled:
    """Resample every stream for one epoch (compact form of :func:`resample_streams`)."""
    if sampling_method not in SAMPLING_METHODS:
        raise ValueError(
            f"`sampling_method` must be one of {SAMPLING_METHODS}, got {sampling_method!r}"
        )
    if len(choose_per_stream) != len(streams):
        raise ValueError(
            f"`choose_per_stream` has {len(choose_per_stream)} entries for {len(streams)} streams"
        )
    balanced = sampling_method == "balanced"
    use_epoch = shuffle and balanced
    sizes = np.concatenate([s.samples_per_shard for s in streams]).astype(np.int64)
    chosen = np.concatenate([
        choose_per_shard(s.samples_per_shard, int(c), sampling_granularity, seed, epoch,
                         use_epoch)
        for s, c in zip(streams, choose_per_stream, strict=True)
    ])
    # Empty shards contribute nothing (the reference's 0 // 0 and 0 % 0 come out as 0).
    whole, rest = np.divmod(chosen, np.maximum(sizes, 1))
    whole[sizes == 0] = 0
    rest[sizes == 0] = 0
    units = whole + (rest > 0)
    unit_shard = np.repeat(np.arange(len(sizes), dtype=np.int64), units)
    partial_shards = np.flatnonzero(rest > 0)
    unit_partial = np.zeros(len(unit_shard), bool)
    unit_partial[(np.cumsum(units) - 1)[partial_shards]] = True
    unit_sizes = sizes[unit_shard]
    unit_sizes[unit_partial] = rest[partial_shards]
    offsets = segment_starts(sizes)
    rng = np.random.default_rng(seed + epoch if balanced else seed)
    partial = [
        np.sort(rng.choice(int(sizes[shard]), int(rest[shard]), False)) + offsets[shard]
        for shard in partial_shards.tolist()
    ]
    partial_ids = np.concatenate(partial).astype(np.int64) if partial else np.empty(0, np.int64)
    return Resampled(unit_sizes, unit_shard, unit_partial, partial_ids, offsets)


def resample_streams(
    streams: Sequence[StreamSpec],
    choose_per_stream: Sequence[int],
    *,
    epoch: int,
    seed: int,
    shuffle: bool,
    sampling_method: str,
    sampling_granularity: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Up- and down-sample the streams for one epoch, like the reference's ``resample_streams``.

    Args:
        streams: The streams, in order.
        choose_per_stream: Samples per stream per epoch (:func:`resolve_stream_choose`).
        epoch: Epoch.
        seed: ``shuffle_seed``.
        shuffle: Whether the dataset shuffles (a ``balanced`` pick order then changes per epoch).
        sampling_method: ``balanced`` (a new subsample every epoch) or ``fixed``.
        sampling_granularity: Samples per pick when filling a fractional repeat.

    Returns:
        ``(shuffle_units, small_per_big)``: the resampled unit sizes, and the global sample id of
        every resampled ("big") id.

    Raises:
        ValueError: On an invalid sampling method or granularity, negative seed or epoch, or a
            ``choose_per_stream`` of the wrong length.
    """
    resampled = resample(streams, choose_per_stream, epoch=epoch, seed=seed, shuffle=shuffle,
                         sampling_method=sampling_method,
                         sampling_granularity=sampling_granularity)
    return resampled.unit_sizes, resampled.small_per_big()
