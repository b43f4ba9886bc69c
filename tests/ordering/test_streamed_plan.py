"""The streamed epoch plan yields exactly the whole-epoch order, chunk by chunk, window by window.

The whole-epoch functions (``worker_sample_ids``, ``get_shuffle``, ``get_partitions``) are checked
against the reference in the other ordering tests; here the streamed plan is checked against them
over sizes where the window and chunk edges matter (tiny steps and chunks, spans crossing them,
blocks larger and smaller than spans, NCN 1..8, uneven and empty shards, resumption, re-cut
topologies), and once against the reference itself at 10^7 samples.
"""

from __future__ import annotations

import multiprocessing
import warnings
from pathlib import Path

import numpy as np
import pytest

import mdsloader.ordering.py1e_band as py1e_band
import mdsloader.ordering.py1e_stream as py1e_stream
import mdsloader.ordering.streamed as streamed
import mdsloader.plan_cache as plan_cache_module
from mdsloader.ordering import (
    OrderSettings,
    StreamSpec,
    Topology,
    get_shuffle,
    resolve_stream_choose,
    worker_sample_ids,
)
from mdsloader.ordering.py1e_band import Py1eBandWindow, band_window_available
from mdsloader.ordering.py1e_stream import Py1eNodeWindow, replay_py1e
from mdsloader.ordering.shuffle import fixed_pieces
from mdsloader.plan_cache import PlanCache
from tests.conftest import require

WINDOWS = {"bands": Py1eBandWindow, "numpy": Py1eNodeWindow}


def _tiny_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(py1e_band, "_FIRST_EXTRA", 1)
    monkeypatch.setattr(py1e_band, "_GROWTH", 2)
    monkeypatch.setattr(py1e_band, "_MIN_WIDEST", 1)
    monkeypatch.setattr(py1e_band, "_CLOSE", 2)
    monkeypatch.setattr(py1e_band, "_RETAIN", 3)


