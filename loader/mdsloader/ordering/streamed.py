"""One worker's epoch as a stream of sample-id chunks (the streamed epoch plan).

The whole-epoch form (:func:`mdsloader.ordering.epoch.worker_sample_ids`) costs memory and time
in proportion to the epoch before the first sample. Here the same ids come in chunks, each
costing work in proportion to itself:

* the partition is a closed form over positions (:mod:`mdsloader.ordering.orig`), evaluated for
  the chunk's range of the worker's slice;
* ``py1e`` is read through windows (:mod:`mdsloader.ordering.py1e_stream`) after one replay of
  the epoch's draws, which a node shares through its plan cache;
* resampled ("big") ids map to sample ids by a search over the shuffle units.

Resuming starts the chunks at the resumption point: nothing before it is built. The other
shuffles (``py1s``, ``py2s``, ``py1br``, ``naive``) and the stream-aware batching methods still
build their permutation once per epoch and are then read chunk by chunk.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from mdsloader.ordering.arrays import present_values, segment_starts
from mdsloader.ordering.epoch import (
    OrderSettings,
    Topology,
    _permutation,
    _stream_batched_ids,
)
from mdsloader.ordering.orig import orig_worker_range, orig_worker_valid
from mdsloader.ordering.partition import Partition, resolve_partition, validate_worker
from mdsloader.ordering.py1e import warn_clipped
from mdsloader.ordering.py1e_band import Py1eBandWindow, node_window
from mdsloader.ordering.py1e_stream import Py1eNodeWindow, Py1eReplay, replay_py1e
from mdsloader.ordering.sampling import Resampled, StreamSpec, resample
from mdsloader.ordering.shuffle import fixed_pieces, validate_shuffle_args
from mdsloader.ordering.spans import Pieces

# The first chunk is small so that the first sample waits for little; later chunks double up to
# a size that keeps numpy's per-call costs negligible.
FIRST_CHUNK = 4096
MAX_CHUNK = 1 << 20
# Epoch positions a chunk may span per canonical node (bounds a window's output buffer).
_SPAN_PER_NODE = 1 << 21

ReplaySource = Callable[[Pieces, int, int, int], Py1eReplay]


class WorkerPlan:
    """A worker's sample ids for one epoch, in order, produced chunk by chunk.

    Build it with :func:`plan_worker` (which does the validation and the epoch's replay, so
    that errors and warnings come from the caller); iterate :meth:`chunks` to get the ids.
    """

    def __init__(self, positions: _Positions, lookup: Callable[[np.ndarray], np.ndarray],
                 small: _SmallIds, max_chunk: int) -> None:
        self._positions = positions
        self._lookup = lookup
        self._small = small
        self._max_chunk = max_chunk

    @property
    def length(self) -> int:
        """Upper bound of the ids to come (padding is dropped as it is met)."""
        return self._positions.length

    def chunk_bounds(self) -> Iterator[tuple[int, int]]:
        """The ``[begin, end)`` ranges of the worker's slice, one per chunk."""
        begin, size = 0, min(FIRST_CHUNK, self._max_chunk)
        while begin < self.length:
            end = min(begin + size, self.length)
            yield begin, end
            begin, size = end, min(2 * size, self._max_chunk)

    def ids(self, begin: int, end: int) -> np.ndarray:
        """Sample ids of the worker's slice ``[begin, end)``, padding removed."""
        positions = self._positions.chunk(begin, end)
        return self._small(self._lookup(positions))

    def chunks(self, ahead: int = 2,
               transform: Callable[[np.ndarray], Any] | None = None) -> PlanChunks:
        """The ids in chunks, computed on a helper thread up to ``ahead`` chunks in advance.

        numpy drops the GIL for the heavy steps (shuffles, sorts), so the next chunks are made
        while the caller reads samples. ``transform``, if given, is applied to each chunk on the
        same thread. Closing the iterator stops the thread.
        """
        return PlanChunks(self, ahead, transform)

    def all_ids(self) -> np.ndarray:
        """Every id at once (for tests and small epochs)."""
        parts = [self.ids(b, e) for b, e in self.chunk_bounds()]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)


