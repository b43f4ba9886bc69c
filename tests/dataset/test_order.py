"""Sample-order equivalence with mosaicml-streaming over a representative matrix.

For each case, every worker of every rank of a topology must yield exactly the reference's ids,
in the same order (the oracle is the reference's own epoch generator, see ``oracle.py``). Real
multi-rank runs (ranks as separate processes configured by RANK/WORLD_SIZE/LOCAL_* and iterating
through a DataLoader) check the topology detection and the epoch counting end to end.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest
from oracle import rank_ids, reference_dataset, reference_work, worker_ids

from mdsloader.dataloader import StreamingDataLoader
from mdsloader.dataset import StreamingDataset
from mdsloader.stream import Stream
from mdsloader.world import World
from tests.dataset.conftest import write_dataset

pytestmark = pytest.mark.interop

SIZES_A = [37, 50, 13, 61, 44, 29, 55, 11]  # 300 samples, uneven shards
SIZES_B = [23, 40, 17, 31]  # 111 samples


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("order")
    return {
        "a": str(write_dataset(root / "a", SIZES_A)),
        "b": str(write_dataset(root / "b", SIZES_B, start=1000)),
    }


CASES = [
    # (id, kwargs, topologies [(nodes, ranks_per_node, workers)], ncn for the oracle)
    ("noshuffle", {"batch_size": 4}, [(1, 1, 1), (1, 3, 2)]),
    ("py1e-default-ncn", {"batch_size": 4, "shuffle": True}, [(1, 2, 3), (2, 2, 1)]),
    ("py1e-block", {"batch_size": 3, "shuffle": True, "num_canonical_nodes": 4,
                    "shuffle_block_size": 40, "partition_algo": "orig"}, [(1, 4, 2), (4, 1, 3)]),
    ("py1br", {"batch_size": 5, "shuffle": True, "shuffle_algo": "py1br",
               "num_canonical_nodes": 2, "shuffle_block_size": 64}, [(2, 1, 2), (1, 1, 4)]),
    ("py1s", {"batch_size": 2, "shuffle": True, "shuffle_algo": "py1s",
              "num_canonical_nodes": 8, "partition_algo": "orig"}, [(4, 2, 1), (2, 2, 2)]),
    ("py2s-default-ncn", {"batch_size": 4, "shuffle": True, "shuffle_algo": "py2s"},
     [(1, 1, 2), (2, 1, 1)]),
    ("naive", {"batch_size": 4, "shuffle": True, "shuffle_algo": "naive",
               "num_canonical_nodes": 4, "shuffle_seed": 123}, [(1, 2, 2), (4, 1, 1)]),
    ("ncn8-fewer-nodes", {"batch_size": 2, "shuffle": True, "num_canonical_nodes": 8,
                          "shuffle_block_size": 50}, [(2, 3, 1)]),
    ("upsample", {"batch_size": 4, "shuffle": True, "epoch_size": 450,
                  "num_canonical_nodes": 2}, [(1, 2, 2), (2, 1, 1)]),
    ("downsample-fixed", {"batch_size": 4, "shuffle": True, "epoch_size": 200,
                          "sampling_method": "fixed", "sampling_granularity": 3},
     [(1, 1, 3), (2, 2, 1)]),
]  # fmt: skip

STREAM_CASES = [
    ("proportions", [{"proportion": 0.7}, {"proportion": 0.3}], {"epoch_size": 257}),
    ("repeat-choose", [{"repeat": 1.5}, {"choose": 50}], {}),
    ("unweighted-epoch-size", [{}, {}], {"epoch_size": 333}),
]


def _check(ours_factory, ref, kwargs, topologies) -> None:
    for nodes, ranks_per_node, workers in topologies:
        ours = ours_factory()
        world = World(num_nodes=nodes, ranks_per_node=ranks_per_node)
        ours._adopt(None, world)
        for epoch in (0, 1):
            work = reference_work(
                ref, nodes=nodes, ranks_per_node=ranks_per_node, workers=workers, epoch=epoch,
                num_canonical_nodes=kwargs.get("num_canonical_nodes"),
            )  # fmt: skip
            for rank in range(nodes * ranks_per_node):
                for worker in range(workers):
                    me = World(nodes, ranks_per_node, workers, rank, worker)
                    got = ours.worker_sample_ids(epoch, 0, me).tolist()
                    want = worker_ids(work, rank, worker)
                    assert got == want, (nodes, ranks_per_node, workers, epoch, rank, worker)


@pytest.mark.parametrize(("name", "kwargs", "topologies"), CASES, ids=[c[0] for c in CASES])
def test_every_worker_yields_the_reference_order(
    data, clean_reference_shm, name, kwargs, topologies
):
    ref = reference_dataset(data["a"], **kwargs)
    _check(lambda: StreamingDataset(local=data["a"], **kwargs), ref, kwargs, topologies)


@pytest.mark.parametrize(
    ("name", "weights", "extra"), STREAM_CASES, ids=[c[0] for c in STREAM_CASES]
)
def test_two_weighted_streams_match_the_reference(data, clean_reference_shm, name, weights, extra):
    kwargs = {"batch_size": 4, "shuffle": True, "num_canonical_nodes": 2, **extra}
    ref_streams = [{"local": data[k], **w} for k, w in zip("ab", weights)]
    ref = reference_dataset("", streams=ref_streams, **kwargs)

    def ours() -> StreamingDataset:
        streams = [Stream(local=data[k], **w) for k, w in zip("ab", weights)]
        return StreamingDataset(streams=streams, **kwargs)

    assert ours().epoch_size == ref.epoch_size
    _check(ours, ref, kwargs, [(1, 2, 2), (2, 1, 1)])


def test_reference_iteration_agrees_with_the_oracle(data, clean_reference_shm):
    """The oracle is the reference's own generator; check it against a real reference run."""
    from streaming import StreamingDataLoader as RefLoader

    kwargs = {"batch_size": 4, "shuffle": True, "num_canonical_nodes": 2}
    ref = reference_dataset(data["a"], **kwargs)
    loader = RefLoader(ref, batch_size=4, num_workers=2)
    real = [[int(i) for b in loader for i in b["id"]] for _ in range(2)]
    oracle_ref = reference_dataset(data["a"], **kwargs)
    for epoch in (0, 1):
        work = reference_work(
            oracle_ref, nodes=1, ranks_per_node=1, workers=2, epoch=epoch, num_canonical_nodes=2
        )
        assert real[epoch] == rank_ids(work, 0)


