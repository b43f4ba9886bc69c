"""Resume equivalence (torchdata's recipe): a state taken at the start, mid-epoch, at the end of an
epoch and mid next epoch must reproduce exactly the samples that were still to come; also on a
different topology with the same global batch, and across our loader and the reference's."""

from __future__ import annotations

import pytest
from oracle import rank_ids, reference_dataset, reference_work

from mdsloader.dataloader import StreamingDataLoader
from mdsloader.dataset import StreamingDataset
from tests.dataset.conftest import write_dataset

SIZES = [37, 50, 13, 61, 44, 29, 55, 11]  # 300 samples
KWARGS = {"batch_size": 4, "shuffle": True, "num_canonical_nodes": 2, "shuffle_block_size": 80}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_dataset(tmp_path_factory.mktemp("resume") / "a", SIZES))


def _loader(local: str, workers: int, *, persist: bool = False) -> StreamingDataLoader:
    ds = StreamingDataset(local=local, **KWARGS)
    return StreamingDataLoader(
        ds, batch_size=KWARGS["batch_size"], num_workers=workers, persistent_workers=persist
    )


def _ids(batch) -> list[int]:
    return [int(i) for i in batch["id"]]


def _epochs(loader: StreamingDataLoader, count: int) -> list[list[list[int]]]:
    return [[_ids(b) for b in loader] for _ in range(count)]


# (epoch, batches consumed in that epoch) at which the state is taken; -1 = whole epoch.
POINTS = {"start": (0, 0), "mid-epoch": (0, 30), "end-of-epoch": (0, -1), "mid-next": (1, 11)}


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS))
def test_state_reproduces_exactly_the_remaining_samples(local, workers, point):
    baseline = _epochs(_loader(local, workers), 2)
    epoch, consumed = POINTS[point]
    first = _loader(local, workers)
    state = first.state_dict()
    for e in range(epoch + 1):
        for k, batch in enumerate(first):
            assert _ids(batch) == baseline[e][k]
            if e == epoch and k + 1 == consumed:
                break
        if e == epoch and consumed:
            state = first.state_dict()
    if point == "end-of-epoch":
        assert (state["epoch"], state["sample_in_epoch"]) == (0, 300)
    resumed = _loader(local, workers)
    resumed.load_state_dict(state)
    got = _epochs(resumed, 2 - epoch)
    if point == "start":
        assert got == baseline
    elif point == "end-of-epoch":
        assert got[0] == [] and got[1] == baseline[1]  # like the reference: an empty epoch
    else:
        assert got[0] == baseline[epoch][consumed:]
        if epoch == 0:
            assert got[1] == baseline[1]


def test_persistent_workers_count_epochs_and_take_a_late_state(local):
    baseline = _epochs(_loader(local, 0), 3)
    loader = _loader(local, 2, persist=True)
    assert _epochs(loader, 3) == baseline
    state = loader.state_dict()
    assert (state["epoch"], state["sample_in_epoch"]) == (2, 300)
    # A persistent worker pool that already exists picks up a state loaded later.
    loader.load_state_dict({**state, "epoch": 3, "sample_in_epoch": 40})
    fresh = _epochs(_loader(local, 0), 4)[3]
    assert [_ids(b) for b in loader] == fresh[10:]


def test_resume_on_another_topology_with_the_same_global_batch(local, monkeypatch):
    """2 nodes x batch 6 -> 3 nodes x batch 4 (global 12): the relaxed partition re-cuts."""
    kwargs = {**KWARGS, "partition_algo": "relaxed"}

    def rank_run(nodes: int, rank: int, batch: int, state=None) -> list[int]:
        monkeypatch.setenv("WORLD_SIZE", str(nodes))
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        monkeypatch.setenv("RANK", str(rank))
        ds = StreamingDataset(local=local, **{**kwargs, "batch_size": batch})
        if state is not None:
            ds.load_state_dict(state)
        return [int(s["id"]) for s in ds], ds

    two = [rank_run(2, r, 6)[0] for r in range(2)]
    consumed_steps = 10
    _, ds0 = rank_run(2, 0, 6)
    state = ds0.state_dict(consumed_steps * 12, from_beginning=False)
    assert state["initial_physical_nodes"] == 2
    three = [rank_run(3, r, 4, state)[0] for r in range(3)]

    def global_batches(per_rank: list[list[int]], batch: int) -> list[set[int]]:
        steps = min(len(ids) for ids in per_rank) // batch
        return [set().union(*(set(ids[s * batch:(s + 1) * batch]) for ids in per_rank))
                for s in range(steps)]  # fmt: skip

    before, after = global_batches(two, 6), global_batches(three, 4)
    assert after[: len(before) - consumed_steps - 1] == before[consumed_steps:-1]


@pytest.mark.interop
def test_a_reference_state_resumes_our_loader(local, clean_reference_shm):
    from streaming import StreamingDataLoader as RefLoader

    ref_loader = RefLoader(reference_dataset(local, **KWARGS), batch_size=4, num_workers=0)
    ref_batches = []
    for k, batch in enumerate(ref_loader):
        ref_batches.append(_ids(batch))
        if k == 24:
            break
    state = ref_loader.state_dict()
    work = reference_work(
        reference_dataset(local, **KWARGS),
        nodes=1,
        ranks_per_node=1,
        workers=1,
        epoch=0,
        num_canonical_nodes=2,
    )
    remaining = rank_ids(work, 0)[25 * 4 :]
    ours = _loader(local, 2)
    ours.load_state_dict(state)
    assert [i for b in ours for i in _ids(b)] == remaining


@pytest.mark.interop
def test_our_state_resumes_the_reference(local, clean_reference_shm):
    from streaming import StreamingDataLoader as RefLoader

    baseline = _epochs(_loader(local, 0), 1)[0]
    ours = _loader(local, 0)
    for k, _ in enumerate(ours):
        if k == 40:
            break
    state = ours.state_dict()
    ref_loader = RefLoader(reference_dataset(local, **KWARGS), batch_size=4, num_workers=0)
    ref_loader.load_state_dict(state)
    assert [_ids(b) for b in ref_loader] == baseline[41:]
