"""What the stream-aware batching methods share: per-stream epochs and the global-batch grid.

``stratified``, ``per_stream`` and ``device_per_stream`` (mds-format.md 3.14) resample, partition
and shuffle every stream on its own, as the reference does, and then arrange the streams' batches
into global batches. This module holds the per-stream half and the last step, common to the three:
cutting the resumed global batches into one worker's sample ids.

The reference's per-stream draws differ from ``random``'s in ways that matter for equality:

* each stream is resampled with a fresh generator (``random`` draws all streams' partial repeats
  from one), so stream ``s``'s subsample does not depend on the other streams;
* each stream is shuffled with a block of ``int(shuffle_block_size * proportion)``, where
  ``proportion`` is the stream's derived share of the epoch (:func:`stream_proportions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mdsloader.ordering.partition import get_partitions
from mdsloader.ordering.sampling import StreamSpec, _weighting, resample
from mdsloader.ordering.shuffle import get_shuffle

if TYPE_CHECKING:
    from mdsloader.ordering.epoch import OrderSettings, Topology

# Shuffles that cut the epoch into blocks; the others ignore the block size.
BLOCK_SHUFFLES = ("py1e", "py1br")


def stream_proportions(streams: Sequence[StreamSpec],
                       choose_per_stream: Sequence[int]) -> np.ndarray:
    """Each stream's share of the epoch, as the reference's ``Stream.apply_weights`` derives it.

    Relative weights are normalised; unweighted streams share by size (with or without an
    ``epoch_size``); absolute weights (``repeat`` / ``choose``) share by samples chosen. The float
    operations are the reference's, so ``int(share * n)`` rounds the same way.
    """
    relative, unspecified = _weighting(streams)
    if relative:
        shares = np.array([s.proportion for s in streams], np.float64)
    elif unspecified:
        shares = np.array([s.num_samples for s in streams], np.float64)
    else:
        chosen = np.array(choose_per_stream, np.int64)
        return chosen / chosen.sum()
    shares /= shares.sum()
    return shares


def stream_block_size(settings: OrderSettings, proportion: float, stream_index: int) -> int:
    """The shuffle block of one stream: the dataset's block scaled by the stream's share.

    Raises:
        ValueError: A block shuffle (py1e, py1br) whose scaled block is 0. The reference fails
            there with numpy's bare ``high <= 0``; the block-free shuffles do not need a block,
            so they get 1 (unused) where the reference's ``device_per_stream`` refuses.
    """
    block = int(settings.shuffle_block_size * proportion)
    if block > 0:
        return block
    if settings.shuffle_algo in BLOCK_SHUFFLES:
        raise ValueError(
            f"Stream {stream_index}'s shuffle block (shuffle_block_size "
            f"{settings.shuffle_block_size} x its proportion {proportion:.3g}) is 0 samples. "
            f"Raise `shuffle_block_size` or the stream's proportion."
        )
    return 1


def stream_epoch(
    streams: Sequence[StreamSpec],
    choose_per_stream: Sequence[int],
    index: int,
    settings: OrderSettings,
    *,
    epoch: int,
    nodes: int,
    topology: Topology,
    batch_size: int,
    initial_physical_nodes: int | None,
    proportion: float,
) -> np.ndarray:
    """One stream's epoch: global sample ids, 5-D ``(nodes, ranks, workers, batches, batch)``.

    Partitioned over ``nodes`` (physical or canonical, per method) with ``batch_size`` (the device
    batch, or 1), never resumed here (the methods resume by whole global batches), and padded
    with -1 like the reference's partition.

    Raises:
        ValueError: The stream contributes no samples, or its shuffle block is 0 (see
            :func:`stream_block_size`).
    """
    stream = streams[index]
    resampled = resample([stream], [choose_per_stream[index]], epoch=epoch,
                         seed=settings.shuffle_seed, shuffle=settings.shuffle,
                         sampling_method=settings.sampling_method,
                         sampling_granularity=settings.sampling_granularity)
    units = resampled.unit_sizes
    if not units.sum():
        # The reference fails in numpy here ("need at least one array to concatenate").
        raise ValueError(f"Stream {index} contributes no samples to the epoch, but the "
                         f"`{settings.batching_method}` batching method takes batches from "
                         f"every stream. Give it a positive weight or leave it out.")
    part = np.array(get_partitions(  # a writable copy
        settings.partition_algo, int(units.sum()), settings.num_canonical_nodes, nodes,
        topology.ranks_per_node, topology.workers_per_rank, batch_size, 0, initial_physical_nodes,
    ))
    real = part != -1
    big = part[real]
    if settings.shuffle:
        block = stream_block_size(settings, proportion, index)
        perm = get_shuffle(settings.shuffle_algo, units, settings.num_canonical_nodes,
                           settings.shuffle_seed, epoch, block)
        big = perm[big]
    first_id = sum(s.num_samples for s in streams[:index])
    part[real] = resampled.small_ids(big) + first_id
    return part


def speaks(topology: Topology) -> bool:
    """Whether this worker reports on the epoch (dropped batches, inexact resumption).

    Every worker builds the epoch here; the first worker of a node's first rank speaks for the
    node, as the reference's local leader (the one process that builds it there) does.
    """
    return topology.rank_of_node == 0 and topology.worker == 0


def traversal(part: np.ndarray) -> np.ndarray:
    """A 5-D partition flattened in training order: batch, worker, node, rank, slot."""
    return part.transpose(3, 2, 0, 1, 4).ravel()


def full_rows(rows: np.ndarray) -> int:
    """How many rows hold no padding (-1)."""
    if not rows.size:
        return 0
    return int(np.count_nonzero(rows.min(axis=1) >= 0))


@dataclass(frozen=True, slots=True, eq=False)
class BatchGrid:
    """An epoch's global batches, ``(batches, global_batch)``, kept as the methods build them.

    ``blocks`` stand side by side (stratified: each stream's share of every batch) and rows are
    read in ``order`` when given (per_stream: the interleaving of the streams' batches), so a
    worker copies only its own rows and columns, never the whole grid.
    """

    blocks: list[np.ndarray]
    order: np.ndarray | None = None

    @property
    def global_batch(self) -> int:
        """Samples per global batch."""
        return sum(block.shape[1] for block in self.blocks)

    def __len__(self) -> int:
        return len(self.order) if self.order is not None else len(self.blocks[0])

    def materialise(self) -> np.ndarray:
        """The whole grid as one array (the reference's layout before its final reshape)."""
        rows = np.concatenate(self.blocks, axis=1)
        return rows if self.order is None else rows[self.order]

    def worker_ids(self, topology: Topology, batch_size: int, sample_in_epoch: int) -> np.ndarray:
        """One worker's sample ids, resumed, padding removed.

        Resumption skips whole global batches (``sample_in_epoch // global_batch``), as the
        reference does. Global batch ``g`` is read by worker ``g % workers`` of every rank, and
        device ``d`` (node-major) takes its ``d``-th ``batch_size`` slice.
        """
        first = sample_in_epoch // self.global_batch + topology.worker
        rows: slice | np.ndarray = slice(first, None, topology.workers_per_rank)
        if self.order is not None:
            rows = self.order[rows]
        low = (topology.node * topology.ranks_per_node + topology.rank_of_node) * batch_size
        pieces, start = [], 0
        for block in self.blocks:
            begin, end = max(low, start), min(low + batch_size, start + block.shape[1])
            if begin < end:
                pieces.append(block[rows, begin - start:end - start])
            start += block.shape[1]
        mine = np.concatenate(pieces, axis=1).ravel()
        return mine[mine != -1]
