"""A worker's epoch equals the reference's, checked on real StreamingDatasets over MDS.

The oracle is the reference's own ``generate_work`` (the function its local leader runs) called on a
real ``StreamingDataset`` with a hand-made ``World``, which gives any worker of any topology in one
process; one test also iterates the reference dataset itself, fresh and resumed.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from mdsloader.ordering import (
    OrderSettings,
    StreamSpec,
    Topology,
    default_num_canonical_nodes,
    default_shuffle_block_size,
    resolve_stream_choose,
    worker_sample_ids,
)

pytestmark = pytest.mark.interop

SEED = 1234
# (stream weights, epoch_size): plain, up/down-sampled, and the three two-stream weightings.
CONFIGS = {
    "plain": ([{}], None),
    "upsampled": ([{}], 333),
    "downsampled": ([{}], 77),
    "proportion": ([{"proportion": 0.3}, {"proportion": 0.7}], 250),
    "repeat": ([{"repeat": 1.5}, {"repeat": 0.5}], None),
    "choose": ([{"choose": 100}, {"choose": 260}], None),
}


def write_stream(reference, out: Path, first_id: int, count: int, seed: int) -> None:
    """Uneven shards (random payload sizes under a small size limit), plus one empty shard."""
    from streaming import MDSWriter

    rng = np.random.default_rng(seed)
    with MDSWriter(out=str(out), columns={"id": "int", "pad": "bytes"}, size_limit=400) as writer:
        for sample in range(first_id, first_id + count):
            writer.write({"id": sample, "pad": b"x" * int(rng.integers(0, 60))})
    index = json.loads((out / "index.json").read_text())
    empty = json.loads(json.dumps(index["shards"][0]))
    empty["samples"] = 0
    empty["raw_data"]["basename"] = "shard.99999.mds"
    index["shards"].insert(2, empty)
    (out / "index.json").write_text(json.dumps(index, sort_keys=True))


@pytest.fixture(scope="module")
def stream_dirs(reference, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ordering-streams")
    write_stream(reference, root / "a", 0, 190, 1)
    write_stream(reference, root / "b", 190, 120, 2)
    return [root / "a", root / "b"]


def make_reference(stream_dirs, tmp_path_factory, config: str, **kwargs):
    """A fresh reference dataset over private copies of the streams (it locks its directories)."""
    from streaming import Stream, StreamingDataset

    logging.getLogger("streaming").setLevel(logging.ERROR)
    weights, epoch_size = CONFIGS[config]
    root = tmp_path_factory.mktemp(config)
    streams = []
    for source, weight in zip(stream_dirs, weights):
        local = root / source.name
        shutil.copytree(source, local)
        streams.append(Stream(local=str(local), **weight))
    kwargs.setdefault("batch_size", 1)
    return StreamingDataset(streams=streams, epoch_size=epoch_size, shuffle_seed=SEED, **kwargs)


def our_streams(ds) -> list[StreamSpec]:
    specs, begin = [], 0
    for stream, count in zip(ds.streams, ds.shards_per_stream.tolist()):
        sizes = ds.samples_per_shard[begin:begin + count]
        weight = {k: getattr(stream, f"_{k}") for k in ("proportion", "repeat", "choose")}
        specs.append(StreamSpec(int(sizes.sum()), sizes, **weight))
        begin += count
    return specs


def reference_worker(ds, settings: OrderSettings, topology: Topology, *, epoch: int,
                     sample_in_epoch: int, initial: int | None) -> np.ndarray:
    from streaming.base.batching import generate_work
    from streaming.base.world import World

    for name in ("shuffle", "shuffle_algo", "shuffle_seed", "shuffle_block_size",
                 "partition_algo", "num_canonical_nodes", "batch_size", "sampling_method",
                 "sampling_granularity"):
        setattr(ds, name, getattr(settings, name))
    ds.epoch_seed_change = settings.shuffle and settings.sampling_method == "balanced"
    ds.initial_physical_nodes = initial
    world = World(topology.num_nodes, topology.ranks_per_node, topology.workers_per_rank, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        work = generate_work("random", ds, world, epoch, sample_in_epoch)
    ids = work[topology.node, topology.rank_of_node, topology.worker].ravel()
    return ids[ids != -1]


def random_case(rng: np.random.Generator, epoch_size: int):
    algo = str(rng.choice(["py1e", "py1br", "py1s", "py2s", "naive"]))
    nodes = int(rng.choice([1, 2, 4]))
    ncn = int(rng.choice([nodes, 2 * nodes, 4, 8])) if rng.random() < 0.8 else \
        default_num_canonical_nodes(algo, nodes)
    ncn = min(ncn, 8) if algo in ("py1s", "py2s") else ncn
    ranks, workers = int(rng.integers(1, 5)), int(rng.integers(0, 4))
    batch = int(rng.choice([1, 3, 8]))
    settings = OrderSettings(
        shuffle=bool(rng.random() < 0.8), shuffle_algo=algo, shuffle_seed=int(rng.integers(0, 99)),
        shuffle_block_size=int(rng.choice([16, 60, default_shuffle_block_size(ncn)])),
        partition_algo=str(rng.choice(["orig", "relaxed"])), num_canonical_nodes=ncn,
        batch_size=batch, sampling_method=str(rng.choice(["balanced", "fixed"])),
        sampling_granularity=int(rng.choice([1, 3])),
    )
    world = nodes * ranks
    drop = int(rng.choice([0, int(rng.integers(0, epoch_size)), epoch_size,
                           epoch_size + world - epoch_size % world]))
    return settings, nodes, ranks, workers, drop


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_worker_sample_ids_match_reference(stream_dirs, tmp_path_factory, config):
    ds = make_reference(stream_dirs, tmp_path_factory, config)
    specs = our_streams(ds)
    choose = resolve_stream_choose(specs, CONFIGS[config][1], SEED)
    assert choose == [int(s.choose) for s in ds.streams]
    rng = np.random.default_rng(len(config))
    for _ in range(14):
        settings, nodes, ranks, workers, drop = random_case(rng, ds.epoch_size)
        node, rank = int(rng.integers(0, nodes)), int(rng.integers(0, ranks))
        for worker in range(max(workers, 1)):
            topology = Topology(nodes, ranks, workers, node, rank, worker)
            for epoch in (0, 1):
                args = {"epoch": epoch, "sample_in_epoch": drop, "initial": None}
                expected = reference_worker(ds, settings, topology, **args)
                got = worker_sample_ids(specs, choose, settings, topology, epoch=epoch,
                                        sample_in_epoch=drop, initial_physical_nodes=None)
                np.testing.assert_array_equal(got, expected, err_msg=f"{settings} {topology}")


def test_relaxed_resumption_on_a_new_node_count_matches_reference(stream_dirs, tmp_path_factory):
    ds = make_reference(stream_dirs, tmp_path_factory, "proportion")
    specs = our_streams(ds)
    choose = resolve_stream_choose(specs, CONFIGS["proportion"][1], SEED)
    # First run: 2 nodes x 2 ranks x batch 6 (global 24); resumed on 3 nodes x 2 ranks x batch 4.
    for drop in (0, 48, 120):
        settings = OrderSettings(True, "py1e", SEED, 60, "relaxed", 4, 4, "balanced", 1)
        for node, rank, worker in [(0, 0, 0), (1, 1, 1), (2, 0, 1)]:
            topology = Topology(3, 2, 2, node, rank, worker)
            expected = reference_worker(ds, settings, topology, epoch=1, sample_in_epoch=drop,
                                        initial=2)
            got = worker_sample_ids(specs, choose, settings, topology, epoch=1,
                                    sample_in_epoch=drop, initial_physical_nodes=2)
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("sample_in_epoch", [0, 12, 333])
def test_reference_iteration_yields_our_order(stream_dirs, tmp_path_factory, sample_in_epoch):
    """Iterate the reference itself (one process, no workers), fresh or resumed mid-epoch."""
    ds = make_reference(stream_dirs, tmp_path_factory, "upsampled", batch_size=4, shuffle=True,
                        num_canonical_nodes=2, shuffle_block_size=50)
    if sample_in_epoch:
        ds.load_state_dict({"epoch": 0, "sample_in_epoch": sample_in_epoch,
                            "num_canonical_nodes": 2, "shuffle_seed": SEED,
                            "initial_physical_nodes": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yielded = [int(sample["id"]) for sample in ds]
    settings = OrderSettings(True, "py1e", SEED, 50, "relaxed", 2, 4, "balanced", 1)
    specs = our_streams(ds)
    ids = worker_sample_ids(specs, resolve_stream_choose(specs, 333, SEED), settings,
                            Topology(1, 1, 0, 0, 0, 0), epoch=0, sample_in_epoch=sample_in_epoch,
                            initial_physical_nodes=1)
    assert ids.tolist() == yielded


def test_settings_and_topology_validate_their_fields():
    good = {"shuffle": True, "shuffle_algo": "py1e", "shuffle_seed": 0,
            "shuffle_block_size": 10, "partition_algo": "orig", "num_canonical_nodes": 1,
            "batch_size": 1, "sampling_method": "fixed", "sampling_granularity": 1}
    for field, bad in [("shuffle_algo", "py1b"), ("partition_algo", "x"), ("shuffle_seed", -1),
                       ("sampling_method", "x"), ("batch_size", 0), ("shuffle_block_size", 0),
                       ("num_canonical_nodes", 0), ("sampling_granularity", 0)]:
        with pytest.raises(ValueError, match=field):
            OrderSettings(**{**good, field: bad})
    assert Topology(1, 1, 0, 0, 0, 0).workers_per_rank == 1
    assert Topology(1, 1, 2, 0, 0, worker_of_rank=1).worker == 1
    with pytest.raises(ValueError, match="rank_of_node"):
        Topology(1, 2, 1, 0, 2, 0)
    with pytest.raises(ValueError, match="num_nodes"):
        Topology(0, 1, 1, 0, 0, 0)


def test_defaults_follow_the_reference():
    assert default_num_canonical_nodes("py1s", 3) == 192
    assert default_num_canonical_nodes("py1e", 3) == 3
    assert [default_shuffle_block_size(n) for n in (1, 8, 16, 64)] == [
        4_000_000, 500_000, 262_144, 262_144]


def _clipped_epoch(algo: str, drop: int) -> np.ndarray:
    """One worker over shards larger than the block (py1e clips them and warns), from ``drop``."""
    specs = [StreamSpec(num_samples=300, samples_per_shard=np.array([100, 200]))]
    settings = OrderSettings(shuffle=True, shuffle_algo=algo, shuffle_seed=3,
                             shuffle_block_size=10, partition_algo="orig", num_canonical_nodes=1,
                             batch_size=4, sampling_method="balanced", sampling_granularity=1)
    return worker_sample_ids(specs, [300], settings, Topology(1, 1, 1, 0, 0, 0), epoch=0,
                             sample_in_epoch=drop, initial_physical_nodes=None)


def test_permutation_beside_the_partition_warns_once_from_the_caller_thread():
    with pytest.warns(UserWarning, match="Shuffle block size was smaller") as caught:
        ids = _clipped_epoch("py1e", 100)
    assert len(caught) == 1  # attributed to the ordering module, where it always came from
    assert caught[0].filename.endswith("mdsloader/ordering/epoch.py")
    assert len(set(ids.tolist())) == ids.size == 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _clipped_epoch("py1s", 100)  # the other algorithms never warn


@pytest.mark.parametrize("algo", ["py1e", "py1s", "naive"])
def test_a_partition_error_wins_over_the_permutation_and_nothing_is_warned(algo):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="Resuming further into the dataset"):
            _clipped_epoch(algo, 10_000)
