"""``stratified`` batching: every global batch holds each stream in the same proportion.

The reference's algorithm (``streaming.base.batching.stratified``), step for step:

1. Each stream gets ``int(proportion * global_batch)`` slots of every global batch; the slots
   that rounding leaves over go to the streams with the largest remainders (the reference's
   unstable ``argsort``, so ties break as its does).
2. Each stream is partitioned over one node with batch size 1 (so its order depends on the ranks
   per node and workers, not on the batch size), shuffled, and read in training order in runs
   of its slot count. Runs holding padding are not full; the epoch has as many global batches as
   the stream with the fewest full runs, and the other streams' surplus is dropped.
3. Global batch ``g`` is run ``g`` of stream 0, then of stream 1, and so on.

Resumption skips whole global batches: a ``sample_in_epoch`` inside a batch restarts that batch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mdsloader.ordering.sampling import StreamSpec
from mdsloader.ordering.streamwise import (
    BatchGrid,
    full_rows,
    speaks,
    stream_epoch,
    stream_proportions,
    traversal,
)

if TYPE_CHECKING:
    from mdsloader.ordering.epoch import OrderSettings, Topology

logger = logging.getLogger(__name__)


def stream_slots(proportions: np.ndarray, global_batch: int) -> np.ndarray:
    """Samples of each stream in every global batch (they sum to ``global_batch``).

    Raises:
        ValueError: A stream whose share of the global batch is 0 samples.
    """
    slots = np.array([int(p * global_batch) for p in proportions], np.int64)
    missing = global_batch - int(slots.sum())
    if missing:
        # The streams closest to one more sample, highest remainder first.
        remainders = global_batch * proportions - slots
        slots[np.flip(np.argsort(remainders))[:missing]] += 1
    for index, count in enumerate(slots.tolist()):
        if count <= 0:
            raise ValueError(
                f"Number of samples for stream {index} is {count} because the portion of this "
                f"stream in the global batch, which is of size {global_batch}, is too low. "
                f"Please increase the global batch size or increase the proportion of total "
                f"samples that come from stream {index}."
            )
    return slots


def stratified_batches(streams: Sequence[StreamSpec], choose_per_stream: Sequence[int],
                       settings: OrderSettings, topology: Topology, *,
                       epoch: int, initial_physical_nodes: int | None) -> BatchGrid:
    """The epoch's global batches before resumption: one column block per stream."""
    global_batch = settings.batch_size * topology.ranks_per_node * topology.num_nodes
    proportions = stream_proportions(streams, choose_per_stream)
    orders = [
        traversal(stream_epoch(streams, choose_per_stream, index, settings, epoch=epoch, nodes=1,
                               topology=topology, batch_size=1,
                               initial_physical_nodes=initial_physical_nodes,
                               proportion=float(proportions[index])))
        for index in range(len(streams))
    ]
    slots = stream_slots(proportions, global_batch)
    runs = []
    for index, (order, count) in enumerate(zip(orders, slots.tolist(), strict=True)):
        padded = np.full(-(-order.size // count) * count, -1, np.int64)
        padded[:order.size] = order
        rows = padded.reshape(-1, count)
        if full_rows(rows) != len(rows) and speaks(topology):
            logger.warning("Because of the `stratified` batching method, some batches with an "
                           "inadequate number of samples from stream with index %d are being "
                           "dropped.", index)
        runs.append(rows)
    batches = min(full_rows(rows) for rows in runs)
    return BatchGrid([rows[:batches] for rows in runs])


def stratified_worker_ids(streams: Sequence[StreamSpec], choose_per_stream: Sequence[int],
                          settings: OrderSettings, topology: Topology, *, epoch: int,
                          sample_in_epoch: int, initial_physical_nodes: int | None) -> np.ndarray:
    """One worker's sample ids under ``stratified`` batching (see the module docstring)."""
    batches = stratified_batches(streams, choose_per_stream, settings, topology, epoch=epoch,
                                 initial_physical_nodes=initial_physical_nodes)
    global_batch = batches.global_batch
    if sample_in_epoch % global_batch and speaks(topology):
        warnings.warn(
            f"Because of the `stratified` batching method, resumption may only occur on a "
            f"sample that is a multiple of the current global batch size of {global_batch}. "
            f"Resuming training after the most recently finished global batch; keep the global "
            f"batch size of the original run for deterministic resumption.",
            stacklevel=4,
        )
    return batches.worker_ids(topology, settings.batch_size, sample_in_epoch)
