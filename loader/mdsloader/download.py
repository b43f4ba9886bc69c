"""Prefetching: make shards local ahead of the consumer, on background threads.

A worker's sample sequence is planned as the shard and in-shard index of every position
(:func:`plan_samples`). While the consumer decodes position ``p``, the shards of every position
before ``p + predownload`` are being prepared (downloaded, validated, decompressed) by a thread
pool; :class:`Lookahead` does that bookkeeping for a whole stretch of positions at a time, with
numpy, so a shuffled epoch (a different shard almost every sample) costs a few numpy calls per
thousands of samples instead of Python work per sample. The consumer blocks only when the shard
it needs next is not ready, and a failure in a download thread surfaces in the consumer as the
original exception.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

T = TypeVar("T")


def locate(sample_ids: NDArray[np.int64], shard_ends: NDArray[np.int64]) -> NDArray[np.int64]:
    """Map global sample ids to shard ids, given each shard's cumulative end (vectorised).

    ``side='right'`` skips empty shards: their end equals the previous shard's end.
    """
    return np.searchsorted(shard_ends, sample_ids, side="right").astype(np.int64)


@dataclass(frozen=True, slots=True)
class SamplePlan:
    """A sample sequence as the shard and the in-shard index of each position.

    Attributes:
        shards: Shard id of every sample.
        local: The in-shard index of every sample.
    """

    shards: NDArray[np.int64]
    local: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.shards)


def plan_samples(sample_ids: NDArray[np.int64], shard_ends: NDArray[np.int64]) -> SamplePlan:
    """Locate every sample of a sequence of global ids (vectorised).

    Args:
        sample_ids: The global sample ids, in iteration order.
        shard_ends: ``cumsum(samples_per_shard)``.
    """
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    shard_of = locate(sample_ids, shard_ends)
    starts_of_shard = shard_ends - np.diff(shard_ends, prepend=0)
    return SamplePlan(shards=shard_of, local=sample_ids - starts_of_shard[shard_of])


class Prefetcher:
    """Prepares shards on a thread pool, at most ``predownload`` samples ahead of the consumer.

    Args:
        prepare: Makes one shard local and returns its raw file path (``ShardCache.ensure``).
        threads: Number of concurrent downloads.
    """

    def __init__(self, prepare: Callable[[int], Path], threads: int = 4) -> None:
        self._prepare = prepare
        self._threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()

    def submit(self, shard: int) -> Future[Path]:
        """Prepare one shard on the pool."""
        return self.call(self._prepare, shard)

    def call(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the pool (also used for background planning)."""
        if self._pid != os.getpid():
            # A forked DataLoader worker inherits the pool object but none of its threads.
            self._pool, self._pid = None, os.getpid()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="mds-prefetch")
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        """Stop the threads (running downloads finish; queued ones are dropped)."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None

    def __getstate__(self) -> dict[str, object]:
        # Threads do not survive pickling into DataLoader workers; each copy starts its own.
        return {"_prepare": self._prepare, "_threads": self._threads, "_pool": None, "_pid": -1}


class Lookahead:
    """Keeps shard preparation ``predownload`` samples ahead of a consumer walking a plan.

    Before the consumer takes the sample at position ``p``, the shard of every position before
    ``p + predownload`` is either open (the caller says which through ``is_open``) or being
    prepared on the :class:`Prefetcher`'s threads. Each position is looked at once, when it comes
    within reach, like :meth:`Prefetcher.runs` looks at each run once: a shard that is open then
    and closed by the time its sample is reached is made local by the consumer itself.

    Args:
        prefetcher: The thread pool and the prepare function.
        shards: Shard id of every position (``SamplePlan.shards``).
        predownload: How many samples ahead of the current position to prepare.
    """

    def __init__(self, prefetcher: Prefetcher, shards: NDArray[np.int64], predownload: int) -> None:
        self._prefetcher = prefetcher
        self._shards = shards
        self._ahead = max(predownload, 1)
        self._scanned = 0  # positions before this one have been looked at
        self._pending: dict[int, Future[Path]] = {}
        # _asked[shard] == (shard in _pending), for vectorised checks.
        self._asked = np.zeros(int(shards.max()) + 1 if len(shards) else 0, dtype=bool)

    def advance(self, position: int, is_open: NDArray[np.bool_], limit: int) -> int:
        """Prepare what is now within reach; return how far the consumer may go without asking.

        Args:
            position: The next position the consumer takes.
            is_open: ``is_open[shard]`` says the consumer has the shard open (needs nothing).
            limit: The farthest position (exclusive) the caller wants to go.

        Returns:
            ``end`` with ``position <= end <= limit``: every shard of ``[position, end)`` is open,
            and no position comes within reach before ``end`` whose shard would need preparing.
            ``end == position`` means the next sample's shard is not open: :meth:`wait` for it.
        """
        shards, ahead = self._shards, self._ahead
        total = len(shards)
        limit = min(limit, total)
        reach = min(position + ahead, total)
        if self._scanned < reach:
            window = shards[self._scanned : reach]
            missing = window[~is_open[window]]
            for shard in dict.fromkeys(missing.tolist()):  # first-seen order, once each
                if shard not in self._pending:
                    self._pending[shard] = self._prefetcher.submit(shard)
                    self._asked[shard] = True
            self._scanned = reach
        end = limit
        # The consumer may not pass a position whose shard is not open ...
        closed = ~is_open[shards[position:end]]
        if closed.any():
            end = position + int(closed.argmax())
        # ... nor the point where a shard neither open nor being prepared comes within reach.
        window = shards[self._scanned : end + ahead]
        later = ~(is_open[window] | self._asked[window])
        if later.any():
            end = min(end, self._scanned + int(later.argmax()) - ahead + 1)
        return max(end, position)

    def wait(self, shard: int) -> Path | None:
        """The path of a shard being prepared (blocking until it is), or None if it is not.

        None also when the preparation was cancelled (the dataset was closed meanwhile): the
        caller then prepares the shard itself.

        Raises:
            Exception: Whatever preparing the shard raised.
        """
        future = self._pending.pop(shard, None)
        if future is None:
            return None
        self._asked[shard] = False
        try:
            return future.result()
        except CancelledError:
            return None

    def ready(self, limit: int) -> list[tuple[int, Path]]:
        """Up to ``limit`` shards whose preparation has finished well, first asked first.

        Taken off the pending list, like :meth:`wait`. A failed one stays, so its error is
        raised by :meth:`wait` where the shard is needed. Opening these together spares the
        consumer one thread hand-off per shard (each can cost a GIL switch interval while
        another thread computes).
        """
        done = []
        for shard, future in self._pending.items():
            if len(done) >= limit:
                break
            if future.done() and not future.cancelled() and future.exception() is None:
                done.append((shard, future.result()))
        for shard, _ in done:
            del self._pending[shard]
            self._asked[shard] = False
        return done

    def discard(self, shard: int) -> None:
        """Forget a preparation the consumer no longer needs (it has the shard open)."""
        if self._pending and self._pending.pop(shard, None) is not None:
            self._asked[shard] = False

    def close(self) -> None:
        """Cancel the preparations that have not started."""
        for shard, future in self._pending.items():
            future.cancel()
            self._asked[shard] = False
        self._pending.clear()
