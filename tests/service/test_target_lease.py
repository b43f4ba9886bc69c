"""One owner per target: normalisation, the runner's wait, and the same-target race of issue 16."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.service.fleet import PoolWorker, published_files, wait_final
from worker.convert.model import ConversionResult
from worker.jobs import JobRecord, JobRequest, JobState
from worker.settings import WorkerSettings
from worker.target_lease import TargetLeases, normalise_target
from worker.tasks import JobRunner, RetryLater

pytestmark = pytest.mark.integration

RESULT = ConversionResult(
    index_url="s3://b/x/index.json", samples=1, shards=1, raw_bytes=1, zip_bytes=1,
    columns={"x": "int64"},
)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("s3://bucket/x/y", "s3://bucket//x/y/"),
        ("s3://Bucket/x", "S3://bucket/x"),
        ("s3://bucket/x/./y", "s3://bucket/x/z/../y"),
        ("/data/sets/a", "file:///data/sets/a/"),
        ("/data/sets//a", "/data/sets/b/../a"),
    ],
)
def test_spellings_of_one_target_normalise_alike(a, b) -> None:
    assert normalise_target(a) == normalise_target(b)


def test_different_targets_stay_different() -> None:
    assert normalise_target("s3://b/x") != normalise_target("s3://b/x2")
    assert normalise_target("s3://b/x") != normalise_target("/b/x")


def test_nested_targets_exclude_each_other(store) -> None:
    leases = TargetLeases(store)
    assert leases.acquire("s3://b/x", "job-a", 5) is None
    # A part of a split job's target, and the parent of it, are both taken by job-a.
    assert leases.acquire("s3://b/x/train", "job-b", 5) == "job-a"
    assert leases.acquire("s3://B/x/train/", "job-b", 5) == "job-a"
    assert leases.acquire("s3://b", "job-b", 5) == "job-a"
    # Siblings and look-alike prefixes are other targets.
    assert leases.acquire("s3://b/x2", "job-c", 5) is None
    assert leases.acquire("s3://b/y/x", "job-d", 5) is None
    assert leases.acquire("s3://b/x", "job-a", 5) is None  # the holder keeps it
    assert leases.renew("s3://b/x", "job-a", 5)
    leases.release("s3://b/x", "job-a")
    assert leases.acquire("s3://b/x/train", "job-b", 5) is None
    assert leases.acquire("s3://b/x", "job-a", 5) == "job-b"


def test_an_expired_nested_lease_does_not_block(store) -> None:
    import time

    leases = TargetLeases(store)
    assert leases.acquire("/data/x/part", "dead-job", 0.2) is None
    assert leases.acquire("/data/x", "job", 5) == "dead-job"
    time.sleep(0.3)  # the holder died: its lease expires, entry and all
    assert leases.acquire("/data/x", "job", 5) is None


@pytest.fixture
def settings(redis_server, prefix) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_server.url, redis_prefix=prefix, cancel_poll_interval=0.05,
        lease_ttl=2, target_wait_interval=0.2, allowed_targets=["s3://bkt"],
    )


def make_job(store, target: str) -> str:
    record = JobRecord.new(JobRequest(source_table="db.t", target=target))
    store.create(record)
    return record.id


def test_a_job_whose_target_is_owned_waits_queued_with_the_reason(store, settings) -> None:
    first, second = make_job(store, "s3://bkt/ds"), make_job(store, "s3://bkt//ds/")
    release = threading.Event()

    def slow(spec, **_):
        assert release.wait(10)
        return RESULT

    runner = JobRunner(store, settings, slow, "w1")
    owner = threading.Thread(target=runner.run, args=(first,))
    owner.start()
    deadline = time.monotonic() + 10
    while store.get(first).state is not JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.02)
    other = JobRunner(store, settings, slow, "w2")
    with pytest.raises(RetryLater) as waited:
        other.run(second)
    assert waited.value.delay < 1
    record = store.get(second)
    assert record.state is JobState.QUEUED
    assert record.waiting is not None and record.waiting.holder == first
    assert "s3://bkt/ds" in record.waiting.reason
    assert int(store.client.hget(store.metrics_key, "lease_waits")) == 1
    release.set()
    owner.join(10)
    assert other.run(second) is JobState.SUCCEEDED
    done = store.get(second)
    assert done.waiting is None
    assert TargetLeases(store).holder("s3://bkt/ds") is None, "lease released at the end"


# -- the race of issue 16: two jobs, mode "error", one local target, worker --concurrency 2 ------


@pytest.fixture
def race_env(redis_server, tmp_path_factory):
    import shutil

    from tests.conftest import require
    from tests.service.test_end_to_end import Env

    require(shutil.which("java") is not None, "java is not installed")
    base = tmp_path_factory.mktemp("race")
    root = base / "datasets"
    root.mkdir()
    return Env(redis_server.url, str(root), base)


@pytest.fixture
def race_api(race_env) -> Iterator:
    from app.main import create_app
    from tests.conftest import free_port
    from tests.service.conftest import AUTH, LiveServer

    with (
        LiveServer(create_app(race_env.settings), free_port()) as server,
        server.client(headers=AUTH) as client,
    ):
        yield client


@pytest.mark.slow
def test_two_error_mode_jobs_to_one_target_never_both_publish(race_env, race_api) -> None:
    from mdsloader.storage import open_storage
    from tests.service.test_end_to_end import read_dataset, write_source

    sources = {
        3000: write_source(race_env.base / "a", 3000),
        2000: write_source(race_env.base / "b", 2000),
    }
    target = f"{race_env.bucket}/shared"
    env = race_env.worker_env("pair", WORKER_TARGET_WAIT_INTERVAL="0.3")
    worker = PoolWorker(env, race_env.base / "pair.log", "pair", pool="prefork", concurrency=2)
    worker.start()
    try:
        jobs = [
            race_api.post(
                "/v1/jobs", json={"source_table": src, "target": target, "mode": "error"}
            ).json()
            for src in sources.values()
        ]
        done = wait_final(race_api, [j["id"] for j in jobs], timeout=240)
    finally:
        worker.stop()
    states = sorted(job["state"] for job in done.values())
    assert states == ["failed", "succeeded"], f"{done}\n{worker.log_tail()}"
    winner = next(j for j in done.values() if j["state"] == "succeeded")
    loser = next(j for j in done.values() if j["state"] == "failed")
    assert loser["error"]["code"] == "target_exists", loser
    # The target holds exactly the winner's dataset, and nothing of the loser's.
    storage = open_storage(target)
    assert set(storage.list("")) - {"_mds_convert/publish.lock"} == published_files(storage)
    rows = winner["result"]["samples"]
    assert rows in sources
    assert len(read_dataset(target, race_env.base / "read")) == rows
    assert not storage.list(f"{loser['id']}/")