@pytest.fixture(params=sorted(WINDOWS))
def window_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Each node-window implementation in turn: compiled bands, and the numpy fallback."""
    if request.param == "bands":
        require(band_window_available(), "the loader was installed without its C extension")
    monkeypatch.setattr(streamed, "node_window", WINDOWS[request.param])
    return WINDOWS[request.param]


@pytest.fixture
def tiny_steps(monkeypatch: pytest.MonkeyPatch, window_kind: type) -> None:
    """Windows and bands advance by a few samples and chunks are a few ids: every edge comes up."""
    monkeypatch.setattr(py1e_stream, "_MIN_STEP", 1)
    monkeypatch.setattr(py1e_stream, "_RETAIN", 3)
    _tiny_bands(monkeypatch)
    monkeypatch.setattr(streamed, "FIRST_CHUNK", 5)
    monkeypatch.setattr(streamed, "MAX_CHUNK", 37)


def _settings(**overrides) -> OrderSettings:
    base = {"shuffle": True, "shuffle_algo": "py1e", "shuffle_seed": 7,
            "shuffle_block_size": 300, "partition_algo": "orig", "num_canonical_nodes": 1,
            "batch_size": 4, "sampling_method": "balanced", "sampling_granularity": 1}
    base.update(overrides)
    return OrderSettings(**base)


def _both(streams, settings, topology, *, epoch=0, sample_in_epoch=0, initial=None):
    choose = resolve_stream_choose(streams, None, settings.shuffle_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = worker_sample_ids(streams, choose, settings, topology, epoch=epoch,
                                  sample_in_epoch=sample_in_epoch, initial_physical_nodes=initial)
        plan = streamed.plan_worker(streams, choose, settings, topology, epoch=epoch,
                                    sample_in_epoch=sample_in_epoch,
                                    initial_physical_nodes=initial)
        chunks = list(plan.chunks())
    got = np.concatenate(chunks) if chunks else np.empty(0, np.int64)
    return whole, got, chunks


UNEVEN = np.array([130, 0, 57, 1, 400, 233, 0, 88, 512, 19, 301, 2, 150], np.int64)


@pytest.mark.parametrize("ncn", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("block", [10, 150, 700, 5000])
def test_every_worker_matches_the_whole_epoch(tiny_steps, ncn: int, block: int):
    streams = [StreamSpec(int(UNEVEN.sum()), UNEVEN)]
    settings = _settings(num_canonical_nodes=ncn, shuffle_block_size=block, batch_size=3)
    seen = []
    for rank in range(2):
        for worker in range(3):
            whole, got, chunks = _both(streams, settings, Topology(1, 2, 3, 0, rank, worker),
                                       epoch=1)
            np.testing.assert_array_equal(got, whole)
            assert len(chunks) > 3  # really chunked
            seen.append(got)
    # The workers together cover the epoch (every sample, padding repeats aside).
    assert set(np.concatenate(seen).tolist()) == set(range(int(UNEVEN.sum())))


@pytest.mark.parametrize("resume_at", [0, 13, 500, 900])
def test_nodes_where_nothing_moves_match(tiny_steps, resume_at: int):
    """Every span at least its block (or alone in its node): the order is the shuffled spans."""
    sizes = np.array([130, 57, 400, 233, 88], np.int64)
    streams = [StreamSpec(int(sizes.sum()), sizes)]
    for ncn, block in ((1, 10), (5, 10), (2, 40)):
        settings = _settings(num_canonical_nodes=ncn, shuffle_block_size=block, batch_size=2)
        whole, got, _ = _both(streams, settings, Topology(1, 1, 2, 0, 0, 1),
                              sample_in_epoch=resume_at)
        np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("partition", ["orig", "relaxed"])
@pytest.mark.parametrize("resume_at", [1, 97, 1000, 1890])
def test_resumption_matches_the_whole_epoch(tiny_steps, partition: str, resume_at: int):
    streams = [StreamSpec(int(UNEVEN.sum()), UNEVEN)]
    for ncn, nodes in ((4, 2), (2, 4), (3, 1)):
        settings = _settings(num_canonical_nodes=ncn, partition_algo=partition,
                             shuffle_block_size=120)
        for node in range(nodes):
            whole, got, _ = _both(streams, settings, Topology(nodes, 1, 2, node, 0, 1),
                                  sample_in_epoch=resume_at)
            np.testing.assert_array_equal(got, whole)


def test_relaxed_recut_topology_matches(tiny_steps):
    """Resuming on 3 nodes what started on 2: the re-cut traversal, streamed."""
    streams = [StreamSpec(int(UNEVEN.sum()), UNEVEN)]
    settings = _settings(num_canonical_nodes=2, partition_algo="relaxed", batch_size=2,
                         shuffle_block_size=90)
    for node in range(3):
        whole, got, _ = _both(streams, settings, Topology(3, 2, 2, node, 1, 0),
                              sample_in_epoch=600, initial=2)
        np.testing.assert_array_equal(got, whole)


def test_resampled_streams_map_back_to_sample_ids(tiny_steps):
    """Up-sampled and fractional streams: big ids go through units and partial picks."""
    a, b = UNEVEN[:7], UNEVEN[7:] + 3
    streams = [StreamSpec(int(a.sum()), a, proportion=0.8),
               StreamSpec(int(b.sum()), b, proportion=0.45)]
    for algo in ("py1e", "py1s", "naive"):
        settings = _settings(shuffle_algo=algo, num_canonical_nodes=2, shuffle_block_size=200)
        whole, got, _ = _both(streams, settings, Topology(1, 1, 2, 0, 0, 1), epoch=2,
                              sample_in_epoch=33)
        np.testing.assert_array_equal(got, whole)


def test_unshuffled_plan_is_chunked_partition(tiny_steps):
    streams = [StreamSpec(int(UNEVEN.sum()), UNEVEN)]
    whole, got, _ = _both(streams, _settings(shuffle=False), Topology(1, 1, 2, 0, 0, 0),
                          sample_in_epoch=50)
    np.testing.assert_array_equal(got, whole)


def test_errors_come_from_plan_creation_not_iteration():
    streams = [StreamSpec(3, np.array([3]))]
    with pytest.raises(ValueError, match="Canonical node"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the partition warns about repeating samples first
        streamed.plan_worker([StreamSpec(2, np.array([2]))], [2],
                             _settings(num_canonical_nodes=3, batch_size=1),
                             Topology(1, 1, 1, 0, 0, 0), epoch=0, sample_in_epoch=0,
                             initial_physical_nodes=None)
    with pytest.raises(ValueError, match="too large"):
        streamed.plan_worker(streams, [3], _settings(), Topology(1, 1, 1, 0, 0, 0), epoch=0,
                             sample_in_epoch=99, initial_physical_nodes=None)


def test_window_answers_any_range_in_any_order(monkeypatch: pytest.MonkeyPatch, window_kind):
    monkeypatch.setattr(py1e_stream, "_MIN_STEP", 1)
    monkeypatch.setattr(py1e_stream, "_RETAIN", 2)
    _tiny_bands(monkeypatch)
    sizes = np.random.default_rng(3).integers(0, 400, 60)
    perm = get_shuffle("py1e", sizes, 1, 11, 4, 250)
    replay = replay_py1e(fixed_pieces(sizes, 1, 11), 11, 4, 250)
    window = window_kind(replay, 0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        lo = int(rng.integers(0, perm.size))
        hi = int(rng.integers(lo, min(perm.size, lo + 500) + 1))
        np.testing.assert_array_equal(window.take(lo, hi), perm[lo:hi])
    with pytest.raises(ValueError, match="outside"):
        window.take(0, perm.size + 1)


def test_window_memory_stays_bounded(window_kind):
    """Walking a node of 3M samples holds about 3 reaches of samples, never the node."""
    sizes = np.full(300, 10_000, np.int64)
    replay = replay_py1e(fixed_pieces(sizes, 1, 5), 5, 0, 40_000)
    window = window_kind(replay, 0)
    perm_head = get_shuffle("py1e", sizes, 1, 5, 0, 40_000)
    held = 0
    for lo in range(0, window.size, 100_000):
        hi = min(lo + 100_000, window.size)
        got = window.take(lo, hi)
        np.testing.assert_array_equal(got, perm_head[lo:hi])
        pending = getattr(window, "_pend_ids", np.empty(0))  # bands hold no pending samples
        held = max(held, pending.size + window._out.size)
    assert held < 4 * window.reach + 300_000, (held, window.reach)


def test_streamed_plan_matches_the_reference_at_ten_million(reference):
    """10^7 samples in 100 shards, default py1e settings, 1 node x 2 workers, fresh and at 50%."""
    from streaming.base.partition import get_partitions
    from streaming.base.shuffle import get_shuffle as reference_shuffle

    total, batch = 10_000_000, 256
    sizes = np.full(100, 100_000, np.int64)
    settings = _settings(shuffle_seed=9176, shuffle_block_size=4_000_000, batch_size=batch,
                         partition_algo="relaxed")
    perm = reference_shuffle("py1e", sizes, 1, 9176, 0, 4_000_000)
    for resume in (0, total // 2):
        parts = get_partitions("orig", total, 1, 1, 1, 2, batch, resume)
        for worker in range(2):
            plan = streamed.plan_worker([StreamSpec(total, sizes)], [total], settings,
                                        Topology(1, 1, 2, 0, 0, worker), epoch=0,
                                        sample_in_epoch=resume, initial_physical_nodes=None)
            positions = parts[0, 0, worker].ravel()
            expected = perm[positions[positions != -1]]
            got = np.concatenate(list(plan.chunks()))
            np.testing.assert_array_equal(got, expected)


# ---- the node-local plan cache --------------------------------------------------------------


def _pieces(seed: int = 3, ncn: int = 2):
    sizes = np.random.default_rng(seed).integers(1, 300, 40)
    return fixed_pieces(sizes, ncn, seed)


def _same(a, b) -> None:
    for name in ("begins", "sizes", "node_spans", "node_bounds", "lower", "upper"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for table in ("shuffles", "shifts"):
        for field in ("high", "low", "has_half", "half"):
            np.testing.assert_array_equal(getattr(getattr(a, table), field),
                                          getattr(getattr(b, table), field))
    assert a.clipped == b.clipped and a.shuffles.inc == b.shuffles.inc


def test_plan_cache_publishes_once_and_maps_it(tmp_path: Path, monkeypatch):
    cache = PlanCache(tmp_path / "plans")
    pieces = _pieces()
    first = cache.py1e_replay(pieces, 3, 1, 500)
    _same(first, replay_py1e(pieces, 3, 1, 500))
    (entry,) = [p for p in (tmp_path / "plans").iterdir() if p.is_dir()]
    assert entry.name.startswith("py1e-") and "-e1-" in entry.name

    def no_replay(*args):
        raise AssertionError("the cached plan should have been used")

    monkeypatch.setattr("mdsloader.plan_cache.replay_py1e", no_replay)
    again = cache.py1e_replay(pieces, 3, 1, 500)
    assert isinstance(again.begins, np.memmap)
    _same(again, first)


@pytest.mark.parametrize("change", ["epoch", "seed", "block", "sizes", "ncn"])
def test_plan_cache_never_serves_another_setting(tmp_path: Path, change: str):
    cache = PlanCache(tmp_path)
    cache.py1e_replay(_pieces(), 3, 1, 500)
    args = {"pieces": _pieces(), "seed": 3, "epoch": 1, "block": 500}
    if change == "epoch":
        args["epoch"] = 2
    elif change == "seed":
        args["seed"] = 4
    elif change == "block":
        args["block"] = 501
    elif change == "sizes":
        args["pieces"] = _pieces(seed=4)
    else:
        args["pieces"] = _pieces(ncn=3)
    got = cache.py1e_replay(args["pieces"], args["seed"], args["epoch"], args["block"])
    _same(got, replay_py1e(args["pieces"], args["seed"], args["epoch"], args["block"]))


def test_plan_cache_ignores_a_damaged_plan(tmp_path: Path):
    cache = PlanCache(tmp_path)
    pieces = _pieces()
    cache.py1e_replay(pieces, 3, 0, 500)
    (entry,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    (entry / "lower.npy").write_bytes(b"not an array")
    _same(cache.py1e_replay(pieces, 3, 0, 500), replay_py1e(pieces, 3, 0, 500))
    (entry / "meta.json").write_text('{"version": 1, "key": "someone else"}')
    _same(cache.py1e_replay(pieces, 3, 0, 500), replay_py1e(pieces, 3, 0, 500))


def _plans(directory: Path) -> dict[str, list[int]]:
    """Published plans: run key -> epochs."""
    runs: dict[str, list[int]] = {}
    for entry in directory.iterdir():
        if entry.is_dir() and entry.name.startswith("py1e-"):
            _, run, epoch, _ = entry.name.split("-")
            runs.setdefault(run, []).append(int(epoch[1:]))
    return {run: sorted(epochs) for run, epochs in runs.items()}


def test_plan_cache_keeps_the_previous_epoch_and_drops_older_ones(tmp_path: Path):
    cache = PlanCache(tmp_path)
    pieces = _pieces()
    for epoch in range(4):
        cache.py1e_replay(pieces, 3, epoch, 500)
    cache.py1e_replay(_pieces(seed=9), 9, 0, 500)  # another run keeps its own
    assert sorted(_plans(tmp_path).values()) == [[0], [2, 3]]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_plan_cache_prepares_the_next_epoch_once(tmp_path: Path, monkeypatch):
    from mdsloader.locks import file_lock

    cache = PlanCache(tmp_path)
    pieces = _pieces()
    assert cache.prepare(pieces, 3, 1, 500) is True
    assert cache.prepare(pieces, 3, 1, 500) is False  # already there
    monkeypatch.setattr("mdsloader.plan_cache.replay_py1e", None)  # must not be needed
    _same(cache.py1e_replay(pieces, 3, 1, 500), replay_py1e(pieces, 3, 1, 500))
    # Someone else holding the lock is already preparing it: do not wait, do not compute.
    run, key = plan_cache_module._keys(pieces, 3, 2, 500)
    with file_lock(tmp_path / f".py1e-{run}-e2-{key[:16]}.lock"):
        assert cache.prepare(pieces, 3, 2, 500) is False
    assert _plans(tmp_path) == {run: [1]}


def test_plan_cache_that_cannot_be_created_still_plans(tmp_path: Path):
    """A cache directory that cannot exist (under a file) costs the sharing, not the plan."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    got = PlanCache(blocker / "plans").py1e_replay(_pieces(), 3, 0, 500)
    _same(got, replay_py1e(_pieces(), 3, 0, 500))


