"""Partition an epoch's sample positions over nodes, ranks and workers (``orig`` and ``relaxed``).

The math of ``orig`` lives in :mod:`mdsloader.ordering.orig` as a closed form, so a worker computes
its own slice in O(its samples) and the full array is the same function on the full grid.
``relaxed`` resumption on a node count that neither divides nor is divided by the canonical node
count re-cuts the initial topology's traversal order, which is one more index map on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mdsloader.ordering.orig import OrigPlan, orig_ids, orig_worker, plan_orig

PARTITION_ALGOS = ("orig", "relaxed")


def _positive(name: str, value: int) -> None:
    if int(value) < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def validate_partition_args(
    algo: str,
    num_samples: int,
    num_canonical_nodes: int,
    num_physical_nodes: int,
    ranks_per_node: int,
    workers_per_rank: int,
    batch_size: int,
    drop_first: int,
) -> None:
    """Check the arguments shared by :func:`get_partitions` and :func:`worker_partition`.

    Raises:
        ValueError: On an unknown algorithm, a non-positive size, a negative ``drop_first``, or a
            ``drop_first`` beyond the (device-padded) epoch, as the reference does.
    """
    if algo not in PARTITION_ALGOS:
        raise ValueError(f"`partition_algo` must be one of {PARTITION_ALGOS}, got {algo!r}")
    for name, value in (
        ("num_samples", num_samples),
        ("num_canonical_nodes", num_canonical_nodes),
        ("num_physical_nodes", num_physical_nodes),
        ("ranks_per_node", ranks_per_node),
        ("workers_per_rank", workers_per_rank),
        ("batch_size", batch_size),
    ):
        _positive(name, value)
    if drop_first < 0:
        raise ValueError(f"`drop_first` must be non-negative, got {drop_first}")
    world = ranks_per_node * num_physical_nodes
    # The reference pads the epoch up to the next multiple of the world size, and a whole extra
    # world's worth when it already divides; resuming past that is an error.
    if num_samples + world - num_samples % world < drop_first:
        raise ValueError(
            f"Resuming further into the dataset ({drop_first}) than it has samples "
            f"({num_samples}): `drop_first` (sample_in_epoch) is too large"
        )


def _relaxed_ids(plan0: OrigPlan, nodes: int, batch_size: int, node, rank, worker, batch, slot):
    """Element of a ``relaxed`` re-cut of ``plan0``'s traversal order for a new node count."""
    r, w = plan0.ranks, plan0.workers
    flat = (((batch * w + worker) * nodes + node) * r + rank) * batch_size + slot
    flat, slot0 = np.divmod(flat, plan0.batch_size)
    flat, rank0 = np.divmod(flat, r)
    flat, node0 = np.divmod(flat, plan0.nodes)
    batch0, worker0 = np.divmod(flat, w)
    return orig_ids(plan0, node0, rank0, worker0, batch0, slot0)


@dataclass(frozen=True, slots=True)
class Partition:
    """A resolved partition: either a plain ``orig`` plan, or ``relaxed`` over an initial plan.

    Attributes:
        plan: The ``orig`` plan that produces the samples.
        nodes: Physical nodes of the output layout.
        batch_size: Per-device batch size of the output layout.
        recut: Whether the output re-cuts ``plan``'s traversal order (``relaxed`` resumption on a
            node count that does not divide or is not divided by the canonical node count).
    """

    plan: OrigPlan
    nodes: int
    batch_size: int
    recut: bool

    @property
    def batches(self) -> int:
        """Batches per worker in the output layout."""
        return self.plan.batches

    def ids(self, node, rank, worker, batch, slot) -> np.ndarray:
        """Element ``[node, rank, worker, batch, slot]`` of the partition (-1 for padding)."""
        if self.recut:
            return _relaxed_ids(self.plan, self.nodes, self.batch_size, node, rank, worker, batch,
                                slot)
        return orig_ids(self.plan, node, rank, worker, batch, slot)


