"""REST to Celery worker to Spark to S3 to the loader: real processes, real services on loopback.

One worker process (solo pool, its own Spark session) serves the success and cancel tests; the
kill test starts its own two workers.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.main import celery_enqueuer, create_app
from app.settings import AppSettings
from tests.conftest import free_port, require
from tests.service.conftest import AUTH, TOKEN, LiveServer
from tests.service.fleet import published_files as referenced_files
from tests.service.workers import CeleryWorker
from worker.jobs import RedisJobStore

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 4_000
CALLBACK_SECRET = "e2e-callback-secret"
FINAL = {"succeeded", "failed", "cancelled"}


def write_source(directory: Path, rows: int, files: int = 4, pad: int = 0) -> str:
    """A path-based parquet table (no metastore needed); returns its Spark identifier."""
    directory.mkdir(parents=True)
    per_file = rows // files
    for part in range(files):
        ids = list(range(part * per_file, (part + 1) * per_file))
        table = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "name": pa.array([f"row-{i}-" + "x" * (i % 17) + _noise(i, pad) for i in ids]),
                "score": pa.array([i * 0.5 for i in ids], pa.float64()),
                "emb": pa.array([[float(i), float(-i), 0.25] for i in ids], pa.list_(pa.float32())),
            }
        )
        pq.write_table(table, directory / f"part-{part}.parquet")
    return f"parquet.`{directory}`"


def _noise(seed: int, size: int) -> str:
    """Incompressible-ish text, so that a conversion takes real work (cancel/kill tests)."""
    return random.Random(seed).randbytes(size // 2).hex() if size else ""


class Env:
    """Everything one group of tests shares: Redis keys, queue, S3 bucket, data dirs."""

    def __init__(self, redis_url: str, bucket: str, base: Path) -> None:
        self.prefix = f"e{uuid.uuid4().hex[:10]}"
        self.bucket, self.base = bucket, base
        self.settings = AppSettings(
            redis_url=redis_url,
            redis_prefix=self.prefix,
            celery_queue=f"{self.prefix}-q",
            api_tokens=[TOKEN],
            allowed_targets=[bucket],
            allowed_source_paths=[str(base)],
            callback_secret=CALLBACK_SECRET,
            callback_allowed_hosts=["127.0.0.1"],
            callback_allowed_networks=["127.0.0.0/8"],
            outbox_delay=1,
            outbox_interval=1,
        )

    def worker_env(self, name: str, **extra: str) -> dict[str, str]:
        return {
            "REDIS_URL": self.settings.redis_url,
            "REDIS_PREFIX": self.prefix,
            "CELERY_QUEUE": self.settings.celery_queue,
            "DATA_DIR": str(self.base / f"data-{name}"),
            "SPARK_MASTER": "local[1]",
            "SPARK_CONF": json.dumps(
                {"spark.sql.shuffle.partitions": "4", "spark.ui.showConsoleProgress": "false"}
            ),
            "WORKER_PROGRESS_INTERVAL": "0.5",
            "WORKER_CANCEL_POLL_INTERVAL": "0.2",
            "WORKER_LOG_JSON": "true",
            # The worker checks every job against the same grants as the API.
            "APP_API_TOKENS": TOKEN,
            "APP_ALLOWED_TARGETS": self.bucket,
            "APP_ALLOWED_SOURCE_PATHS": str(self.base),
            "APP_CALLBACK_SECRET": CALLBACK_SECRET,
            "APP_CALLBACK_ALLOWED_HOSTS": "127.0.0.1",
            "APP_CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8",
            # Short, so that a job of a killed worker is taken over quickly (test_kill_9_...).
            "WORKER_LEASE_TTL": "4",
            **extra,
        }

    def worker(self, name: str, **extra: str) -> CeleryWorker:
        return CeleryWorker(self.worker_env(name, **extra), self.base / f"{name}.log", name)


@pytest.fixture(scope="module")
def env(redis_server, s3_endpoint, tmp_path_factory) -> Env:
    require(__import__("shutil").which("java") is not None, "java is not installed")
    import boto3

    bucket = f"e2e-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return Env(redis_server.url, f"s3://{bucket}", tmp_path_factory.mktemp("e2e"))


@pytest.fixture(scope="module")
def source(env: Env) -> str:
    return write_source(env.base / "source", ROWS)


@pytest.fixture(scope="module")
def api(env: Env) -> Iterator[httpx.Client]:
    with (
        LiveServer(create_app(env.settings), free_port()) as server,
        server.client(headers=AUTH) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def worker(env: Env) -> Iterator[CeleryWorker]:
    process = env.worker("main").start()
    yield process
    process.stop()


def wait_for(api: httpx.Client, job_id: str, states: set[str], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def read_dataset(target: str, local: Path) -> list[dict]:
    """Download the published dataset and read every sample with the loader's reader."""
    from mdsloader.mds.reader import open_local_dataset
    from mdsloader.storage import open_storage

    storage = open_storage(target)
    index = json.loads(storage.read_bytes("index.json"))
    for shard in index["shards"]:
        data = shard["zip_data"] or shard["raw_data"]
        (local / data["basename"]).parent.mkdir(parents=True, exist_ok=True)
        storage.download_file(data["basename"], str(local / data["basename"]))
    storage.download_file("index.json", str(local / "index.json"))
    dataset = open_local_dataset(str(local))
    return [dataset[i] for i in range(len(dataset))]