class PlanChunks:
    """Iterator over a plan's chunks, filled by a daemon thread through a bounded queue.

    Not fork-safe: a process forked while one is open must make its own.
    """

    _DONE = object()

    def __init__(self, plan: WorkerPlan, ahead: int,
                 transform: Callable[[np.ndarray], Any] | None) -> None:
        self._queue: queue.Queue[object] = queue.Queue(max(ahead, 1))
        self._stop = threading.Event()
        self._transform = transform
        self._thread = threading.Thread(target=self._run, args=(plan,), daemon=True,
                                        name="mdsloader-plan")
        self._thread.start()

    def _run(self, plan: WorkerPlan) -> None:
        _lower_thread_priority()
        try:
            for begin, end in plan.chunk_bounds():
                ids = plan.ids(begin, end)
                if not self._put(self._transform(ids) if self._transform else ids):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
            return
        self._put(self._DONE)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> PlanChunks:
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is self._DONE:
            self._queue.put(item)  # stays exhausted
            raise StopIteration
        if isinstance(item, BaseException):
            self._queue.put(self._DONE)
            raise item
        return item

    def close(self) -> None:
        """Stop the helper thread (it exits at its next chunk boundary)."""
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


# Niceness added to the plan thread: planning ahead should use spare CPU, not the consumer's.
PLAN_THREAD_NICENESS = 5


def _lower_thread_priority() -> None:
    """Make the calling thread yield the CPU to its process's other threads (Linux).

    The plan thread runs ahead of the consumer; on a small machine its next chunks would
    otherwise take CPU from the batches being read now (the first batch in particular). When the
    consumer waits for a chunk it is not runnable, and the plan thread gets the CPU anyway.
    """
    if not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread,
                       os.getpriority(os.PRIO_PROCESS, thread) + PLAN_THREAD_NICENESS)
    except OSError:  # not permitted here: the thread keeps its priority
        pass


def plan_worker(
    streams: Sequence[StreamSpec],
    choose_per_stream: Sequence[int],
    settings: OrderSettings,
    topology: Topology,
    *,
    epoch: int,
    sample_in_epoch: int,
    initial_physical_nodes: int | None,
    replay_source: ReplaySource | None = None,
) -> WorkerPlan:
    """Validate, replay the epoch's draws if needed, and return the worker's streamed plan.

    Yields exactly :func:`mdsloader.ordering.epoch.worker_sample_ids`'s ids, in order.

    Args:
        streams: The dataset's streams.
        choose_per_stream: Samples per stream per epoch.
        settings: Order settings.
        topology: This worker's place.
        epoch: Epoch.
        sample_in_epoch: Global samples already consumed this epoch (resumption).
        initial_physical_nodes: Node count of the first run, for ``relaxed`` resumption.
        replay_source: Makes the ``py1e`` replay (default: :func:`replay_py1e`); a plan cache
            passes its own.

    Raises:
        ValueError: As :func:`~mdsloader.ordering.epoch.worker_sample_ids`.
    """
    if settings.batching_method != "random":
        ids = _stream_batched_ids(streams, choose_per_stream, settings, topology, epoch=epoch,
                                  sample_in_epoch=sample_in_epoch,
                                  initial_physical_nodes=initial_physical_nodes)
        return WorkerPlan(_Listed(ids), _identity, _SmallIds(None), MAX_CHUNK)
    resampled = _resample(streams, choose_per_stream, settings, epoch)
    epoch_size = int(resampled.unit_sizes.sum())
    validate_worker(topology.num_nodes, topology.ranks_per_node, topology.workers_per_rank,
                    node=topology.node, rank_of_node=topology.rank_of_node,
                    worker=topology.worker)
    part = resolve_partition(settings.partition_algo, epoch_size, settings.num_canonical_nodes,
                             topology.num_nodes, topology.ranks_per_node,
                             topology.workers_per_rank, settings.batch_size, sample_in_epoch,
                             initial_physical_nodes)
    positions = _Positions(part, topology)
    readers = topology.num_nodes * topology.ranks_per_node * topology.workers_per_rank
    max_chunk = int(np.clip(_SPAN_PER_NODE * settings.num_canonical_nodes // readers,
                            FIRST_CHUNK, MAX_CHUNK))
    lookup: Callable[[np.ndarray], np.ndarray] = _identity
    if settings.shuffle:
        lookup = _shuffle_lookup(resampled, settings, epoch, replay_source or replay_py1e)
    return WorkerPlan(positions, lookup, _SmallIds(resampled), max_chunk)


def py1e_replay_inputs(streams: Sequence[StreamSpec], choose_per_stream: Sequence[int],
                       settings: OrderSettings,
                       epoch: int) -> tuple[Pieces, int, int, int] | None:
    """The arguments of an epoch's ``py1e`` replay, or None when the order needs none.

    For preparing a coming epoch's plan ahead of time (:meth:`PlanCache.prepare`).
    """
    if not (settings.shuffle and settings.shuffle_algo == "py1e"
            and settings.batching_method == "random"):
        return None
    units = _resample(streams, choose_per_stream, settings, epoch).unit_sizes
    ncn, seed = settings.num_canonical_nodes, settings.shuffle_seed
    return fixed_pieces(units, ncn, seed), seed, epoch, settings.shuffle_block_size