def _race(directory: str, marker: str) -> None:
    import mdsloader.plan_cache as plan_cache

    real = plan_cache.replay_py1e

    def counted(*args):
        with open(marker, "a") as handle:
            handle.write("x")
        return real(*args)

    plan_cache.replay_py1e = counted
    pieces = fixed_pieces(np.full(200, 5000, np.int64), 1, 1)
    replay = PlanCache(directory).py1e_replay(pieces, 1, 0, 20_000)
    assert replay.sizes.sum() == 1_000_000


def test_plan_cache_is_computed_once_by_racing_processes(tmp_path: Path):
    marker = tmp_path / "computed"
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_race, args=(str(tmp_path / "plans"), str(marker)))
             for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    assert marker.read_text() == "x"
    assert len([p for p in (tmp_path / "plans").iterdir() if p.is_dir()]) == 1


# ---- the helper thread ----------------------------------------------------------------------


def _many_chunks_plan():
    sizes = np.full(20, 500, np.int64)
    return streamed.plan_worker([StreamSpec(10_000, sizes)], [10_000], _settings(batch_size=1),
                                Topology(1, 1, 1, 0, 0, 0), epoch=0, sample_in_epoch=0,
                                initial_physical_nodes=None)


def test_chunks_hand_a_failure_to_the_consumer_in_order(tiny_steps):
    seen = []

    def transform(ids):
        seen.append(ids.size)
        if len(seen) == 3:
            raise RuntimeError("boom in chunk 3")
        return ids

    chunks = _many_chunks_plan().chunks(transform=transform)
    assert next(chunks).size and next(chunks).size
    with pytest.raises(RuntimeError, match="boom in chunk 3"):
        next(chunks)
    with pytest.raises(StopIteration):
        next(chunks)


def test_closing_the_chunks_stops_the_thread(tiny_steps):
    chunks = _many_chunks_plan().chunks(ahead=1)
    next(chunks)
    chunks.close()
    chunks._thread.join(5)
    assert not chunks._thread.is_alive()
