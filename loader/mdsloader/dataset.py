"""StreamingDataset: a torch IterableDataset over one or more MDS streams, order-compatible with
mosaicml-streaming.

How the pieces fit (each in its own module):

* :mod:`mdsloader.stream` fetches each stream's index (checking a cached one against the remote);
* :mod:`mdsloader.cache` makes shards local once per node (flock + atomic rename, LRU eviction);
* :mod:`mdsloader.order` asks :mod:`mdsloader.ordering` for the exact sample ids this worker yields;
* :mod:`mdsloader.download` prefetches shards ahead of the consumer on threads;
* :mod:`mdsloader.state` resolves the epoch and the resume offset without shared memory (its module
  docstring explains how the epoch counter survives non-persistent DataLoader workers).

The iteration loop works on stretches ("segments") of up to a few thousand samples whose shards
are all open: readiness, prefetch, LRU stamps and the byte range of every sample are settled for
the whole segment with numpy, and the per-sample loop is only ``decode(mmap[begin:end])``.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray
from torch.utils.data import IterableDataset, get_worker_info

from mdsloader.cache import ShardCache, parse_bytes
from mdsloader.catalog import Catalog, load_catalog
from mdsloader.download import Lookahead, Prefetcher, SamplePlan, plan_samples
from mdsloader.gathered import GatheredSamples, gather_available
from mdsloader.options import validate_order_options
from mdsloader.order import EpochPlanner
from mdsloader.ordering.streamed import WorkerPlan
from mdsloader.plan_cache import PlanCache
from mdsloader.shardview import ShardView
from mdsloader.state import EpochLedger, ResumeState, resolve_epoch
from mdsloader.stream import Stream, lock_dir_for, resolve_stream_weights
from mdsloader.world import World, detect_world

_OPEN_READERS = 64  # mmaps cost address space only
_TOUCH_EVERY = 5.0  # seconds between LRU stamps of a shard being read
_READ_RETRIES = 3
# Samples settled at a time: the first segment is small, so the first sample comes quickly;
# later ones grow to _SEGMENT, which makes the per-segment numpy work a few ns per sample.
_FIRST_SEGMENT = 256
_SEGMENT = 8192
# Seconds into an epoch before the next epoch's plan is prepared in the background.
_PREPARE_DELAY = 5.0


class StreamingDataset(IterableDataset):  # type: ignore[type-arg]
    """Stream MDS shards from remote storage (or a local directory) into PyTorch.

    Keyword arguments and defaults follow mosaicml-streaming's ``StreamingDataset``; for the same
    index, seed, epoch, canonical nodes, shuffle algorithm, block size, partition algorithm,
    global batch size and topology, every rank yields the same samples in the same order, and
    ``state_dict`` results are interchangeable with the reference's.

    Args:
        streams: Several :class:`Stream` sources (exclusive with ``remote``/``local``).
        remote: Remote dataset directory (``s3://...`` or a local/NFS path).
        local: Local cache directory; derived per user from ``remote`` and ``split`` if None.
        split: Subdirectory of remote and local.
        download_retry: Retries after a failed download attempt (attempts = retries + 1).
        download_timeout: Seconds allowed for one network read.
        validate_hash: Hash algorithm checked on every downloaded file (zip file if compressed).
        keep_zip: Keep compressed shard files after decompression.
        epoch_size: Samples per epoch over all streams (``int`` or ``"100k"``-style).
        predownload: Samples to prefetch ahead per worker (default ``8 * batch_size`` or 64).
        cache_limit: Byte budget of the local cache (``int`` or ``"10gb"``); LRU eviction of
            shards that have a remote copy.
        sampling_method: ``'balanced'`` or ``'fixed'``.
        sampling_granularity: Samples taken from a shard at a time when subsampling.
        partition_algo: ``'orig'`` or ``'relaxed'``.
        num_canonical_nodes: Canonical nodes (default: physical nodes, or 64x for py1s/py2s).
        batch_size: Per-device batch size (required to iterate).
        shuffle: Shuffle samples.
        shuffle_algo: ``'py1e'``, ``'py1br'``, ``'py1s'``, ``'py2s'`` or ``'naive'``.
        shuffle_seed: Seed of all randomness.
        shuffle_block_size: Shuffle block (default ``max(4_000_000 // NCN, 1 << 18)``).
        batching_method: ``'random'``, ``'stratified'``, ``'per_stream'`` or
            ``'device_per_stream'`` (README, "Batching methods").
        allow_unsafe_types: Allow ``pkl`` columns (unpickling runs code from the dataset).
        replication: Consecutive ranks that receive identical samples.

    Raises:
        ValueError: Invalid or inconsistent arguments, or a cache limit that is too small (it
            must exceed the indexes and hold 4x the largest shard).
        EmptyDatasetError: A stream without samples (a ``ValueError`` and a ``RuntimeError``).
        UnsafeTypeError: A ``pkl`` column without ``allow_unsafe_types=True``.
        IndexNotFoundError: No remote and no local index (also a ``RuntimeError``).
        StorageError: An index could not be fetched.

    Warns:
        UserWarning: ``predownload`` is smaller than ``batch_size`` (as the reference warns).
    """

    def __init__(
        self,
        *,
        streams: Sequence[Stream] | None = None,
        remote: str | None = None,
        local: str | None = None,
        split: str | None = None,
        download_retry: int = 2,
        download_timeout: float = 60.0,
        validate_hash: str | None = None,
        keep_zip: bool = False,
        epoch_size: int | str | None = None,
        predownload: int | None = None,
        cache_limit: int | str | None = None,
        sampling_method: str = "balanced",
        sampling_granularity: int = 1,
        partition_algo: str = "relaxed",
        num_canonical_nodes: int | None = None,
        batch_size: int | None = None,
        shuffle: bool = False,
        shuffle_algo: str = "py1e",
        shuffle_seed: int = 9176,
        shuffle_block_size: int | None = None,
        batching_method: str = "random",
        allow_unsafe_types: bool = False,
        replication: int | None = None,
    ) -> None:
        self._options = validate_order_options(
            epoch_size=epoch_size, sampling_method=sampling_method,
            sampling_granularity=sampling_granularity, partition_algo=partition_algo,
            num_canonical_nodes=num_canonical_nodes, batch_size=batch_size, shuffle=shuffle,
            shuffle_algo=shuffle_algo, shuffle_seed=shuffle_seed,
            shuffle_block_size=shuffle_block_size, batching_method=batching_method,
            replication=replication,
        )  # fmt: skip
        self.batch_size = batch_size
        if predownload is not None and batch_size is not None and predownload < batch_size:
            warnings.warn(
                f"predownload < batch_size ({predownload} < {batch_size}): batches may wait for "
                "downloads. Set predownload to at least batch_size.",
                UserWarning,
                stacklevel=2,
            )
        self.predownload = predownload if predownload is not None else 8 * (batch_size or 8)
        self.allow_unsafe_types = allow_unsafe_types
        # Mutable like the reference's: a loaded state dict overrides them.
        self.num_canonical_nodes = num_canonical_nodes
        self.shuffle_seed = shuffle_seed
        self.shuffle_block_size = shuffle_block_size
        self.initial_physical_nodes: int | None = None
        self.streams = _make_streams(
            streams, remote=remote, local=local, split=split, download_retry=download_retry,
            download_timeout=download_timeout, validate_hash=validate_hash, keep_zip=keep_zip,
        )  # fmt: skip
        self._catalog = load_catalog(self.streams, allow_unsafe_types=allow_unsafe_types)
        self.cache_limit = _check_cache_limit(cache_limit, self._catalog)
        self.cache = ShardCache(
            self.streams, self._catalog.shards, self._catalog.stream_of_shard, self.cache_limit
        )
        self._planner = EpochPlanner(self._catalog, self.streams, self._options)
        # Epoch plans are shared by the node's processes beside the first stream's cache.
        self._plan_cache = PlanCache(lock_dir_for(self.streams[0].local_root) / "plans")
        self.epoch_size = self._planner.epoch_size
        resolve_stream_weights(
            self.streams, self._planner.choose_per_stream, self._catalog.samples_per_stream.tolist()
        )
        self._rank_world = detect_world()
        self._world = self._rank_world.replicate(replication) if replication else self._rank_world
        self.length = math.ceil(self.epoch_size / self._world.num_ranks)
        self._ledger = EpochLedger()
        self._finalizer = weakref.finalize(self, self._ledger.remove)
        self._init_runtime()

    def _init_runtime(self) -> None:
        """Per-process state that never travels into DataLoader workers."""
        self._readers: OrderedDict[int, ShardView] = OrderedDict()
        # _is_open[shard] == (shard in _readers), for the loop's vectorised readiness checks.
        self._is_open = np.zeros(len(self._catalog.shards), dtype=bool)
        self._touched: dict[int, float] = {}
        self._prefetcher = Prefetcher(self.cache.ensure, threads=min(8, max(2, self.num_shards)))
        ends = self._catalog.shard_ends
        self._shard_ends_list: list[int] = ends.tolist()
        self._shard_starts_list: list[int] = (ends - self._catalog.samples_per_shard).tolist()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_readers", "_is_open", "_prefetcher", "_finalizer", "_touched",
                    "_shard_ends_list", "_shard_starts_list"):  # fmt: skip
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_runtime()

    # ---- sizes --------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Unique samples over all streams."""
        return self._catalog.num_samples

    @property
    def num_samples(self) -> int:
        """Unique samples over all streams (the reference's attribute name)."""
        return self._catalog.num_samples

    @property
    def num_shards(self) -> int:
        """Shards over all streams."""
        return len(self._catalog.shards)

    @property
    def samples_per_shard(self) -> NDArray[np.int64]:
        """Samples of each shard, streams concatenated."""
        return self._catalog.samples_per_shard

    @property
    def shards(self) -> Sequence[Any]:
        """Every shard's index entry (``ShardInfo``: ``samples``, ``compression``, ``raw_data``,
        ``zip_data``, columns, ...), streams concatenated: the reference's ``shards`` list.

        A read-only sequence backed by arrays; an entry is built when it is read."""
        return self._catalog.shards

    # ---- order settings, read back as the reference's attributes ---------------------------

    @property
    def batching_method(self) -> str:
        return self._options.batching_method

    @property
    def shuffle(self) -> bool:
        return self._options.shuffle

    @property
    def shuffle_algo(self) -> str:
        return self._options.shuffle_algo

    @property
    def partition_algo(self) -> str:
        return self._options.partition_algo

    @property
    def sampling_method(self) -> str:
        return self._options.sampling_method

    @property
    def sampling_granularity(self) -> int:
        return self._options.sampling_granularity

    # ---- manual cache control -----------------------------------------------------------------

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        """Make a shard local now (download, validate, decompress), as the reference offers.

        Safe from any thread or process of the node. With ``blocking=False``, return at once if
        another thread or process is preparing the shard.
        """
        if blocking:
            self.cache.ensure(shard_id)
        else:
            self.cache.try_ensure(shard_id)

    def evict_shard(self, shard_id: int) -> None:
        """Delete a shard's local files (the next read downloads it again), as the reference.

        Waits for a preparation of the shard in progress to finish first. Unlike the reference,
        a shard of a stream without a remote is never deleted: its files are the only copy.
        """
        self._close_reader(shard_id)
        self.cache.evict_locked(shard_id)

    def __len__(self) -> int:
        """Samples this rank yields per epoch: ``ceil(epoch_size / ranks)``."""
        return self.length

    # ---- random access ------------------------------------------------------------------------

    def __getitem__(self, at: int | slice | Sequence[int] | NDArray[np.integer]) -> Any:
        """One sample (``int``) or a list of samples (slice, list, or numpy array of ids).

        Raises:
            IndexError: An id outside ``[-size, size)``.
            TypeError: An unsupported index type.
        """
        if type(at) is int:  # the common case first: no isinstance chain
            return self.get_item(at)
        if isinstance(at, int | np.integer):
            return self.get_item(int(at))
        if isinstance(at, slice):
            return [self.get_item(i) for i in range(*at.indices(self.size))]
        if isinstance(at, np.ndarray | list | tuple):
            return [self[sub] for sub in at]
        raise TypeError(f"unsupported index type {type(at).__name__}")

    def get_item(self, sample_id: int) -> dict[str, Any]:
        """Decode one sample by global id, making its shard local first if needed."""
        size = self._catalog.num_samples
        if sample_id < 0:
            sample_id += size
        if not 0 <= sample_id < size:
            raise IndexError(f"sample {sample_id} is out of range for {size} samples")
        shard = bisect.bisect_right(self._shard_ends_list, sample_id)
        reader = self._readers.get(shard)
        if reader is None:
            reader = self._open_reader(shard, self.cache.ensure(shard))
        # ShardView.__getitem__ inlined: this is the whole per-call cost of random access.
        index = sample_id - self._shard_starts_list[shard]
        offsets = reader.offsets
        return reader.decode(reader.data[offsets[index] : offsets[index + 1]])

    def _open_reader(self, shard: int, path: Path) -> ShardView:
        info = self._catalog.shards[shard]
        for attempt in range(_READ_RETRIES + 1):
            try:
                reader = ShardView(path, info)
                break
            except FileNotFoundError:
                # Evicted by another process between ensure() and open: fetch it again.
                if attempt == _READ_RETRIES:
                    raise
                path = self.cache.ensure(shard)
        self._readers[shard] = reader
        self._is_open[shard] = True
        while len(self._readers) > _OPEN_READERS:
            closed, old = self._readers.popitem(last=False)
            self._is_open[closed] = False
            _close(old)
        return reader

    def _close_reader(self, shard: int) -> None:
        reader = self._readers.pop(shard, None)
        if reader is not None:
            self._is_open[shard] = False
            _close(reader)

    def _drop_stale_readers(self) -> None:
        """Close open shards whose cached file was deleted or replaced since they were opened.

        Within an epoch such a shard is still read from its open map (Linux keeps the unlinked
        file alive, so the data stays whole); from the next epoch on it is made local again
        through the cache, downloaded again if it is missing, and the old inode's disk space is
        released. One ``stat`` per open shard per epoch.
        """
        for shard, reader in list(self._readers.items()):
            if not reader.is_current():
                self._close_reader(shard)

    # ---- epochs and resumption ----------------------------------------------------------------

    def _adopt(self, state: ResumeState | None, world: World) -> None:
        """Apply a resume state (if any), then fill defaults that depend on the topology."""
        if state is not None:
            self.num_canonical_nodes = state.num_canonical_nodes
            self.shuffle_seed = state.shuffle_seed
            self.initial_physical_nodes = state.initial_physical_nodes
        if not self.num_canonical_nodes:
            self.num_canonical_nodes = self._planner.default_ncn(world.num_nodes)
        if self.shuffle_block_size is None:
            self.shuffle_block_size = self._planner.default_block_size(self.num_canonical_nodes)

    def _begin_epoch(self, world: World) -> tuple[int, int]:
        """Resolve and record the epoch this worker slot starts now (see :mod:`mdsloader.state`)."""
        slot = (world.worker_of_rank, world.workers_per_rank)
        presumed = self._ledger.next_epoch(slot)
        epoch, offset, applied = resolve_epoch(presumed, self._ledger.load_resume())
        self._adopt(applied, world)
        self._ledger.set_next_epoch(slot, epoch + 1)
        return epoch, offset

    def state_dict(self, num_samples: int, from_beginning: bool) -> dict[str, Any]:
        """The training state, in the reference's format (call it in the main process).

        Args:
            num_samples: Samples consumed so far in this epoch, over all ranks.
            from_beginning: Whether ``num_samples`` counts from the start of the epoch (True) or
                from where this run resumed (False, what StreamingDataLoader passes).

        Returns:
            ``{"epoch", "sample_in_epoch", "num_canonical_nodes", "shuffle_seed",
            "initial_physical_nodes"}``.
        """
        epoch = self._ledger.next_epoch() - 1
        epoch, offset, applied = resolve_epoch(epoch, self._ledger.load_resume())
        self._adopt(applied, self._world)
        nodes = self.initial_physical_nodes or self._world.num_nodes
        return {
            "epoch": epoch,
            "sample_in_epoch": num_samples if from_beginning else offset + num_samples,
            "num_canonical_nodes": self.num_canonical_nodes,
            "shuffle_seed": self.shuffle_seed,
            "initial_physical_nodes": nodes,
        }

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Resume from a state dict (ours or the reference's) at the next ``__iter__``.

        Call it in the main process before iterating; DataLoader workers, persistent or not,
        pick it up when their next epoch starts. Only the state's samples after
        ``sample_in_epoch`` are produced: the position is reached arithmetically.

        Raises:
            ValueError: The dict lacks the required keys or holds non-integers.
        """
        self._ledger.save_resume(ResumeState.from_dict(obj))

    # ---- iteration ----------------------------------------------------------------------------

    def _worker_world(self) -> World:
        info = get_worker_info()
        if info is None:
            return self._world
        return self._world.with_workers(info.id, info.num_workers)

    def worker_sample_ids(
        self, epoch: int, sample_in_epoch: int, world: World
    ) -> NDArray[np.int64]:
        """The global sample ids one worker yields in an epoch, in order (no padding)."""
        return self._worker_plan(epoch, sample_in_epoch, world).all_ids()

    def _worker_plan(self, epoch: int, sample_in_epoch: int, world: World) -> WorkerPlan:
        """One worker's streamed plan for an epoch (validated; the epoch's draws replayed)."""
        if not isinstance(self.batch_size, int):
            raise ValueError(
                "Please pass `batch_size` to StreamingDataset: the per-device batch size, equal "
                "to the DataLoader's; the sample order depends on it."
            )
        self._adopt(None, world)  # fill NCN and block-size defaults if still unset
        return self._planner.worker_plan(
            world,
            replay_source=self._plan_cache.py1e_replay,
            epoch=epoch,
            sample_in_epoch=sample_in_epoch,
            num_canonical_nodes=int(self.num_canonical_nodes),  # type: ignore[arg-type]
            shuffle_seed=self.shuffle_seed,
            shuffle_block_size=int(self.shuffle_block_size),  # type: ignore[arg-type]
            batch_size=self.batch_size,
            initial_physical_nodes=self.initial_physical_nodes,
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Yield this worker's samples of the next epoch (resuming if a state was loaded)."""
        world = self._worker_world()
        epoch, sample_in_epoch = self._begin_epoch(world)
        self._drop_stale_readers()
        plan = self._worker_plan(epoch, sample_in_epoch, world)
        self._prepare_plan_later(epoch + 1)
        return self._iter_plan(plan)

    def prepare_plan(self, *, background: bool = False) -> threading.Thread | None:
        """Make the coming epoch's plan now, so that iterating starts from the node's plan cache.

        A run's first epoch otherwise waits, before its first sample, for the replay of the
        epoch's random draws (about 10 ns a sample: 10 s at a billion samples). Call this in the
        main process after ``load_state_dict`` (if any), for example while the model loads; the
        DataLoader's workers then map the plan. Later epochs are prepared automatically while the
        previous one runs. Nothing to do (returns at once) unless the order is a shuffled ``py1e``
        with ``random`` batching.

        Args:
            background: Run on a daemon thread and return it (join it to wait).

        Returns:
            The thread when ``background``, else None.
        """
        presumed = self._ledger.next_epoch()
        epoch, _, applied = resolve_epoch(presumed, self._ledger.load_resume())
        self._adopt(applied, self._world)
        inputs = self._replay_inputs(epoch)
        if inputs is None:
            return None
        if not background:
            self._plan_cache.py1e_replay(*inputs)
            return None
        thread = threading.Thread(target=self._plan_cache.py1e_replay, args=inputs, daemon=True,
                                  name="mdsloader-prepare-plan")
        thread.start()
        return thread

    def _replay_inputs(self, epoch: int) -> tuple | None:
        """The arguments of ``epoch``'s ``py1e`` replay under the current settings, or None."""
        return self._planner.next_replay_inputs(
            epoch=epoch, num_canonical_nodes=int(self.num_canonical_nodes),  # type: ignore[arg-type]
            shuffle_seed=self.shuffle_seed,
            shuffle_block_size=int(self.shuffle_block_size),  # type: ignore[arg-type]
            batch_size=int(self.batch_size or 1),
        )

    def _prepare_plan_later(self, epoch: int) -> None:
        """Have the node's plan cache prepare ``epoch``'s plan while this epoch runs.

        Only the first epoch of a run then waits for the replay of its draws (10 s at a
        billion samples); the node's other workers find the plan being made and skip.
        """
        inputs = self._replay_inputs(epoch)
        if inputs is not None:
            # Started a little later, so that it does not compete with the epoch's first batches.
            timer = threading.Timer(_PREPARE_DELAY, self._plan_cache.prepare, inputs)
            timer.daemon = True
            timer.start()

    def _iter_plan(self, plan: WorkerPlan) -> Iterator[dict[str, Any]]:
        # The per-sample loop: everything else is settled once per segment (see _segments).
        segments = self._segments(plan)
        try:
            for decode, data, begins, ends in segments:
                if type(data) is GatheredSamples:  # several shards, copied out block by block
                    for joined, offsets in data.blocks():
                        for begin, end in pairwise(offsets):
                            yield decode(joined[begin:end])
                elif type(data) is not list:  # one shard
                    for begin, end in zip(begins, ends):
                        yield decode(data[begin:end])
                elif type(decode) is not list:  # several shards of one layout
                    for buffer, begin, end in zip(data, begins, ends):
                        yield decode(buffer[begin:end])
                else:  # streams of different layouts
                    for dec, buffer, begin, end in zip(decode, data, begins, ends):
                        yield dec(buffer[begin:end])
        finally:
            segments.close()

    def _segments(self, plan: WorkerPlan) -> Iterator[_Segment]:
        """The segments of a worker's sample sequence, shards opened (and waited for) as needed."""
        # The plan comes in chunks made on a helper thread ahead of this loop (numpy drops the
        # GIL), each already located in its shards; the first chunk is short, so the first
        # sample waits for little, and memory stays bounded whatever the epoch's size.
        ends = self._catalog.shard_ends
        chunks = plan.chunks(transform=partial(plan_samples, shard_ends=ends))
        try:
            size = _FIRST_SEGMENT
            for samples in chunks:
                yield from self._plan_segments(samples, size)
                size = _SEGMENT
        finally:
            chunks.close()

    def _plan_segments(self, plan: SamplePlan, size: int) -> Iterator[_Segment]:
        """Walk a plan in segments of open shards, starting at ``size`` samples and doubling.

        Only the shard of the next sample is ever waited for: a cold run yields its first sample
        as soon as that one shard is local, with the others still being prepared.
        """
        ahead = Lookahead(self._prefetcher, plan.shards, self.predownload)
        position, total = 0, len(plan)
        try:
            while position < total:
                end = ahead.advance(position, self._is_open, position + size)
                if end == position:  # the next sample's shard is not open
                    shard = int(plan.shards[position])
                    # None: not being prepared (it was open when it came within reach and has
                    # been closed since, or close() cancelled its preparation).
                    self._open_reader(shard, ahead.wait(shard) or self.cache.ensure(shard))
                    # Open whatever else is ready too, without evicting anything for it.
                    for other, path in ahead.ready(_OPEN_READERS - len(self._readers)):
                        self._open_reader(other, path)
                    continue
                yield self._segment(plan, position, end, ahead)
                position, size = end, min(2 * size, _SEGMENT)
        finally:
            ahead.close()

    def _segment(self, plan: SamplePlan, lo: int, hi: int, ahead: Lookahead) -> _Segment:
        """The decoders, buffers and byte ranges of positions ``[lo, hi)``, all of open shards."""
        shards, local = plan.shards[lo:hi], plan.local[lo:hi]
        first = shards[0]
        now = time.monotonic()
        if shards[-1] == first and (shards == first).all():
            reader = self._use(int(first), now, ahead)
            offsets = reader.offset_array
            begins, ends = offsets[local].astype(np.int64), offsets[local + 1].astype(np.int64)
            return _Segment(reader.decode, reader.data, _ints(begins), _ints(ends))
        return self._mixed_segment(shards, local, now, ahead)

    def _mixed_segment(
        self, shards: NDArray[np.int64], local: NDArray[np.int64], now: float, ahead: Lookahead
    ) -> _Segment:
        """A segment over several shards: one buffer (and decoder, if they differ) per sample."""
        # Sort the positions by shard, gather each shard's byte ranges with one numpy call per
        # shard, then scatter them back into sequence order.
        count = len(shards)
        order = np.argsort(shards)
        grouped, local = shards[order], local[order]
        cuts = np.flatnonzero(grouped[1:] != grouped[:-1]) + 1
        sorted_begins, sorted_ends = np.empty(count, np.uint32), np.empty(count, np.uint32)
        readers = []
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), count]):
            reader = self._use(int(grouped[a]), now, ahead)
            offsets, indices = reader.offset_array, local[a:b]
            np.take(offsets, indices, out=sorted_begins[a:b])
            np.take(offsets, indices + 1, out=sorted_ends[a:b])
            readers.append(reader)
        begins, ends = np.empty(count, np.int64), np.empty(count, np.int64)
        begins[order], ends[order] = sorted_begins, sorted_ends
        group_of = np.zeros(count, np.intp)  # index into readers of each position
        group_of[cuts] = 1
        group_of[order] = np.cumsum(group_of)
        decode: Any = readers[0].decode
        uniform = all(reader.decode is decode for reader in readers)
        if uniform and gather_available():
            buffers = [reader.data for reader in readers]
            return _Segment(decode, GatheredSamples(buffers, group_of, begins, ends), [], [])
        data = _objects([reader.data for reader in readers])[group_of].tolist()
        if not uniform:
            decode = _objects([reader.decode for reader in readers])[group_of].tolist()
        return _Segment(decode, data, _ints(begins), _ints(ends))

    def _use(self, shard: int, now: float, ahead: Lookahead) -> ShardView:
        """An open shard about to be read: mark it recently used (readers' LRU, cache stamp)."""
        self._readers.move_to_end(shard)
        self._touch(shard, now)
        ahead.discard(shard)
        return self._readers[shard]

    def _touch(self, shard: int, now: float) -> None:
        """Refresh an open shard's LRU stamp now and then (it is read through its mmap)."""
        if now - self._touched.get(shard, 0.0) > _TOUCH_EVERY:
            self._touched[shard] = now
            if self.cache_limit is not None:
                self.cache.touch(shard)

    def close(self) -> None:
        """Stop prefetch threads and unmap open shards (also done at garbage collection)."""
        self._prefetcher.close()
        while self._readers:
            _close(self._readers.popitem()[1])
        self._is_open[:] = False


