"""``per_stream`` and ``device_per_stream`` batching: batches drawn from one stream at a time.

Both follow the reference (``streaming.base.batching.per_stream`` / ``device_per_stream``):

* ``per_stream``: each stream is partitioned like a dataset of its own (physical nodes, device
  batch) and read in global batches; global batches holding padding are dropped. The streams'
  global batches are then interleaved in a random stream order (one ``shuffle`` of the list of
  batch origins), each stream's batches keeping their own order.
* ``device_per_stream``: each stream is partitioned over ``num_canonical_nodes`` "nodes" with
  batch size 1; physical node ``n`` reads canonical nodes ``[n*k, (n+1)*k)``, ``k = C / P``, in
  device batches, and interleaves its streams' device batches the same way (one shuffle per node,
  nodes in order, one generator). Every node's list is padded with empty device batches to a
  common length, the lists are dealt round robin over the nodes, and consecutive runs of
  ``nodes * ranks`` device batches make the global batches.

The interleaving generator is seeded with ``shuffle_seed + epoch`` when shuffling with
``balanced`` sampling, else with ``shuffle_seed``. Resumption skips whole global batches.
"""

from __future__ import annotations

import logging
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


def interleave(counts: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """The order in which to read the streams' batches stacked in stream order.

    One ``rng.shuffle`` of the origin list (stream ``i`` repeated ``counts[i]`` times), as the
    reference draws it; the ``k``-th batch of stream ``i`` read is its ``k``-th batch.
    """
    origins = np.concatenate([np.full(count, i, np.int64) for i, count in enumerate(counts)])
    rng.shuffle(origins)
    # A stable sort groups the output positions by stream, in order: the inverse of that
    # permutation numbers every stream's positions 0, 1, ... after the stream's offset.
    pick = np.empty(len(origins), np.int64)
    pick[np.argsort(origins, kind="stable")] = np.arange(len(origins))
    return pick


def _epoch_rng(settings: OrderSettings, epoch: int) -> np.random.Generator:
    change = settings.shuffle and settings.sampling_method == "balanced"
    return np.random.default_rng(settings.shuffle_seed + epoch if change else settings.shuffle_seed)


def _resumption_warning(method: str, sample_in_epoch: int, global_batch: int,
                        topology: Topology) -> None:
    if sample_in_epoch % global_batch and speaks(topology):
        logger.warning("Because of the `%s` batching method, resumption may only occur on a "
                       "sample that is a multiple of the current global batch size of %d. "
                       "Resuming training after the most recently finished global batch.",
                       method, global_batch)


def per_stream_batches(streams: Sequence[StreamSpec], choose_per_stream: Sequence[int],
                       settings: OrderSettings, topology: Topology, *, epoch: int,
                       initial_physical_nodes: int | None) -> BatchGrid:
    """The epoch's global batches under ``per_stream``: the streams' batches, interleaved.

    Raises:
        ValueError: A stream too small for one full global batch.
    """
    global_batch = settings.batch_size * topology.ranks_per_node * topology.num_nodes
    proportions = stream_proportions(streams, choose_per_stream)
    # Every stream's epoch first (its errors come first, as in the reference), kept only as
    # global batches in training order.
    orders = [
        traversal(stream_epoch(streams, choose_per_stream, index, settings, epoch=epoch,
                               nodes=topology.num_nodes, topology=topology,
                               batch_size=settings.batch_size,
                               initial_physical_nodes=initial_physical_nodes,
                               proportion=float(proportions[index]))).reshape(-1, global_batch)
        for index in range(len(streams))
    ]
    rows = []
    for index, batches in enumerate(orders):
        full = full_rows(batches)
        if full != len(batches) and speaks(topology):
            logger.warning("Because of the `per_stream` batching method, some batches with an "
                           "inadequate number of samples from stream with index %d will be "
                           "dropped.", index)
        if not full:
            raise ValueError(f"Stream with index {index} does not have an adequate number of "
                             f"samples to construct a complete global batch of {global_batch}.")
        rows.append(batches[:full])
    order = interleave([len(r) for r in rows], _epoch_rng(settings, epoch))
    return BatchGrid([np.concatenate(rows)], order)


def device_per_stream_batches(streams: Sequence[StreamSpec], choose_per_stream: Sequence[int],
                              settings: OrderSettings, topology: Topology, *, epoch: int,
                              initial_physical_nodes: int | None) -> BatchGrid:
    """The epoch's global batches under ``device_per_stream``.

    Raises:
        ValueError: Canonical nodes not divisible by physical nodes, or a stream too small for
            one full device batch on some node.
    """
    ncn, nodes = settings.num_canonical_nodes, topology.num_nodes
    if ncn % nodes:
        raise ValueError(f"For `device_per_stream` batching, num_canonical_nodes must be "
                         f"divisible by physical nodes. Got {ncn} canonical nodes and {nodes} "
                         f"physical nodes.")
    batch, devices, share = settings.batch_size, nodes * topology.ranks_per_node, ncn // nodes
    proportions = stream_proportions(streams, choose_per_stream)
    # orders[stream][node]: the node's canonical nodes of the stream, in training order.
    orders = []
    for index in range(len(streams)):
        part = stream_epoch(streams, choose_per_stream, index, settings, epoch=epoch, nodes=ncn,
                            topology=topology, batch_size=1,
                            initial_physical_nodes=initial_physical_nodes,
                            proportion=float(proportions[index]))
        orders.append([traversal(part[n * share:(n + 1) * share]) for n in range(nodes)])
    per_node = [_node_device_batches([o[node] for o in orders], node, batch, speaks(topology))
                for node in range(nodes)]
    del orders
    # Each node's list is padded to a common multiple of the device count (a whole extra round
    # when it already divides, as in the reference; the padding is never yielded).
    longest = max(sum(len(r) for r in rows) for rows in per_node)
    longest += devices - longest % devices
    rng = _epoch_rng(settings, epoch)
    dealt = np.full((longest, nodes, batch), -1, np.int64)
    for node, rows in enumerate(per_node):
        pick = interleave([len(r) for r in rows], rng)
        np.take(np.concatenate(rows), pick, axis=0, out=dealt[:len(pick), node])
    return BatchGrid([dealt.reshape(-1, devices * batch)])


def _node_device_batches(orders: list[np.ndarray], node: int, batch: int,
                         report: bool) -> list[np.ndarray]:
    """One node's full device batches of every stream, in training order."""
    rows = []
    for index, order in enumerate(orders):
        full = order.size // batch
        batches = order[:full * batch].reshape(full, batch)
        kept = full_rows(batches)
        if (kept != full or order.size % batch) and report:
            logger.warning("Because of the `device_per_stream` batching method, some batches "
                           "with an inadequate number of samples from stream with index %d will "
                           "be dropped.", index)
        if not kept:
            raise ValueError(f"Stream with index {index} does not have an adequate number of "
                             f"samples to construct even a single device batch of size {batch} "
                             f"on node {node}.")
        rows.append(batches[:kept])
    return rows


def per_stream_worker_ids(streams: Sequence[StreamSpec], choose_per_stream: Sequence[int],
                          settings: OrderSettings, topology: Topology, *, epoch: int,
                          sample_in_epoch: int, initial_physical_nodes: int | None,
                          device_level: bool = False) -> np.ndarray:
    """One worker's sample ids under ``per_stream`` or (``device_level``) ``device_per_stream``."""
    build = device_per_stream_batches if device_level else per_stream_batches
    batches = build(streams, choose_per_stream, settings, topology, epoch=epoch,
                    initial_physical_nodes=initial_physical_nodes)
    method = "device_per_stream" if device_level else "per_stream"
    _resumption_warning(method, sample_in_epoch, batches.global_batch, topology)
    return batches.worker_ids(topology, settings.batch_size, sample_in_epoch)
