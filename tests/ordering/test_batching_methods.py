"""``stratified``, ``per_stream`` and ``device_per_stream`` equal the reference, worker by worker.

The oracle is the reference's own ``generate_work`` for each method, called on a real reference
``StreamingDataset`` over three uneven streams (each with an empty shard) and a hand-made
``World``. The matrix walks every shuffle algorithm, both partitions, several canonical node
counts, 1/2/4 nodes, 1-4 ranks per node, 0-3 workers, epochs 0 and 1, resumption points on and
off a global batch, and the stream weightings (none, ``epoch_size``, proportion, repeat, choose).
Where the reference raises, we raise the same exception type.

The last tests pin the methods' limits: which we keep (properties of the method) and which we
fix (defects of the reference's code), each against what the reference does.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from mdsloader.ordering import (
    OrderSettings,
    Topology,
    default_shuffle_block_size,
    resolve_stream_choose,
    worker_sample_ids,
)
from mdsloader.ordering.per_stream import device_per_stream_batches
from mdsloader.ordering.stratified import stream_slots
from mdsloader.ordering.streamwise import stream_proportions
from tests.ordering.test_ordering_epoch import our_streams, write_stream

pytestmark = pytest.mark.interop

SEED = 1234
METHODS = ("stratified", "per_stream", "device_per_stream")
ALGOS = ("py1e", "py1br", "py1s", "py2s", "naive")
# Stream weights and epoch_size: 190, 120 and 75 samples.
CONFIGS = {
    "plain": ([{}, {}, {}], None),
    "epoch-size": ([{}, {}, {}], 500),
    "proportion": ([{"proportion": 0.5}, {"proportion": 0.3}, {"proportion": 0.2}], 300),
    "repeat": ([{"repeat": 1.5}, {"repeat": 0.5}, {}], None),
    "choose": ([{"choose": 100}, {"choose": 260}, {"choose": 40}], None),
}


@pytest.fixture(scope="module")
def stream_dirs(reference, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("batching-streams")
    for name, first, count, seed in (("a", 0, 190, 1), ("b", 190, 120, 2), ("c", 310, 75, 3)):
        write_stream(reference, root / name, first, count, seed)
    return [root / name for name in "abc"]


@pytest.fixture(scope="module")
def references(stream_dirs, tmp_path_factory):
    """One reference dataset per weighting, built on first use and shared by the tests.

    Only its ``generate_work`` is used, with every setting assigned before each call. Sharing
    matters: each reference dataset keeps its shared-memory handles open until the process
    exits (atexit), and every new one opens more for those before it.
    """
    from streaming import Stream, StreamingDataset

    built = {}

    def get(config: str):
        if config not in built:
            logging.getLogger("streaming").setLevel(logging.ERROR)
            weights, epoch_size = CONFIGS[config]
            root = tmp_path_factory.mktemp(config)
            streams = []
            for source, weight in zip(stream_dirs, weights):
                shutil.copytree(source, root / source.name)  # it locks its directories
                streams.append(Stream(local=str(root / source.name), **weight))
            built[config] = StreamingDataset(streams=streams, epoch_size=epoch_size,
                                             shuffle_seed=SEED, batch_size=1)
        return built[config]

    return get


def reference_epoch(ds, settings: OrderSettings, nodes: int, ranks: int, workers: int, *,
                    epoch: int, sample_in_epoch: int, initial: int | None = None):
    """The reference's 5-D epoch for the settings, or the exception it raises."""
    from streaming.base.batching import generate_work
    from streaming.base.world import World

    for field in dataclasses.fields(settings):
        setattr(ds, field.name, getattr(settings, field.name))
    ds.epoch_seed_change = settings.shuffle and settings.sampling_method == "balanced"
    ds.initial_physical_nodes = initial
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return generate_work(settings.batching_method, ds, World(nodes, ranks, workers, 0),
                                 epoch, sample_in_epoch)
    except (ValueError, IndexError) as exc:
        return exc