class _Segment(NamedTuple):
    """Consecutive samples of a worker's sequence, ready to decode as ``decode(data[b:e])``.

    ``data`` is one shard's mmap, or, when the segment spans several shards, a
    :class:`~mdsloader.gathered.GatheredSamples` of their mmaps (its own byte ranges; ``begins``
    and ``ends`` are then empty), or without the compiled copy or with layouts that differ, a
    list of mmaps (one per sample); ``decode`` is a list too (one per sample) when the layouts
    differ. The segment holds its mmaps, so a reader closed meanwhile (LRU) does not unmap them
    under it.
    """

    decode: Any
    data: Any
    begins: list[int]
    ends: list[int]


def _objects(items: list[Any]) -> NDArray[np.object_]:
    """A 1-D object array of ``items`` (np.array would unpack mmaps, which are sequences)."""
    array = np.empty(len(items), dtype=object)
    for k, item in enumerate(items):
        array[k] = item
    return array


def _ints(values: NDArray[np.int64]) -> list[int]:
    """A contiguous int64 array as a list of Python ints (memoryview's is twice numpy's speed)."""
    return memoryview(values).tolist()


def _close(reader: Any) -> None:
    close = getattr(reader, "close", None)
    if close is not None:
        close()


def _make_streams(streams: Sequence[Stream] | None, **default: Any) -> list[Stream]:
    """Validate the streams/remote/local choice and apply the dataset defaults to each stream."""
    if bool(streams) == bool(default["remote"] or default["local"]):
        raise ValueError("You must provide either `streams` or `remote`/`local`, but not both.")
    if streams:
        result = list(streams)
    else:
        result = [Stream(remote=default["remote"], local=default["local"], split=default["split"])]
    for stream in result:
        stream.apply_default(default)
    return result


def _check_cache_limit(cache_limit: int | str | None, catalog: Catalog) -> int | None:
    """Parse ``cache_limit`` and apply the reference's construction-time checks."""
    if not cache_limit:
        return None
    limit = parse_bytes(cache_limit)
    if limit <= catalog.index_bytes:
        raise ValueError(
            f"Minimum cache usage ({catalog.index_bytes} bytes) is larger than the cache limit "
            f"({limit} bytes). Please raise `cache_limit`."
        )
    largest = catalog.max_shard_bytes
    if limit < 4 * largest:
        raise ValueError(
            f"Cache limit ({limit} bytes) is too low. Increase the `cache_limit` to at least four "
            f"times the largest shard size ({largest} bytes, raw plus zip)."
        )
    return limit


__all__ = ["Stream", "StreamingDataset"]
