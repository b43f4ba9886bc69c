"""Pure-logic tests of the loader's small modules (no torch, no data)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from mdsloader.cache import parse_bytes
from mdsloader.locks import file_lock
from mdsloader.options import parse_count, validate_order_options
from mdsloader.state import EpochLedger, ResumeState, resolve_epoch
from mdsloader.stream import Stream, default_local_dir, join_url
from mdsloader.world import World, detect_world

STATE = {
    "epoch": 2,
    "sample_in_epoch": 40,
    "num_canonical_nodes": 4,
    "shuffle_seed": 7,
    "initial_physical_nodes": 2,
}


def test_detect_world_reads_launcher_environment():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"}
    world = detect_world(env)
    assert (world.num_nodes, world.ranks_per_node, world.rank) == (2, 4, 5)
    assert (world.node, world.rank_of_node, world.num_ranks) == (1, 1, 8)
    assert detect_world({}) == World()


def test_detect_world_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="multiple"):
        detect_world({"WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="outside"):
        detect_world({"RANK": "3", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"})


def test_world_workers_and_replication_match_reference_arithmetic():
    world = World(num_nodes=2, ranks_per_node=4, rank=5).with_workers(1, 3)
    assert world.worker == 5 * 3 + 1
    rep = world.replicate(2)
    assert (rep.num_nodes, rep.ranks_per_node, rep.rank, rep.worker_of_rank) == (1, 4, 2, 1)
    assert World(num_nodes=1, ranks_per_node=6, rank=3).replicate(3).num_nodes == 1
    with pytest.raises(ValueError, match="divisible"):
        world.replicate(3)


def test_resume_state_accepts_reference_dicts_and_rejects_garbage():
    state = ResumeState.from_dict({**STATE, "extra": 1})
    assert state.to_dict() == STATE
    old = {k: v for k, v in STATE.items() if k != "initial_physical_nodes"}
    assert ResumeState.from_dict(old).initial_physical_nodes is None
    assert ResumeState.from_dict({**STATE, "epoch": np.int64(2)}).epoch == 2
    with pytest.raises(ValueError, match="lacks"):
        ResumeState.from_dict({"epoch": 1})
    with pytest.raises(ValueError, match="integer"):
        ResumeState.from_dict({**STATE, "sample_in_epoch": "x"})


def test_resolve_epoch_ignores_stale_states():
    state = ResumeState.from_dict(STATE)
    assert resolve_epoch(0, None) == (0, 0, None)
    assert resolve_epoch(2, state) == (2, 40, state)
    assert resolve_epoch(1, state) == (2, 40, state)
    assert resolve_epoch(3, state) == (3, 0, None)


def test_ledger_round_trips_and_is_removed_only_by_its_owner(tmp_path: Path):
    ledger = EpochLedger(tmp_path / "ledger")
    assert ledger.next_epoch() == 0 and ledger.load_resume() is None
    ledger.set_next_epoch((0, 2), 3)
    ledger.set_next_epoch((1, 2), 2)
    assert (ledger.next_epoch((0, 2)), ledger.next_epoch((1, 2)), ledger.next_epoch()) == (3, 2, 3)
    # A new worker layout continues from the other layouts, never from its own siblings.
    assert ledger.next_epoch((0, 1)) == 3
    ledger.set_next_epoch((0, 3), 5)
    assert ledger.next_epoch((1, 3)) == 3
    ledger.save_resume(ResumeState.from_dict(STATE))
    assert ledger.load_resume() == ResumeState.from_dict(STATE)
    ledger._owner_pid = -1
    ledger.remove()
    assert ledger.directory.exists()
    ledger._owner_pid = os.getpid()
    ledger.remove()
    assert not ledger.directory.exists()


def test_options_validation_mirrors_reference_and_refuses_unsupported_batching():
    base = {
        "epoch_size": "1.5k", "sampling_method": "balanced", "sampling_granularity": 1,
        "partition_algo": "relaxed", "num_canonical_nodes": None, "batch_size": 4,
        "shuffle": True, "shuffle_algo": "py1e", "shuffle_seed": 1, "shuffle_block_size": None,
        "batching_method": "random", "replication": None,
    }  # fmt: skip
    assert validate_order_options(**base).epoch_size == 1500
    for key, bad in [
        ("shuffle_algo", "py1b"),
        ("partition_algo", "x"),
        ("shuffle_seed", -1),
        ("sampling_granularity", 0),
        ("sampling_method", "x"),
    ]:
        with pytest.raises(ValueError):
            validate_order_options(**{**base, key: bad})
    for method in ("stratified", "per_stream", "device_per_stream"):
        options = validate_order_options(**{**base, "batching_method": method})
        assert options.batching_method == method
    with pytest.raises(ValueError, match="batching_method"):
        validate_order_options(**{**base, "batching_method": "strat"})


def test_size_parsers():
    assert parse_count("64M") == 64_000_000 and parse_count(12) == 12
    assert parse_bytes("1.5mb") == 1_572_864 and parse_bytes("123") == 123
    assert parse_bytes("9b") == 9
    with pytest.raises(ValueError):
        parse_bytes("12 parsecs")


def test_default_local_dir_is_per_user_and_per_remote():
    a = default_local_dir("s3://b/x", "train", uid=1000)
    assert a == default_local_dir("s3://b/x", "train", uid=1000)
    assert a != default_local_dir("s3://b/x", "train", uid=1001)
    assert a != default_local_dir("s3://b/y", "train", uid=1000)
    assert a.endswith("/train") and "mdsloader-1000" in a
    assert join_url("s3://b/p/", "val") == "s3://b/p/val"


def test_stream_validation_and_defaults(tmp_path: Path):
    with pytest.raises(ValueError, match="At most one"):
        Stream(remote="x", proportion=0.5, repeat=2)
    with pytest.raises(ValueError, match="non-negative"):
        Stream(remote="x", choose=-1)
    stream = Stream(remote=str(tmp_path / "r"), validate_hash="xxh64")
    stream.apply_default({"split": "s", "download_retry": 5, "keep_zip": True})
    assert (stream.download_retry, stream.keep_zip, stream.split) == (5, True, "s")
    assert stream.local_root.name == "s" and stream.has_remote
    same = Stream(remote=str(tmp_path), local=str(tmp_path))
    same.apply_default({})
    assert not same.has_remote and same.keep_zip_files


def _hold_lock(path: str, ready, release) -> None:  # pragma: no cover - child process
    with file_lock(Path(path)):
        ready.set()
        release.wait(10)


def test_file_lock_excludes_processes_and_dies_with_its_holder(tmp_path: Path):
    lock = tmp_path / "x.lock"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(lock), ready, release))
    child.start()
    assert ready.wait(10)
    with file_lock(lock, blocking=False) as held:
        assert not held
    child.kill()  # killed while holding the lock: the kernel must release it
    child.join()
    with file_lock(lock, blocking=False) as held:
        assert held


def test_loader_modules_other_than_dataset_and_dataloader_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, mdsloader.stream, mdsloader.cache, mdsloader.download, mdsloader.state, "
        "mdsloader.world, mdsloader.catalog, mdsloader.order, mdsloader.shardview, "
        "mdsloader.fastdecode, mdsloader.options, mdsloader.locks; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ledgers_of_dead_owners_are_pruned(tmp_path: Path, monkeypatch):
    import mdsloader.state as state

    monkeypatch.setattr(state, "ledger_root", lambda: tmp_path)
    proc = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0,))
    proc.start()
    proc.join()
    dead = tmp_path / f"{proc.pid}-abc"
    dead.mkdir()
    live = tmp_path / f"{os.getpid()}-def"
    live.mkdir()
    ledger = EpochLedger()
    assert not dead.exists() and live.exists()
    assert ledger.directory.parent == tmp_path
    assert ledger.directory.name.startswith(f"{os.getpid()}-")
