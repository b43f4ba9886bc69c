"""Housekeeping: dead run directories and retired generations go after the grace period; nothing
a published index references ever goes; busy targets are skipped; the CLI's dry run removes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from mdsloader.storage import open_storage
from tests.service.workers import ROOT
from tests.worker.test_publish_logic import write_partition
from worker.convert.publish import Publisher, read_retired
from worker.housekeeping import Housekeeper
from worker.jobs import JobRecord, JobRequest, JobState, new_job_id
from worker.target_lease import TargetLeases

pytestmark = pytest.mark.integration
S = JobState
HOUR = 3600.0


def job(store, target: str, *states: JobState) -> str:
    record = JobRecord.new(JobRequest(source_table="db.t", target=str(target)))
    store.create(record)
    current = S.QUEUED
    for state in states:
        store.transition(record.id, state, expected={current})
        current = state
    return record.id


def publish(target, run: str, mode: str = "error") -> None:
    publisher = Publisher(open_storage(str(target)), run, mode)  # type: ignore[arg-type]
    publisher.check_target()
    publisher.publish([write_partition(target, run, 0, ["shard.00000.mds.zstd"])])


def tops(target) -> set[str]:
    return {p.split("/", 1)[0] for p in open_storage(str(target)).list("")}


def later(seconds: float):
    return lambda: time.time() + seconds


def test_overwritten_generations_and_failed_runs_go_after_the_grace_period(store, tmp_path):
    target = tmp_path / "ds"
    first = job(store, target, S.RUNNING, S.SUCCEEDED)
    publish(target, first)
    failed = job(store, target, S.RUNNING, S.FAILED)
    write_partition(target, failed, 0, ["shard.00000.mds.zstd"])  # what its run left behind
    second = job(store, target, S.RUNNING)
    publish(target, second, "overwrite")
    store.transition(second, S.SUCCEEDED, expected={S.RUNNING})
    running = job(store, target, S.RUNNING)
    write_partition(target, running, 0, ["shard.00000.mds.zstd"])
    assert tops(target) == {"index.json", "_mds_convert", first, failed, second, running}

    young = Housekeeper(store, grace=HOUR, clock=later(HOUR / 2)).run()
    assert young.removed == [] and tops(target) >= {first, failed}

    dry = Housekeeper(store, grace=HOUR, dry_run=True, clock=later(2 * HOUR)).run()
    assert sorted(dry.removed) == sorted(
        open_storage(str(target)).child_url(d) + "/" for d in (first, failed)
    )
    assert tops(target) >= {first, failed}, "a dry run removes nothing"

    done = Housekeeper(store, grace=HOUR, clock=later(2 * HOUR)).run()
    assert done.files > 0 and done.skipped == []
    # The published generation and the running job's directory stay; the rest is gone.
    assert tops(target) == {"index.json", "_mds_convert", second, running}
    assert read_retired(open_storage(str(target))) == []


def test_nothing_a_published_index_references_is_removed_even_with_no_grace(store, tmp_path):
    target = tmp_path / "ds"
    only = job(store, target, S.RUNNING, S.SUCCEEDED)
    publish(target, only)
    before = open_storage(str(target)).list("")
    Housekeeper(store, grace=0).run()
    assert open_storage(str(target)).list("") == before


def test_abandoned_run_dirs_go_and_foreign_dirs_stay(store, tmp_path):
    target = tmp_path / "ds"
    job(store, target)  # makes the target known
    ghost = new_job_id()  # a run directory whose record is gone
    write_partition(target, ghost, 0, ["shard.00000.mds.zstd"])
    write_partition(target, "users-own-files", 0, ["shard.00000.mds.zstd"])
    Housekeeper(store, grace=HOUR, clock=later(HOUR / 2)).run()
    assert ghost in tops(target)
    Housekeeper(store, grace=HOUR, clock=later(2 * HOUR)).run()
    assert tops(target) == {"users-own-files"}


def test_a_target_a_job_is_writing_is_skipped(store, tmp_path):
    target = tmp_path / "ds"
    failed = job(store, target, S.RUNNING, S.FAILED)
    write_partition(target, failed, 0, ["shard.00000.mds.zstd"])
    leases = TargetLeases(store)
    assert leases.acquire(str(target), "some-job", 30) is None
    report = Housekeeper(store, grace=0).run()
    assert report.removed == [] and "writing" in report.skipped[0]
    leases.release(str(target), "some-job")
    assert Housekeeper(store, grace=0).run().removed


def test_cli_dry_run_lists_and_removes_nothing(store, redis_server, prefix, tmp_path):
    target = tmp_path / "ds"
    failed = job(store, target, S.RUNNING, S.FAILED)
    write_partition(target, failed, 0, ["shard.00000.mds.zstd"])
    env = {**os.environ, "REDIS_URL": redis_server.url, "REDIS_PREFIX": prefix}
    command = [sys.executable, "-m", "app.cli", "housekeeping", "--grace", "0", "--json"]
    out = subprocess.run(
        [*command, "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["dry_run"] is True and report["removed"] == [str(target / failed) + "/"]
    assert failed in tops(target)
    out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and failed not in tops(target)
