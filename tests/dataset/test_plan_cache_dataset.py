"""The dataset and its node-local plan cache: prepared plans are used, and change nothing.

A run's first epoch can be planned before iterating (``prepare_plan``, e.g. while the model loads);
the DataLoader's workers then map the published plan instead of replaying the epoch's draws. The
order must be the same whichever process made the plan.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.data import DataLoader

import mdsloader.plan_cache as plan_cache_module
from mdsloader.dataset import StreamingDataset
from mdsloader.stream import lock_dir_for
from tests.dataset.conftest import write_dataset


def _plans(data: Path) -> list[str]:
    folder = lock_dir_for(data) / "plans"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


def _ids(ds: StreamingDataset, workers: int) -> list[int]:
    loader = DataLoader(ds, batch_size=4, num_workers=workers)
    return [int(i) for batch in loader for i in batch["id"]]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "d", [40, 7, 0, 33, 60, 12])


def test_a_prepared_plan_is_what_the_workers_use(data: Path, monkeypatch):
    fresh = _ids(StreamingDataset(local=str(data), batch_size=4, shuffle=True,
                                  shuffle_block_size=50), 2)
    for entry in (lock_dir_for(data) / "plans").iterdir():  # start over without plans
        if entry.is_dir():
            for item in entry.iterdir():
                item.unlink()
            entry.rmdir()
    ds = StreamingDataset(local=str(data), batch_size=4, shuffle=True, shuffle_block_size=50)
    thread = ds.prepare_plan(background=True)
    assert thread is not None
    thread.join(30)
    assert len(_plans(data)) == 1 and "-e0-" in _plans(data)[0]

    def no_replay(*args):
        raise AssertionError("a worker replayed the draws instead of mapping the plan")

    # Workers fork from here, so they inherit the guard: they must map the published plan.
    monkeypatch.setattr(plan_cache_module, "replay_py1e", no_replay)
    assert _ids(ds, 2) == fresh


def test_prepare_plan_follows_a_loaded_state(data: Path):
    ds = StreamingDataset(local=str(data), batch_size=4, shuffle=True, shuffle_block_size=50)
    ds.load_state_dict({"epoch": 3, "sample_in_epoch": 20, "num_canonical_nodes": 2,
                        "shuffle_seed": 11, "initial_physical_nodes": 1})
    assert ds.prepare_plan() is None
    (name,) = _plans(data)
    assert "-e3-" in name
    assert ds.num_canonical_nodes == 2 and ds.shuffle_seed == 11


@pytest.mark.parametrize("options", [{"shuffle": False}, {"shuffle": True, "shuffle_algo": "py1s"}])
def test_prepare_plan_is_a_no_op_when_no_replay_is_needed(data: Path, options: dict):
    ds = StreamingDataset(local=str(data), batch_size=4, **options)
    assert ds.prepare_plan(background=True) is None
    assert _plans(data) == []