def assert_same_rows(samples: list[dict], rows: int) -> None:
    assert len(samples) == rows
    by_id = sorted(samples, key=lambda s: int(s["id"]))
    for expected, sample in enumerate(by_id):
        assert int(sample["id"]) == expected
        assert sample["name"] == f"row-{expected}-" + "x" * (expected % 17)
        assert float(sample["score"]) == expected * 0.5
        assert [float(v) for v in sample["emb"]] == [float(expected), float(-expected), 0.25]


def wait_for_written_shard(api: httpx.Client, job_id: str, target: str, log: CeleryWorker) -> dict:
    """Wait until the job is running and a first shard has landed in the target."""
    from mdsloader.storage import open_storage

    storage, deadline = open_storage(target), time.monotonic() + 120
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in FINAL or any(".mds" in name for name in storage.list(f"{job_id}/")):
            break
        time.sleep(0.05)
    assert job["state"] == "running", f"{job}\n{log.log_tail()}"
    return job


def submit(api: httpx.Client, source: str, target: str, **extra: object) -> dict:
    body = {"source_table": source, "target": target, "compression": "zstd:3", **extra}
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def test_submit_convert_and_read_back_every_row(api, env, source, worker, tmp_path) -> None:
    job = submit(api, source, f"{env.bucket}/events/v1", partitions=4)
    done = wait_for(api, job["id"], FINAL)
    assert done["state"] == "succeeded", f"{done}\n{worker.log_tail()}"
    result = done["result"]
    assert result["samples"] == ROWS and result["shards"] >= 4
    assert result["index_url"].startswith(f"{env.bucket}/events/v1")
    assert done["progress"]["rows_written"] == ROWS
    assert [(t["source"], t["target"]) for t in done["transitions"]] == [
        (None, "queued"),
        ("queued", "running"),
        ("running", "succeeded"),
    ]
    assert_same_rows(read_dataset(f"{env.bucket}/events/v1", tmp_path), ROWS)
    metrics = api.get("/metrics").text
    assert 'mds_convert_jobs_finished_total{state="succeeded"} 1.0' in metrics
    assert f"mds_convert_rows_written_total {float(ROWS)}" in metrics


def test_cancel_a_running_job_publishes_nothing(api, env, worker, tmp_path) -> None:
    from mdsloader.storage import open_storage

    big = write_source(env.base / "big", 40_000, files=8, pad=400)  # under the allowed root
    target = f"{env.bucket}/cancelled"
    job = submit(api, big, target, partitions=32, compression="gz:9")
    wait_for_written_shard(api, job["id"], target, worker)
    response = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202, response.text
    asked = time.monotonic()
    done = wait_for(api, job["id"], FINAL, timeout=60)
    assert done["state"] == "cancelled", f"{done}\n{worker.log_tail()}"
    assert time.monotonic() - asked < 30
    assert done["result"] is None
    assert [(t["source"], t["target"]) for t in done["transitions"]][-2:] == [
        ("running", "cancelling"),
        ("cancelling", "cancelled"),
    ]
    assert open_storage(target).list("") == []


def test_the_worker_refuses_a_record_altered_in_redis(api, env, worker) -> None:
    """A job record edited in Redis to read a host file is failed by the worker's own check
    (its Spark never reads the file) and nothing is written to the target."""
    from mdsloader.storage import open_storage
    from worker.access.principals import legacy_name
    from worker.jobs import JobRecord, JobRequest

    store = RedisJobStore.from_url(env.settings.redis_url, prefix=env.prefix)
    target = f"{env.bucket}/altered"
    request = JobRequest(source_table="csv.`/etc/passwd`", target=target)
    record = JobRecord.new(request, legacy_name(TOKEN))
    store.create(record)
    celery_enqueuer(env.settings)(record.id)
    done = wait_for(api, record.id, FINAL, timeout=120)
    assert done["state"] == "failed" and done["error"]["code"] == "access_denied", done
    assert "not under an allowed source root" in done["error"]["message"]
    assert open_storage(target).list("") == []