def _resample(streams: Sequence[StreamSpec], choose_per_stream: Sequence[int],
              settings: OrderSettings, epoch: int) -> Resampled:
    return resample(streams, choose_per_stream, epoch=epoch, seed=settings.shuffle_seed,
                    shuffle=settings.shuffle, sampling_method=settings.sampling_method,
                    sampling_granularity=settings.sampling_granularity)


def _shuffle_lookup(resampled: Resampled, settings: OrderSettings, epoch: int,
                    replay_source: ReplaySource) -> Callable[[np.ndarray], np.ndarray]:
    """Epoch position -> big sample id under the shuffle (streamed for ``py1e``)."""
    units = resampled.unit_sizes
    ncn, seed = settings.num_canonical_nodes, settings.shuffle_seed
    block = settings.shuffle_block_size
    if settings.shuffle_algo != "py1e":
        perm, _ = _permutation(resampled, settings, epoch)
        return lambda positions: np.take(perm, positions)
    validate_shuffle_args("py1e", units, ncn, seed, epoch, block)
    replay = replay_source(fixed_pieces(units, ncn, seed), seed, epoch, block)
    if replay.clipped:
        warn_clipped(stacklevel=4)
    return _Py1eLookup(replay)


class _Py1eLookup:
    """Epoch positions -> big ids through one node window (:func:`node_window`) per canonical
    node."""

    def __init__(self, replay: Py1eReplay) -> None:
        self._replay = replay
        self._bounds = replay.node_bounds
        self._windows: dict[int, Py1eBandWindow | Py1eNodeWindow] = {}

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty(positions.size, np.int64)
        if not positions.size:
            return out
        if len(self._bounds) == 2:
            self._fill(0, positions, slice(None), out)
            return out
        node = np.searchsorted(self._bounds, positions, "right") - 1
        for c in present_values(node, len(self._bounds) - 1).tolist():
            self._fill(c, positions, node == c, out)
        return out

    def _fill(self, node: int, positions: np.ndarray, where: slice | np.ndarray,
              out: np.ndarray) -> None:
        window = self._windows.get(node)
        if window is None:
            window = self._windows[node] = node_window(self._replay, node)
        local = positions[where] - int(self._bounds[node])
        lo, hi = int(local.min()), int(local.max()) + 1
        out[where] = window.take(lo, hi)[local - lo]


class _Positions:
    """The worker's slice of the partition, evaluated range by range."""

    def __init__(self, part: Partition, topology: Topology) -> None:
        self._part = part
        self._node, self._rank = topology.node, topology.rank_of_node
        self._worker = topology.worker
        full = part.batches * part.batch_size
        self.length = full if part.recut else orig_worker_valid(part.plan, self._worker)

    def chunk(self, begin: int, end: int) -> np.ndarray:
        """Positions of ``[begin, end)`` of the slice, padding dropped."""
        if not self._part.recut:
            return orig_worker_range(self._part.plan, self._node, self._rank, self._worker,
                                     begin, end)
        batch, slot = np.divmod(np.arange(begin, end, dtype=np.int64), self._part.batch_size)
        ids = self._part.ids(self._node, self._rank, self._worker, batch, slot)
        return ids[ids != -1]


class _Listed:
    """Positions already listed in full (the stream-aware batching methods)."""

    def __init__(self, ids: np.ndarray) -> None:
        self._ids = ids
        self.length = ids.size

    def chunk(self, begin: int, end: int) -> np.ndarray:
        return self._ids[begin:end]


def _identity(values: np.ndarray) -> np.ndarray:
    return values


class _SmallIds:
    """Big (resampled) ids -> global sample ids, by a search over the shuffle units."""

    def __init__(self, resampled: Resampled | None) -> None:
        self._identity = resampled is None or resampled.is_identity
        if self._identity:
            return
        assert resampled is not None
        sizes = resampled.unit_sizes
        self._starts = segment_starts(sizes)
        self._first = resampled.shard_offsets[resampled.unit_shard]
        self._partial = resampled.unit_partial
        self._partial_ids = resampled.partial_ids
        self._partial_start = np.zeros(len(sizes), np.int64)
        self._partial_start[self._partial] = segment_starts(sizes[self._partial])

    def __call__(self, big: np.ndarray) -> np.ndarray:
        if self._identity:
            return big
        unit = np.searchsorted(self._starts, big, "right") - 1
        within = big - self._starts[unit]
        out = self._first[unit] + within
        if self._partial_ids.size:
            hit = self._partial[unit]
            out[hit] = self._partial_ids[self._partial_start[unit[hit]] + within[hit]]
        return out
