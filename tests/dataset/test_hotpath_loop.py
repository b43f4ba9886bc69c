"""The iteration loop: segments of open shards, lookahead prefetching, readers' LRU, cold starts.

The order itself is checked against the reference elsewhere (test_order); here the loop must
yield exactly the planned ids, decode the right bytes for each, prefetch ``predownload`` samples
ahead position by position, and wait only for the shard the next sample needs.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import mdsloader.dataset as dataset_module
import mdsloader.ordering.streamed as streamed_module
from mdsloader.dataset import StreamingDataset
from mdsloader.download import Lookahead, Prefetcher, plan_samples
from mdsloader.stream import Stream
from tests.dataset.conftest import write_dataset

PAYLOAD = 24


def _planned(ds: StreamingDataset, epoch: int = 0) -> list[int]:
    return ds.worker_sample_ids(epoch, 0, ds._world).tolist()


def _check_payloads(samples: list[dict]) -> None:
    """Every sample's padding is the bytes write_dataset drew for its id: right byte ranges."""
    for sample in samples:
        expected = np.random.default_rng(int(sample["id"])).bytes(PAYLOAD)
        assert sample["pad"] == expected, int(sample["id"])


class Recorder:
    """A prepare function for a Prefetcher that records the shards asked for."""

    def __init__(self, ds: StreamingDataset, fail: int | None = None) -> None:
        self.ds, self.fail = ds, fail
        self.asked: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.free: set[int] = set()  # shards prepared even while release is clear

    def __call__(self, shard: int) -> Path:
        self.asked.append(shard)
        if shard not in self.free:
            self.release.wait(10)
        if shard == self.fail:
            raise OSError(f"boom {shard}")
        return self.ds.cache.ensure(shard)


