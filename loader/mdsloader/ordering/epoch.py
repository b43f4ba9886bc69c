"""One worker's sample order for an epoch: resample, partition, shuffle, map back (3.3).

The reference builds the whole ``(nodes, ranks, workers, batches, batch_size)`` epoch once per node
and shares it through shared memory. Here every worker computes its own slice: the partition is
evaluated only at the worker's positions, and the shuffle only sorts the canonical nodes the worker
reads from. The result is the same sample sequence the reference's worker iterates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import InitVar, dataclass
from functools import partial

import numpy as np

from mdsloader.ordering.partition import PARTITION_ALGOS, worker_partition
from mdsloader.ordering.per_stream import per_stream_worker_ids
from mdsloader.ordering.py1e import py1e_order, py1e_order_quiet, warn_clipped
from mdsloader.ordering.sampling import SAMPLING_METHODS, Resampled, StreamSpec, resample
from mdsloader.ordering.shuffle import (
    SHUFFLE_ALGOS,
    fixed_pieces,
    get_shuffle,
    validate_shuffle_args,
)
from mdsloader.ordering.stratified import stratified_worker_ids

BATCHING_METHODS = ("random", "stratified", "per_stream", "device_per_stream")


def default_num_canonical_nodes(shuffle_algo: str, physical_nodes: int) -> int:
    """The reference's default canonical node count: ``64 * P`` for py1s/py2s, else ``P``."""
    return 64 * physical_nodes if shuffle_algo in ("py1s", "py2s") else physical_nodes