def resolve_partition(
    algo: str,
    num_samples: int,
    num_canonical_nodes: int,
    num_physical_nodes: int,
    ranks_per_node: int,
    workers_per_rank: int,
    batch_size: int = 1,
    drop_first: int = 0,
    initial_physical_nodes: int | None = None,
) -> Partition:
    """Validate the arguments and resolve the partition (see :func:`get_partitions`)."""
    validate_partition_args(algo, num_samples, num_canonical_nodes, num_physical_nodes,
                            ranks_per_node, workers_per_rank, batch_size, drop_first)
    c, p, r = num_canonical_nodes, num_physical_nodes, ranks_per_node
    divisible = max(c, p) % min(c, p) == 0
    if algo == "orig" or initial_physical_nodes is None or divisible:
        plan = plan_orig(num_samples, c, p, r, workers_per_rank, batch_size, drop_first)
        return Partition(plan, p, batch_size, recut=False)
    _positive("initial_physical_nodes", initial_physical_nodes)
    global_batch = p * r * batch_size
    initial_devices = initial_physical_nodes * r
    if global_batch % initial_devices:
        raise ValueError(
            f"A global batch size of {global_batch} is not evenly divisible by the initial total "
            f"number of devices of {initial_devices}. With the 'relaxed' partition algorithm the "
            "global batch size must not change when resuming (check `batch_size` and "
            "`initial_physical_nodes`)"
        )
    plan = plan_orig(num_samples, c, initial_physical_nodes, r, workers_per_rank,
                     global_batch // initial_devices, drop_first)
    return Partition(plan, p, batch_size, recut=True)


def get_partitions(
    algo: str,
    num_samples: int,
    num_canonical_nodes: int,
    num_physical_nodes: int,
    ranks_per_node: int,
    workers_per_rank: int,
    batch_size: int = 1,
    drop_first: int = 0,
    initial_physical_nodes: int | None = None,
) -> np.ndarray:
    """Partition an epoch of sample positions over nodes, ranks and workers.

    Same result as the reference's ``streaming.base.partition.get_partitions``.

    Args:
        algo: ``'orig'`` or ``'relaxed'``.
        num_samples: Epoch size (after resampling).
        num_canonical_nodes: Canonical node count, which fixes the global order.
        num_physical_nodes: Physical node count.
        ranks_per_node: Ranks (devices) per node.
        workers_per_rank: DataLoader workers per rank (at least 1).
        batch_size: Per-device batch size.
        drop_first: Samples of this epoch already consumed (resumption), a global count.
        initial_physical_nodes: Node count of the first run, for ``relaxed`` resumption.

    Returns:
        An int64 array of shape ``(nodes, ranks_per_node, workers_per_rank, batches_per_worker,
        batch_size)`` of sample positions, padded with -1.

    Raises:
        ValueError: On invalid arguments (see :func:`validate_partition_args` and
            :func:`plan_orig`) or, for ``relaxed``, a global batch size that the initial device
            count does not divide.
    """
    part = resolve_partition(algo, num_samples, num_canonical_nodes, num_physical_nodes,
                             ranks_per_node, workers_per_rank, batch_size, drop_first,
                             initial_physical_nodes)
    shape = (num_physical_nodes, ranks_per_node, workers_per_rank, part.batches, batch_size)
    grid = np.indices(shape, dtype=np.int64, sparse=True)
    return np.ascontiguousarray(np.broadcast_to(part.ids(*grid), shape))


def worker_partition(
    algo: str,
    num_samples: int,
    num_canonical_nodes: int,
    num_physical_nodes: int,
    ranks_per_node: int,
    workers_per_rank: int,
    batch_size: int = 1,
    drop_first: int = 0,
    initial_physical_nodes: int | None = None,
    *,
    node: int,
    rank_of_node: int,
    worker: int,
) -> np.ndarray:
    """One worker's slice of :func:`get_partitions`, flattened, computed without the full array.

    Equal to ``get_partitions(...)[node, rank_of_node, worker].ravel()``.

    Args:
        algo: See :func:`get_partitions`.
        num_samples: See :func:`get_partitions`.
        num_canonical_nodes: See :func:`get_partitions`.
        num_physical_nodes: See :func:`get_partitions`.
        ranks_per_node: See :func:`get_partitions`.
        workers_per_rank: See :func:`get_partitions`.
        batch_size: See :func:`get_partitions`.
        drop_first: See :func:`get_partitions`.
        initial_physical_nodes: See :func:`get_partitions`.
        node: This worker's node.
        rank_of_node: This worker's rank within its node.
        worker: This worker's index within its rank.

    Returns:
        A 1-D int64 array of ``batches_per_worker * batch_size`` sample positions, -1 for padding.

    Raises:
        ValueError: As :func:`get_partitions`, or if the coordinates are outside the topology.
    """
    validate_worker(num_physical_nodes, ranks_per_node, workers_per_rank, node=node,
                    rank_of_node=rank_of_node, worker=worker)
    part = resolve_partition(algo, num_samples, num_canonical_nodes, num_physical_nodes,
                             ranks_per_node, workers_per_rank, batch_size, drop_first,
                             initial_physical_nodes)
    if part.recut:
        return _recut_worker(part, node, rank_of_node, worker)
    return orig_worker(part.plan, node, rank_of_node, worker)


def validate_worker(num_physical_nodes: int, ranks_per_node: int, workers_per_rank: int, *,
                    node: int, rank_of_node: int, worker: int) -> None:
    """Check that a worker's coordinates lie inside the topology.

    Raises:
        ValueError: Naming the coordinate that is out of range.
    """
    for name, value, bound in (
        ("node", node, num_physical_nodes),
        ("rank_of_node", rank_of_node, ranks_per_node),
        ("worker", worker, workers_per_rank),
    ):
        if not 0 <= value < bound:
            raise ValueError(f"`{name}` must be in [0, {bound}), got {value}")


# Elements per step when evaluating a re-cut worker's slice (small, cache-resident temporaries).
_CHUNK = 1 << 16


def _recut_worker(part: Partition, node: int, rank: int, worker: int) -> np.ndarray:
    """One worker of a ``relaxed`` re-cut, evaluated chunk by chunk."""
    out = np.empty(part.batches * part.batch_size, np.int64)
    for begin in range(0, out.size, _CHUNK):
        flat = np.arange(begin, min(begin + _CHUNK, out.size), dtype=np.int64)
        batch, slot = np.divmod(flat, part.batch_size)
        out[begin:begin + flat.size] = part.ids(node, rank, worker, batch, slot)
    return out