def _record(ds: StreamingDataset, threads: int = 4, **kwargs) -> Recorder:
    recorder = Recorder(ds, **kwargs)
    ds._prefetcher = Prefetcher(recorder, threads=threads)
    return recorder


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments and plan chunks of a few samples: every boundary case comes up in tiny datasets."""
    monkeypatch.setattr(streamed_module, "FIRST_CHUNK", 5)
    monkeypatch.setattr(streamed_module, "MAX_CHUNK", 11)
    monkeypatch.setattr(dataset_module, "_FIRST_SEGMENT", 2)
    monkeypatch.setattr(dataset_module, "_SEGMENT", 7)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("open_readers", [1, 2, 64])
def test_the_loop_yields_the_plan_and_each_samples_bytes(
    tmp_path: Path, monkeypatch, small_segments, shuffle: bool, open_readers: int
):
    monkeypatch.setattr(dataset_module, "_OPEN_READERS", open_readers)  # evict and reopen
    data = write_dataset(tmp_path / "d", [9, 1, 0, 14, 5, 8], payload=PAYLOAD)
    ds = StreamingDataset(local=str(data), batch_size=4, shuffle=shuffle, predownload=3)
    for epoch in range(2):
        samples = list(ds)
        assert [int(s["id"]) for s in samples] == _planned(ds, epoch)
        _check_payloads(samples)
        open_now = set(np.flatnonzero(ds._is_open).tolist())
        assert open_now == set(ds._readers) and len(open_now) <= open_readers
    ds.close()
    assert not ds._is_open.any() and not ds._readers


def test_streams_of_different_layouts_share_segments(tmp_path: Path, small_segments):
    plain = write_dataset(tmp_path / "a", [6, 6], payload=PAYLOAD)
    named = write_dataset(tmp_path / "b", [5, 7], start=100, columns={"id": "int64", "s": "str"})
    streams = [Stream(local=str(plain)), Stream(local=str(named))]
    ds = StreamingDataset(streams=streams, batch_size=2, shuffle=True, shuffle_block_size=30)
    samples = list(ds)
    ids = [int(s["id"]) for s in samples]
    assert ids == [g if g < 12 else 100 + g - 12 for g in _planned(ds)]  # global id -> "id"
    assert any((a < 100) != (b < 100) for a, b in itertools.pairwise(ids))  # interleaved
    for sample in samples:
        if int(sample["id"]) >= 100:
            assert set(sample) == {"id", "s"} and sample["s"] == f"sample-{int(sample['id'])}"
        else:
            assert set(sample) == {"id", "pad"}
    _check_payloads([s for s in samples if int(s["id"]) < 100])


def test_decoded_arrays_do_not_alias_the_shard_file(tmp_path: Path):
    from streaming import MDSWriter

    out = tmp_path / "arr"
    with MDSWriter(columns={"v": "ndarray:float32", "m": "ndarray:int16"}, out=str(out)) as w:
        for i in range(20):
            w.write({"v": np.full(i + 1, i, np.float32), "m": np.ones((2, i + 1), np.int16)})
    ds = StreamingDataset(local=str(out), batch_size=2, shuffle=True)
    for sample in ds:
        for array in sample.values():
            root = array
            while isinstance(root, np.ndarray):
                root = root.base
            assert type(root) is bytes  # a copy of the record, never the mmap
            assert not array.flags.writeable


def test_prefetching_runs_predownload_samples_ahead_position_by_position(tmp_path: Path):
    remote = write_dataset(tmp_path / "r", [10, 10, 10, 10])
    ds = StreamingDataset(remote=str(remote), local=str(tmp_path / "l"), batch_size=2,
                          predownload=15)  # fmt: skip
    recorder = _record(ds)
    it = iter(ds)
    taken = [int(next(it)["id"]) for _ in range(6)]  # positions 0-5: reach ends before 20
    time.sleep(0.1)
    assert sorted(set(recorder.asked)) == [0, 1]
    taken.append(int(next(it)["id"]))  # position 6: position 20 (shard 2) comes within reach
    time.sleep(0.1)
    assert sorted(set(recorder.asked)) == [0, 1, 2]
    assert taken + [int(s["id"]) for s in it] == list(range(40))
    assert sorted(recorder.asked) == [0, 1, 2, 3]  # each shard prepared once


def test_a_cold_run_waits_only_for_the_next_samples_shard(tmp_path: Path):
    remote = write_dataset(tmp_path / "r", [8, 8, 8, 8])
    ds = StreamingDataset(remote=str(remote), local=str(tmp_path / "l"), batch_size=2,
                          shuffle=True, predownload=32)  # fmt: skip
    plan = _planned(ds)
    first_shard = int(np.searchsorted(ds._catalog.shard_ends, plan[0], side="right"))
    recorder = _record(ds)
    recorder.release.clear()  # every other shard hangs until released
    recorder.free = {first_shard}
    it = iter(ds)
    begin = time.monotonic()
    first = int(next(it)["id"])
    assert time.monotonic() - begin < 5 and first == plan[0]
    assert len(set(recorder.asked)) == 4  # all were asked for: they are within reach
    recorder.release.set()
    assert [first] + [int(s["id"]) for s in it] == plan


def test_a_failed_preparation_is_raised_in_the_consumer_where_its_shard_is_needed(tmp_path):
    remote = write_dataset(tmp_path / "r", [10, 10, 10])
    ds = StreamingDataset(remote=str(remote), local=str(tmp_path / "l"), batch_size=2,
                          predownload=100)  # fmt: skip
    _record(ds, fail=2)
    seen = []
    with pytest.raises(OSError, match="boom 2"):
        for sample in ds:
            seen.append(int(sample["id"]))
    assert seen == list(range(20))


def test_closing_the_dataset_mid_epoch_reopens_what_the_loop_needs(tmp_path: Path):
    remote = write_dataset(tmp_path / "r", [10, 10, 10])
    ds = StreamingDataset(remote=str(remote), local=str(tmp_path / "l"), batch_size=2,
                          predownload=30)  # fmt: skip
    recorder = _record(ds, threads=1)
    recorder.release.clear()  # shard 1 is being prepared and shard 2 queued behind it ...
    recorder.free = {0}
    seen = []
    for k, sample in enumerate(ds):
        seen.append(int(sample["id"]))
        if k % 4 == 3:  # ... when every view and the prefetch threads go (cancelling shard 2)
            ds.close()
            recorder.release.set()
    assert seen == list(range(30))


# ---- Lookahead on its own ----------------------------------------------------------------------


def _lookahead(shards: list[int], predownload: int, prepare) -> Lookahead:
    return Lookahead(Prefetcher(prepare, threads=2), np.array(shards, np.int64), predownload)


def test_lookahead_submits_what_is_within_reach_and_stops_where_it_must_ask():
    asked: list[int] = []
    ahead = _lookahead([0, 0, 1, 1, 2, 2, 3, 3], 3, lambda s: asked.append(s) or Path(str(s)))
    is_open = np.zeros(4, bool)
    assert ahead.advance(0, is_open, 8) == 0  # shard 0 is not open: wait for it
    assert ahead.wait(0) == Path("0") and ahead.wait(0) is None
    time.sleep(0.05)
    assert sorted(asked) == [0, 1]  # positions 0-2
    is_open[0] = True
    # Position 3 (shard 1) comes within reach at 1, but its shard is being prepared already;
    # position 4 (shard 2) comes within reach at 2: the consumer may take 0 and 1.
    assert ahead.advance(0, is_open, 8) == 2
    assert ahead.advance(2, is_open, 8) == 2  # shard 1 is not open
    time.sleep(0.05)
    assert sorted(asked) == [0, 1, 2]
    is_open[:] = True
    assert ahead.advance(2, is_open, 5) == 5 and ahead.advance(5, is_open, 100) == 8
    assert sorted(asked) == [0, 1, 2]  # open shards are never prepared


def test_lookahead_raises_preparation_errors_in_wait_and_cancels_on_close():
    started, release = threading.Event(), threading.Event()

    def prepare(shard: int) -> Path:
        started.set()
        release.wait(5)
        if shard == 0:
            raise OSError("boom")
        return Path(str(shard))

    ahead = _lookahead([0, 1, 2, 3, 4, 5], 6, prepare)
    assert ahead.advance(0, np.zeros(6, bool), 6) == 0
    assert started.wait(5)
    futures = dict(ahead._pending)
    ahead.close()  # two run (2 threads); the rest is cancelled
    release.set()
    assert sum(f.cancelled() for f in futures.values()) == 4
    with pytest.raises(OSError, match="boom"):
        futures[0].result()
    again = _lookahead([0], 1, prepare)
    again.advance(0, np.zeros(1, bool), 1)
    with pytest.raises(OSError, match="boom"):
        again.wait(0)


def test_lookahead_hands_over_finished_preparations_in_order_and_keeps_failures():
    def prepare(shard: int) -> Path:
        if shard == 2:
            raise OSError("boom 2")
        return Path(str(shard))

    ahead = _lookahead([3, 0, 2, 1, 4], 5, prepare)
    ahead.advance(0, np.zeros(5, bool), 5)
    for future in list(ahead._pending.values()):
        with contextlib.suppress(OSError):
            future.result(5)
    assert ahead.ready(2) == [(3, Path("3")), (0, Path("0"))]  # first asked first, at most 2
    assert ahead.ready(10) == [(1, Path("1")), (4, Path("4"))]  # shard 2 failed: left for wait
    assert not ahead._asked[[0, 1, 3, 4]].any() and ahead._asked[2]
    with pytest.raises(OSError, match="boom 2"):
        ahead.wait(2)


def test_plan_samples_locates_every_position_and_skips_empty_shards():
    plan = plan_samples(np.array([0, 1, 3, 4, 2, 5, 8]), np.cumsum([3, 0, 2, 4]))
    assert plan.shards.tolist() == [0, 0, 2, 2, 0, 3, 3]
    assert plan.local.tolist() == [0, 1, 0, 1, 2, 0, 3]
    assert len(plan_samples(np.zeros(0, np.int64), np.cumsum([3]))) == 0