def default_shuffle_block_size(num_canonical_nodes: int) -> int:
    """The reference's default shuffle block size: ``max(4_000_000 // NCN, 1 << 18)``."""
    return max(4_000_000 // num_canonical_nodes, 1 << 18)


@dataclass(frozen=True, slots=True)
class OrderSettings:
    """Every dataset setting that decides the sample order (all resolved, no None).

    Attributes:
        shuffle: Whether to shuffle.
        shuffle_algo: One of ``py1e``, ``py1br``, ``py1s``, ``py2s``, ``naive``.
        shuffle_seed: Run seed (non-negative).
        shuffle_block_size: Shuffle block size (see :func:`default_shuffle_block_size`).
        partition_algo: ``orig`` or ``relaxed``.
        num_canonical_nodes: Canonical node count (see :func:`default_num_canonical_nodes`).
        batch_size: Per-device batch size.
        sampling_method: ``balanced`` or ``fixed``.
        sampling_granularity: Samples per pick for fractional repeats.
        batching_method: ``random`` (the default), ``stratified``, ``per_stream`` or
            ``device_per_stream``.
    """

    shuffle: bool
    shuffle_algo: str
    shuffle_seed: int
    shuffle_block_size: int
    partition_algo: str
    num_canonical_nodes: int
    batch_size: int
    sampling_method: str
    sampling_granularity: int
    batching_method: str = "random"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("batching_method", self.batching_method, BATCHING_METHODS),
            ("shuffle_algo", self.shuffle_algo, SHUFFLE_ALGOS),
            ("partition_algo", self.partition_algo, PARTITION_ALGOS),
            ("sampling_method", self.sampling_method, SAMPLING_METHODS),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")
        if self.shuffle_seed < 0:
            raise ValueError(f"`shuffle_seed` must be non-negative, got {self.shuffle_seed}")
        for name in ("shuffle_block_size", "num_canonical_nodes", "batch_size",
                     "sampling_granularity"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Topology:
    """Where a worker sits. ``workers_per_rank`` 0 (no DataLoader workers) counts as 1.

    ``worker_of_rank=`` (the reference's name) is accepted in place of ``worker=``.

    Attributes:
        num_nodes: Physical nodes.
        ranks_per_node: Ranks per node.
        workers_per_rank: DataLoader workers per rank.
        node: This worker's node.
        rank_of_node: This worker's rank within its node.
        worker: This worker's index within its rank.
    """

    num_nodes: int
    ranks_per_node: int
    workers_per_rank: int
    node: int
    rank_of_node: int
    worker: int = -1
    worker_of_rank: InitVar[int | None] = None

    def __post_init__(self, worker_of_rank: int | None) -> None:
        if worker_of_rank is not None:
            if self.worker not in (-1, worker_of_rank):
                raise ValueError(f"`worker` ({self.worker}) and `worker_of_rank` "
                                 f"({worker_of_rank}) disagree")
            object.__setattr__(self, "worker", worker_of_rank)
        if self.workers_per_rank == 0:
            object.__setattr__(self, "workers_per_rank", 1)
        for name, size in (("num_nodes", self.num_nodes), ("ranks_per_node", self.ranks_per_node),
                           ("workers_per_rank", self.workers_per_rank)):
            if size < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {size}")
        for name, value, bound in (("node", self.node, self.num_nodes),
                                   ("rank_of_node", self.rank_of_node, self.ranks_per_node),
                                   ("worker", self.worker, self.workers_per_rank)):
            if not 0 <= value < bound:
                raise ValueError(f"`{name}` must be in [0, {bound}), got {value}")


def worker_sample_ids(
    streams: Sequence[StreamSpec],
    choose_per_stream: Sequence[int],
    settings: OrderSettings,
    topology: Topology,
    *,
    epoch: int,
    sample_in_epoch: int,
    initial_physical_nodes: int | None,
) -> np.ndarray:
    """The global sample ids this worker yields this epoch, in order, padding removed.

    Args:
        streams: The dataset's streams.
        choose_per_stream: Samples per stream per epoch (:func:`resolve_stream_choose`).
        settings: Order settings.
        topology: This worker's place.
        epoch: Epoch.
        sample_in_epoch: Global samples already consumed this epoch (resumption).
        initial_physical_nodes: Node count of the first run, for ``relaxed`` resumption.

    Returns:
        An int64 array of global sample ids.

    Raises:
        ValueError: On invalid settings or a resumption point past the end of the epoch
            (``random``), or settings the batching method cannot satisfy.
    """
    if settings.batching_method != "random":
        return _stream_batched_ids(streams, choose_per_stream, settings, topology, epoch=epoch,
                                   sample_in_epoch=sample_in_epoch,
                                   initial_physical_nodes=initial_physical_nodes)
    resampled = resample(streams, choose_per_stream, epoch=epoch, seed=settings.shuffle_seed,
                         shuffle=settings.shuffle, sampling_method=settings.sampling_method,
                         sampling_granularity=settings.sampling_granularity)
    epoch_size = int(resampled.unit_sizes.sum())
    partition = partial(
        worker_partition,
        settings.partition_algo, epoch_size, settings.num_canonical_nodes, topology.num_nodes,
        topology.ranks_per_node, topology.workers_per_rank, settings.batch_size,
        sample_in_epoch, initial_physical_nodes, node=topology.node,
        rank_of_node=topology.rank_of_node, worker=topology.worker,
    )
    if not settings.shuffle:
        return resampled.small_ids(_strip_padding(partition()))
    if settings.shuffle_algo == "py1e" and settings.num_canonical_nodes > 1:
        # py1e then sorts only the canonical nodes this worker reads: it needs the positions.
        big = _strip_padding(partition())
        return resampled.small_ids(shuffled_ids(resampled, settings, epoch, big))
    big, perm = _partition_beside_permutation(partition, resampled, settings, epoch)
    return resampled.small_ids(np.take(perm, big, out=big, mode="clip"))


def _stream_batched_ids(streams: Sequence[StreamSpec], choose_per_stream: Sequence[int],
                        settings: OrderSettings, topology: Topology, *, epoch: int,
                        sample_in_epoch: int, initial_physical_nodes: int | None) -> np.ndarray:
    """A worker's ids under a stream-aware batching method (whole-epoch construction).

    Unlike ``random``, these arrange whole global batches across streams, so every worker
    builds the epoch's batch grid and keeps its rows; a resumption point past the end of the
    epoch leaves nothing, as in the reference.
    """
    method = settings.batching_method
    build = stratified_worker_ids if method == "stratified" else partial(
        per_stream_worker_ids, device_level=method == "device_per_stream")
    return build(streams, choose_per_stream, settings, topology, epoch=epoch,
                 sample_in_epoch=sample_in_epoch, initial_physical_nodes=initial_physical_nodes)


def _partition_beside_permutation(partition: Callable[[], np.ndarray], resampled: Resampled,
                                  settings: OrderSettings,
                                  epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The worker's positions and the epoch's permutation, the latter on a helper thread.

    Neither depends on the other here, and both spend their time in numpy without the GIL.
    Errors and the warning come as if run in sequence: the partition's first, and the
    permutation's warning only once the partition has succeeded.
    """
    with ThreadPoolExecutor(1, "mdsloader-shuffle") as pool:
        pending = pool.submit(_permutation, resampled, settings, epoch)
        big = _strip_padding(partition())
        perm, clipped = pending.result()
    if clipped:
        warn_clipped(stacklevel=2)  # attributed to this module, as py1e_order's warning is
    return big, perm


def _permutation(resampled: Resampled, settings: OrderSettings,
                 epoch: int) -> tuple[np.ndarray, bool]:
    """The whole epoch's shuffle (every canonical node), and whether py1e clipped a span."""
    units = resampled.unit_sizes
    ncn, seed = settings.num_canonical_nodes, settings.shuffle_seed
    block = settings.shuffle_block_size
    if settings.shuffle_algo != "py1e":
        return get_shuffle(settings.shuffle_algo, units, ncn, seed, epoch, block), False
    validate_shuffle_args("py1e", units, ncn, seed, epoch, block)
    return py1e_order_quiet(fixed_pieces(units, ncn, seed), seed, epoch, block)


def _strip_padding(ids: np.ndarray) -> np.ndarray:
    """Drop the -1 padding; usually a suffix, which costs no copy."""
    count = int(np.count_nonzero(ids != -1))
    if (ids[count:] == -1).all():
        return ids[:count]
    return ids[ids != -1]


def shuffled_ids(resampled: Resampled, settings: OrderSettings, epoch: int,
                 positions: np.ndarray) -> np.ndarray:
    """Big ids at the given epoch positions after the shuffle (``positions`` is overwritten)."""
    units = resampled.unit_sizes
    ncn, seed = settings.num_canonical_nodes, settings.shuffle_seed
    block = settings.shuffle_block_size
    # Gathers write into ``positions``: it is ours, and a fresh array would cost page faults.
    if settings.shuffle_algo != "py1e":
        perm = get_shuffle(settings.shuffle_algo, units, ncn, seed, epoch, block)
        return np.take(perm, positions, out=positions, mode="clip")
    validate_shuffle_args("py1e", units, ncn, seed, epoch, block)
    needed = canonical_nodes_touched(positions, int(units.sum()), ncn)
    perm = py1e_order(fixed_pieces(units, ncn, seed), seed, epoch, block, needed)
    return np.take(perm, positions, out=positions, mode="clip")


def canonical_nodes_touched(positions: np.ndarray, total: int, ncn: int) -> np.ndarray:
    """Mask of the canonical nodes (``[c*N//C, (c+1)*N//C)``) that contain any of ``positions``."""
    touched = np.zeros(ncn, bool)
    if ncn == 1:
        touched[:] = positions.size > 0
        return touched
    for begin in range(0, positions.size, 1 << 16):
        chunk = positions[begin:begin + (1 << 16)]
        # Largest c with c*N//C <= k, i.e. ceil((k+1)*C/N) - 1, without a search.
        touched[((chunk + 1) * ncn + total - 1) // total - 1] = True
    return touched