def cases(method: str, rng: np.random.Generator, count: int):
    """Deterministic coverage of algorithms, partitions and topologies, random elsewhere."""
    for i in range(count):
        algo = ALGOS[i % len(ALGOS)]
        nodes = (1, 2, 4)[i % 3]
        ncn = int(rng.choice([nodes, 2 * nodes, 4, 8]))
        if method == "device_per_stream" and i % 4:
            ncn = nodes * int(rng.choice([1, 2]))  # mostly valid (NCN divisible by nodes)
        ranks, workers = 1 + i % 4, (i // 2) % 4
        settings = OrderSettings(
            shuffle=i % 6 != 5, shuffle_algo=algo, shuffle_seed=int(rng.integers(0, 99)),
            shuffle_block_size=int(rng.choice([40, 60, default_shuffle_block_size(ncn)])),
            partition_algo=("orig", "relaxed")[i % 2], num_canonical_nodes=ncn,
            batch_size=int(rng.choice([1, 2, 3])),
            sampling_method=str(rng.choice(["balanced", "fixed"])),
            sampling_granularity=int(rng.choice([1, 3])), batching_method=method,
        )
        global_batch = nodes * ranks * settings.batch_size
        drop = int(rng.choice([0, global_batch * int(rng.integers(1, 6)),
                               int(rng.integers(1, 150))]))
        yield settings, nodes, ranks, workers, drop


def assert_every_worker_matches(ds, specs, choose, settings, nodes, ranks, workers, *, epoch,
                                drop, initial=None) -> bool:
    """Compare every worker of the topology; returns whether the reference produced an epoch."""
    want = reference_epoch(ds, settings, nodes, ranks, max(workers, 1), epoch=epoch,
                           sample_in_epoch=drop, initial=initial)
    for node in range(nodes):
        for rank in range(ranks):
            for worker in range(max(workers, 1)):
                topology = Topology(nodes, ranks, workers, node, rank, worker)

                def ours(topology=topology):
                    return worker_sample_ids(specs, choose, settings, topology, epoch=epoch,
                                             sample_in_epoch=drop, initial_physical_nodes=initial)

                if isinstance(want, Exception):
                    with pytest.raises(type(want)):
                        ours()
                    continue
                expected = want[node, rank, worker].ravel()
                np.testing.assert_array_equal(ours(), expected[expected != -1],
                                              err_msg=f"{settings} {topology} {epoch} {drop}")
    return not isinstance(want, Exception)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("method", METHODS)
def test_every_worker_matches_the_reference(references, caplog, method, config):
    caplog.set_level(logging.ERROR)
    ds = references(config)
    specs = our_streams(ds)
    choose = resolve_stream_choose(specs, CONFIGS[config][1], SEED)
    assert np.array_equal(stream_proportions(specs, choose),
                          [float(s.proportion) for s in ds.streams])
    rng = np.random.default_rng(sum(map(ord, method + config)))
    produced = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for settings, nodes, ranks, workers, drop in cases(method, rng, 10):
            for epoch in (0, 1):
                produced += assert_every_worker_matches(ds, specs, choose, settings, nodes, ranks,
                                                        workers, epoch=epoch, drop=drop)
    assert produced >= 10  # most cases are epochs, not errors


def test_per_stream_relaxed_resumption_on_a_new_node_count(references):
    """``per_stream`` partitions each stream over the physical nodes, so ``relaxed`` re-cuts."""
    ds = references("proportion")
    specs = our_streams(ds)
    choose = resolve_stream_choose(specs, 300, SEED)
    settings = OrderSettings(True, "py1e", SEED, 60, "relaxed", 4, 2, "balanced", 1,
                             "per_stream")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for drop in (0, 12, 36):  # first run 2 nodes x batch 3; now 3 nodes x batch 2
            assert assert_every_worker_matches(ds, specs, choose, settings, 3, 1, 2, epoch=1,
                                               drop=drop, initial=2)


# ---- limits: kept where they are the method's, fixed where they are the reference's bugs ------


def _settings(method: str, **changes) -> OrderSettings:
    base = OrderSettings(True, "py1e", SEED, 60, "orig", 2, 2, "balanced", 1, method)
    return dataclasses.replace(base, **changes)


def test_kept_resumption_restarts_the_unfinished_global_batch(references, caplog):
    """Property: a state inside a global batch resumes at that batch's start, with a warning
    (``warnings`` for stratified, the log for the others, as in the reference), given once per
    node (by its first rank's first worker, where the reference's leader gives it)."""
    ds = references("plain")
    specs = our_streams(ds)
    choose = resolve_stream_choose(specs, None, SEED)

    def ids(settings, drop, rank=1):
        topology = Topology(1, 2, 1, 0, rank, 0)  # global batch 4
        return worker_sample_ids(specs, choose, settings, topology, epoch=0,
                                 sample_in_epoch=drop, initial_physical_nodes=None)

    def said(settings, rank) -> str:
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ids(settings, 11, rank)
        return " ".join([str(w.message) for w in caught] + [caplog.text])

    for method in METHODS:
        settings = _settings(method)
        start, resumed = ids(settings, 0), ids(settings, 8)
        np.testing.assert_array_equal(resumed, start[4:])  # this rank's 2 samples per batch
        assert "resumption may only occur" not in said(settings, rank=1)
        np.testing.assert_array_equal(ids(settings, 11), resumed)
        assert "resumption may only occur" in said(settings, rank=0), method
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert assert_every_worker_matches(ds, specs, choose, settings, 1, 2, 0, epoch=0,
                                               drop=11)


@pytest.mark.parametrize(
    ("method", "changes", "nodes", "match"),
    [
        ("device_per_stream", {"num_canonical_nodes": 3}, 2, "divisible by physical nodes"),
        ("per_stream", {"batch_size": 40}, 2, "complete global batch"),
        ("device_per_stream", {"batch_size": 70}, 1, "single device batch"),
        ("stratified", {"batch_size": 1}, 1, "portion of this stream"),
    ],
)
def test_kept_requirements_raise_like_the_reference(references, method, changes, nodes,
                                                     match):
    """Properties: NCN divisible by nodes; every stream fills a batch (or its share of one)."""
    ds = references("proportion")
    specs = our_streams(ds)
    choose = resolve_stream_choose(specs, 300, SEED)
    settings = _settings(method, **changes)
    if method == "stratified":  # a global batch of 2 cannot give three streams a sample each
        assert stream_slots(np.array([0.5, 0.3, 0.2]), 10).tolist() == [5, 3, 2]
        with pytest.raises(ValueError, match="stream 2 is 0"):
            stream_slots(np.array([0.5, 0.3, 0.2]), 2)
    ranks = 2
    want = reference_epoch(ds, settings, nodes, ranks, 1, epoch=0, sample_in_epoch=0)
    assert isinstance(want, ValueError)
    with pytest.raises(ValueError, match=match):
        worker_sample_ids(specs, choose, settings, Topology(nodes, ranks, 1, 0, 0, 0), epoch=0,
                          sample_in_epoch=0, initial_physical_nodes=None)


def test_fixed_a_zero_stream_block_is_a_clear_error_and_only_where_used(references):
    """Defect: a stream's block ``int(block * proportion)`` of 0 fails in numpy's ``integers``
    (py1e, py1br) with ``high <= 0``; ``device_per_stream`` refuses it even for the shuffles that
    have no blocks. We name the stream and the fix, and let py1s/py2s/naive run."""
    ds = references("proportion")
    specs = our_streams(ds)
    choose = resolve_stream_choose(specs, 300, SEED)
    topology = Topology(1, 4, 1, 0, 0, 0)  # global batch 8
    tiny = {"shuffle_block_size": 4}  # stream 2's share (0.2) of it is 0 samples
    warnings.simplefilter("ignore")  # py1e's small-block warning (pytest restores the filters)
    for method in METHODS:
        settings = _settings(method, **tiny)
        want = reference_epoch(ds, settings, 1, 4, 1, epoch=0, sample_in_epoch=0)
        assert isinstance(want, ValueError)
        with pytest.raises(ValueError, match="Stream 2's shuffle block"):
            worker_sample_ids(specs, choose, settings, topology, epoch=0, sample_in_epoch=0,
                              initial_physical_nodes=None)
        blockless = _settings(method, shuffle_algo="py1s", **tiny)
        got = worker_sample_ids(specs, choose, blockless, topology, epoch=0, sample_in_epoch=0,
                                initial_physical_nodes=None)
        want = reference_epoch(ds, blockless, 1, 4, 1, epoch=0, sample_in_epoch=0)
        if method == "device_per_stream":
            assert isinstance(want, ValueError) and "not being used" in str(want)
            # Any block gives the same py1s order: compare with the reference's at block 60.
            want = reference_epoch(ds, _settings(method, shuffle_algo="py1s"), 1, 4, 1, epoch=0,
                                   sample_in_epoch=0)
        expected = want[0, 0, 0].ravel()
        np.testing.assert_array_equal(got, expected[expected != -1])


def test_fixed_device_per_stream_warns_only_when_it_drops(references, caplog):
    """Defect: the reference pads every node's stream with a whole device batch even when it
    divides, so it always logs that batches are dropped. We log only a real drop."""
    ds = references("choose")
    specs = our_streams(ds)
    settings = _settings("device_per_stream", shuffle=False, num_canonical_nodes=1)
    topology = Topology(1, 1, 1, 0, 0, 0)
    exact = [100, 260, 40]  # divisible by the device batch of 2 at one canonical node
    with caplog.at_level(logging.WARNING, logger="streaming"):
        reference_epoch(ds, settings, 1, 1, 1, epoch=0, sample_in_epoch=0)
    assert "will be dropped" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mdsloader"):
        batches = device_per_stream_batches(specs, exact, settings, topology, epoch=0,
                                            initial_physical_nodes=None).materialise()
        assert "dropped" not in caplog.text
        assert np.count_nonzero(batches != -1) == sum(exact)
        device_per_stream_batches(specs, [101, 260, 40], settings, topology, epoch=0,
                                  initial_physical_nodes=None)
        assert "stream with index 0 will be dropped" in caplog.text


def test_kept_device_per_stream_ranks_may_end_unevenly(references):
    """Property of the reference's layout: each node pads its own list of device batches to the
    longest node's, so near the end of an epoch some ranks get empty batches while others still
    get samples. We keep it (the order must stay the reference's); the README says so."""
    ds = references("plain")
    specs = our_streams(ds)
    choose = resolve_stream_choose(specs, None, SEED)
    settings = _settings("device_per_stream", num_canonical_nodes=4, batch_size=4)
    want = reference_epoch(ds, settings, 2, 2, 1, epoch=0, sample_in_epoch=0)
    counts = [len(worker_sample_ids(specs, choose, settings, Topology(2, 2, 1, node, rank, 0),
                                    epoch=0, sample_in_epoch=0, initial_physical_nodes=None))
              for node in range(2) for rank in range(2)]
    assert counts == np.count_nonzero(want != -1, axis=(2, 3, 4)).ravel().tolist()
    assert len(set(counts)) > 1, counts


def test_fixed_a_stream_without_samples_is_named(references):
    """Defect: a stream weighted to 0 samples makes the reference fail inside numpy ("need at
    least one array to concatenate"); we say which stream and why."""
    ds = references("choose")
    specs = our_streams(ds)
    choose = [100, 260, 0]
    for method in METHODS:
        with pytest.raises(ValueError, match="Stream 2 contributes no samples"):
            worker_sample_ids(specs, choose, _settings(method), Topology(1, 1, 1, 0, 0, 0),
                              epoch=0, sample_in_epoch=0, initial_physical_nodes=None)
    for stream, count in zip(ds.streams, choose):
        stream.choose = count
    try:
        for method in METHODS:
            failure = reference_epoch(ds, _settings(method), 1, 1, 1, epoch=0, sample_in_epoch=0)
            assert "need at least one array" in str(failure)
    finally:
        for stream, weight in zip(ds.streams, CONFIGS["choose"][0]):
            stream.choose = weight["choose"]