def test_a_finished_job_calls_back_signed_from_the_worker(api, env, source, worker) -> None:
    from tests.service.callback_receiver import CallbackReceiver
    from worker.callbacks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

    with CallbackReceiver([500, 200]) as receiver:
        job = submit(api, source, f"{env.bucket}/called-back", callback_url=receiver.url)
        done = wait_for(api, job["id"], FINAL)
        deadline = time.monotonic() + 30
        while len(receiver.received) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert done["state"] == "succeeded", done
    second = receiver.received[1]
    body = json.loads(second.body)
    assert body["id"] == job["id"] and body["state"] == "succeeded"
    assert body["result"]["samples"] == ROWS
    headers = second.headers
    assert verify(CALLBACK_SECRET.encode(), headers[TIMESTAMP_HEADER], second.body,
                  headers[SIGNATURE_HEADER])  # fmt: skip
    deadline = time.monotonic() + 10
    while len(attempts := api.get(f"/v1/jobs/{job['id']}").json()["callbacks"]) < 2:
        assert time.monotonic() < deadline, attempts
        time.sleep(0.1)  # the attempt is recorded once the receiver has answered
    assert [a["status_code"] for a in attempts] == [500, 200] and attempts[-1]["delivered"]


def test_daily_appends_on_s3_while_a_loader_streams_the_old_index(
    api, env, source, worker, tmp_path, reference
) -> None:
    """Three slices appended through the API and the worker to one S3 dataset. A loader that
    opened the first index keeps streaming it across both appends; after each append our loader
    and the reference read the old ids first, then the new rows."""
    from mdsloader import StreamingDataset

    target = f"{env.bucket}/daily"

    def slice_of(n: int, mode: str) -> dict:
        condition = {"column": "id", "op": "between", "value": [1000 * n, 1000 * n + 999]}
        job = submit(api, source, target, mode=mode, filter=[condition])
        done = wait_for(api, job["id"], FINAL)
        assert done["state"] == "succeeded", done
        return done["result"]

    slice_of(0, "error")
    old = StreamingDataset(remote=target, local=str(tmp_path / "old"), batch_size=1)
    stream = iter(old)
    first_half = [int(next(stream)["id"]) for _ in range(500)]
    seen = [int(s["id"]) for s in StreamingDataset(remote=target, local=str(tmp_path / "c0"),
                                                   batch_size=1)]  # fmt: skip
    for n in (1, 2):
        result = slice_of(n, "append")
        assert (result["added_samples"], result["samples"]) == (1000, 1000 * (n + 1))
        ours = [int(s["id"]) for s in StreamingDataset(
            remote=target, local=str(tmp_path / f"ours{n}"), batch_size=1)]  # fmt: skip
        theirs = [int(s["id"]) for s in reference.StreamingDataset(
            remote=target, local=str(tmp_path / f"ref{n}"), batch_size=1, shuffle=False)]
        assert ours == theirs and ours[: len(seen)] == seen
        assert sorted(ours[len(seen) :]) == list(range(1000 * n, 1000 * (n + 1)))
        seen = ours
    # The reader of the first index finishes its epoch: exactly the first slice's rows.
    rest = [int(sample["id"]) for sample in stream]
    assert sorted(first_half + rest) == list(range(1000))


def test_kill_9_mid_job_is_redelivered_and_completes(api, env, tmp_path, worker) -> None:
    from mdsloader.storage import open_storage

    # The module's worker (Spark warm, short lease) is the one that dies; it is this module's
    # last test. Only the restoring worker's visibility timeout matters for the redelivery.
    big = write_source(env.base / "kill", 40_000, files=8, pad=400)
    target = f"{env.bucket}/killed"
    try:
        job = submit(api, big, target, partitions=32, compression="gz:9")
        wait_for_written_shard(api, job["id"], target, worker)
    finally:
        worker.kill()
    store = RedisJobStore.from_url(env.settings.redis_url, prefix=env.prefix)
    short = {"CELERY_VISIBILITY_TIMEOUT": "10", "WORKER_RESTORE_INTERVAL": "1"}
    second = env.worker("second", **short).start()
    try:
        done = wait_for(api, job["id"], FINAL, timeout=180)
        assert done["state"] == "succeeded", f"{done}\n{second.log_tail()}"
    finally:
        second.stop()
    edges = [(t["source"], t["target"], t["attempt"]) for t in done["transitions"]]
    assert edges == [
        (None, "queued", 0),
        ("queued", "running", 1),
        ("running", "running", 2),
        ("running", "succeeded", 2),
    ]
    assert done["attempts"] == 2 and done["result"]["samples"] == 40_000
    storage = open_storage(target)
    assert set(storage.list("")) == referenced_files(storage), "orphaned shards after redelivery"
    assert store.client.exists(store.lease_key(job["id"])) == 0