def _run_rank(queue, rank, local, env, kwargs, workers, epochs) -> None:  # pragma: no cover
    os.environ.update(env)
    ds = StreamingDataset(local=local, **kwargs)
    loader = StreamingDataLoader(ds, batch_size=kwargs["batch_size"], num_workers=workers)
    queue.put((rank, [[int(i) for batch in loader for i in batch["id"]] for _ in range(epochs)]))


def run_ranks(jobs: list[tuple]) -> list:
    """Run each rank in its own (non-daemonic, so it may start DataLoader workers) process."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_run_rank, args=(queue, r, *job)) for r, job in enumerate(jobs)]
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    return [results[rank] for rank in range(len(jobs))]


@pytest.mark.parametrize(
    ("nodes", "ranks_per_node", "workers"), [(2, 2, 2), (4, 1, 0)], ids=["2x2x2", "4x1x0"]
)
def test_ranks_in_separate_processes_match_the_reference(
    data, clean_reference_shm, nodes, ranks_per_node, workers
):
    kwargs = {"batch_size": 3, "shuffle": True, "num_canonical_nodes": 4,
              "shuffle_block_size": 60}  # fmt: skip
    world = nodes * ranks_per_node
    jobs = []
    for rank in range(world):
        env = {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank % ranks_per_node),
            "LOCAL_WORLD_SIZE": str(ranks_per_node),
        }
        jobs.append((data["a"], env, kwargs, workers, 2))  # fmt: skip
    results = run_ranks(jobs)
    ref = reference_dataset(data["a"], **kwargs)
    for epoch in (0, 1):
        work = reference_work(
            ref,
            nodes=nodes,
            ranks_per_node=ranks_per_node,
            workers=max(workers, 1),
            epoch=epoch,
            num_canonical_nodes=4,
        )
        for rank in range(world):
            assert results[rank][epoch] == rank_ids(work, rank), (rank, epoch)


def test_replicated_ranks_share_samples_like_the_reference(data, clean_reference_shm, monkeypatch):
    kwargs = {"batch_size": 4, "shuffle": True, "num_canonical_nodes": 2, "replication": 2}
    # The reference in one process (its real multi-rank init wants a process group).
    ref = reference_dataset(data["a"], **{k: v for k, v in kwargs.items() if k != "replication"})
    with monkeypatch.context() as env:  # restored before the reference's shm clean-up runs
        env.setenv("WORLD_SIZE", "4")
        env.setenv("LOCAL_WORLD_SIZE", "4")
        ours = StreamingDataset(local=data["a"], **kwargs)
    work = reference_work(
        ref, nodes=1, ranks_per_node=4, workers=2, epoch=1, num_canonical_nodes=2, replication=2
    )
    assert len(ours) == -(-300 // 2)
    for rank in range(4):
        world = World(1, 4, 1, rank).replicate(2)
        for worker in range(2):
            got = ours.worker_sample_ids(1, 0, world.with_workers(worker, 2)).tolist()
            assert got == worker_ids(work, rank // 2, worker)
