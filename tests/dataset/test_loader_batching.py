"""The batching methods through real datasets and loaders, against the reference.

Every worker of our ``StreamingDataset`` over three uneven streams yields the reference's ids
(oracle: its own ``generate_work``, see ``oracle.py``); a ``StreamingDataLoader`` with workers
yields the reference's per-rank order; and states taken mid-epoch resume exactly, ours to ours,
ours to the reference, and the reference's to ours.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import warnings

import pytest
from oracle import rank_ids, reference_dataset, reference_work, worker_ids

from mdsloader.dataloader import StreamingDataLoader
from mdsloader.dataset import StreamingDataset
from mdsloader.stream import Stream
from mdsloader.world import World
from tests.dataset.conftest import write_dataset

pytestmark = pytest.mark.interop

SIZES = {"a": [37, 50, 13, 61, 44, 29], "b": [23, 40, 17, 31], "c": [19, 26, 12]}  # 234, 111, 57
FIRST = {"a": 0, "b": 1000, "c": 2000}
METHODS = ("stratified", "per_stream", "device_per_stream")
WEIGHTS = {
    "proportion": ([{"proportion": 0.5}, {"proportion": 0.3}, {"proportion": 0.2}], 300),
    "repeat-choose": ([{"repeat": 1.5}, {}, {"choose": 80}], None),
}
KWARGS = {"batch_size": 4, "shuffle": True, "num_canonical_nodes": 4, "shuffle_block_size": 60}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("batching")
    return {k: str(write_dataset(root / k, SIZES[k], start=FIRST[k])) for k in SIZES}


@pytest.fixture(autouse=True)
def quiet(caplog):
    """The methods log dropped partial batches (as the reference does); keep the output short."""
    caplog.set_level(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def ours(data, method: str, weights: str = "proportion", **extra) -> StreamingDataset:
    streams, epoch_size = WEIGHTS[weights]
    return StreamingDataset(
        streams=[Stream(local=data[k], **w) for k, w in zip("abc", streams)],
        epoch_size=epoch_size, batching_method=method, **{**KWARGS, **extra},
    )  # fmt: skip


def reference(data, method: str, weights: str = "proportion", **extra):
    streams, epoch_size = WEIGHTS[weights]
    return reference_dataset(
        "", streams=[{"local": data[k], **w} for k, w in zip("abc", streams)],
        epoch_size=epoch_size, batching_method=method, **{**KWARGS, **extra},
    )  # fmt: skip


@pytest.fixture(scope="module")
def oracle(data):
    """The reference dataset of a weighting, for its ``generate_work`` only; built once.

    Each reference dataset keeps its shared-memory handles open until the process exits, and
    every new one opens more for those before it, so the tests share these.
    """
    built = {}

    def get(method: str, weights: str = "proportion"):
        if weights not in built:
            built[weights] = reference(data, "random", weights)
        built[weights].batching_method = method
        return built[weights]

    return get


@pytest.mark.parametrize("weights", sorted(WEIGHTS))
@pytest.mark.parametrize("method", METHODS)
def test_every_worker_of_a_dataset_yields_the_reference_order(
    data, oracle, method, weights
):
    ref = oracle(method, weights)
    for nodes, ranks_per_node, workers in [(1, 3, 2), (2, 2, 1), (4, 1, 3)]:
        ds = ours(data, method, weights)
        ds._adopt(None, World(num_nodes=nodes, ranks_per_node=ranks_per_node))
        assert ds.epoch_size == ref.epoch_size
        for epoch in (0, 1):
            work = reference_work(ref, nodes=nodes, ranks_per_node=ranks_per_node,
                                  workers=workers, epoch=epoch, num_canonical_nodes=4)
            for rank in range(nodes * ranks_per_node):
                for worker in range(workers):
                    me = World(nodes, ranks_per_node, workers, rank, worker)
                    got = ds.worker_sample_ids(epoch, 0, me).tolist()
                    assert got == worker_ids(work, rank, worker), (nodes, ranks_per_node,
                                                                  workers, epoch, rank, worker)


def sample_ids(indices: list[int]) -> list[int]:
    """The ``id`` column of global sample indices (streams a, b, c concatenated)."""
    out = []
    for index in indices:
        for key in "abc":
            size = sum(SIZES[key])
            if index < size:
                out.append(FIRST[key] + index)
                break
            index -= size
    return out


def _loader(data, method: str, workers: int) -> StreamingDataLoader:
    return StreamingDataLoader(ours(data, method), batch_size=KWARGS["batch_size"],
                               num_workers=workers)


def _ids(batch) -> list[int]:
    return [int(i) for i in batch["id"]]


def _epochs(loader, count: int) -> list[list[list[int]]]:
    return [[_ids(b) for b in loader] for _ in range(count)]


@pytest.mark.parametrize("method", METHODS)
def test_a_loader_with_workers_yields_the_reference_rank_order(data, oracle, method):
    got = _epochs(_loader(data, method, 2), 2)
    ref = oracle(method)
    for epoch in (0, 1):
        work = reference_work(ref, nodes=1, ranks_per_node=1, workers=2, epoch=epoch,
                              num_canonical_nodes=4)
        assert [i for batch in got[epoch] for i in batch] == sample_ids(rank_ids(work, 0))
        if method == "stratified":  # every batch holds each stream in proportion: 2, 1, 1
            firsts = [sorted(i // 1000 for i in batch) for batch in got[epoch]]
            assert all(f == [0, 0, 1, 2] for f in firsts)
        else:  # every batch from one stream
            assert all(len({i // 1000 for i in batch}) == 1 for batch in got[epoch])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_mid_epoch_state_resumes_our_loader_exactly(data, method, workers):
    baseline = _epochs(_loader(data, method, workers), 2)
    first = _loader(data, method, workers)
    for epoch in range(2):
        for k, batch in enumerate(first):
            assert _ids(batch) == baseline[epoch][k]
            if epoch == 1 and k == 6:
                break
    state = first.state_dict()
    assert (state["epoch"], state["sample_in_epoch"]) == (1, 28)
    resumed = _loader(data, method, workers)
    resumed.load_state_dict(state)
    assert [_ids(b) for b in resumed] == baseline[1][7:]
    assert [_ids(b) for b in resumed] == _epochs(_loader(data, method, 0), 3)[2]


@pytest.mark.parametrize("method", METHODS)
def test_our_state_resumes_the_reference_and_back(data, clean_reference_shm, method):
    from streaming import StreamingDataLoader as RefLoader

    baseline = _epochs(_loader(data, method, 0), 1)[0]
    mine = _loader(data, method, 0)
    for k, _ in enumerate(mine):
        if k == 9:
            break
    ref_loader = RefLoader(reference(data, method), batch_size=4, num_workers=0)
    ref_loader.load_state_dict(mine.state_dict())
    ref_batches = []
    for k, batch in enumerate(ref_loader):
        ref_batches.append(_ids(batch))
        if k == 4:
            break
    assert ref_batches == baseline[10:15]
    back = _loader(data, method, 2)
    back.load_state_dict(ref_loader.state_dict())
    assert [_ids(b) for b in back] == baseline[15:]


def _run_rank(queue, rank, data, env, workers) -> None:  # pragma: no cover - in a child
    os.environ.update(env)
    logging.disable(logging.WARNING)
    out = {}
    for method in METHODS:
        loader = StreamingDataLoader(ours(data, method), batch_size=4, num_workers=workers)
        out[method] = [int(i) for batch in loader for i in batch["id"]]
    queue.put((rank, out))


def test_ranks_in_separate_processes_yield_the_reference_order(data, oracle):
    """2 nodes x 2 ranks from RANK/WORLD_SIZE/LOCAL_* (one process each, one with workers)."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = []
    for rank in range(4):
        env = {"RANK": str(rank), "WORLD_SIZE": "4", "LOCAL_RANK": str(rank % 2),
               "LOCAL_WORLD_SIZE": "2"}
        procs.append(ctx.Process(target=_run_rank, args=(queue, rank, data, env, 2)))
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    for method in METHODS:
        work = reference_work(oracle(method), nodes=2, ranks_per_node=2, workers=2,
                              epoch=0, num_canonical_nodes=4)
        for rank in range(4):
            assert results[rank][method] == sample_ids(rank_ids(work, rank)), (method, rank)


@pytest.mark.parametrize("method", METHODS)
def test_replicated_ranks_share_batches_like_the_reference(data, oracle, monkeypatch, method):
    ref = oracle(method)
    with monkeypatch.context() as env:  # restored before the reference's shm clean-up runs
        env.setenv("WORLD_SIZE", "4")
        env.setenv("LOCAL_WORLD_SIZE", "4")
        mine = ours(data, method, replication=2)
    work = reference_work(ref, nodes=1, ranks_per_node=4, workers=2, epoch=1,
                          num_canonical_nodes=4, replication=2)
    for rank in range(4):
        world = World(1, 4, 1, rank).replicate(2)
        for worker in range(2):
            got = mine.worker_sample_ids(1, 0, world.with_workers(worker, 2)).tolist()
            assert got == worker_ids(work, rank // 2, worker)
