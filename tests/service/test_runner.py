"""The job runner's state machine against a real Redis, with a fake conversion function."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from worker.convert.model import ConversionProgress, ConversionResult
from worker.errors import ConversionCancelled, TableNotFoundError, TransientConversionError
from worker.jobs import JobRecord, JobRequest, JobResult, JobState, RedisJobStore
from worker.settings import WorkerSettings
from worker.tasks import JobRunner, RetryLater, discard_unpublished_run, spec_for

pytestmark = pytest.mark.integration

S = JobState
RESULT_FIELDS = {
    "index_url": "s3://b/x/index.json",
    "samples": 10,
    "shards": 2,
    "raw_bytes": 100,
    "zip_bytes": 50,
    "columns": {"x": "int64"},
}
RESULT = ConversionResult(**RESULT_FIELDS)


@pytest.fixture
def settings(redis_server, prefix, tmp_path) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_server.url,
        redis_prefix=prefix,
        # The worker re-checks each job's grants; these records have no principal, so the
        # global allow-lists apply.
        allowed_targets=["s3://bkt", str(tmp_path), "/data"],
        cancel_poll_interval=0.05,
        progress_interval=0.1,
        lease_ttl=2,
        max_retries=2,
    )


def make_job(store: RedisJobStore, target: str = "s3://bkt/x") -> str:
    record = JobRecord.new(JobRequest(source_table="db.t", target=target, partitions=4))
    store.create(record)
    return record.id


def runner(store, settings, convert, owner="w1") -> JobRunner:
    return JobRunner(store, settings, convert, owner)


def edges(record: JobRecord) -> list[tuple[str | None, str]]:
    return [(t.source, t.target) for t in record.transitions]


def test_success_records_result_progress_and_metrics(store, settings) -> None:
    job_id = make_job(store)
    seen: list[JobRecord] = []

    def convert(spec, *, progress, cancel):
        assert spec.run_id == job_id and spec.partitions == 4 and spec.hashes == ("xxh64",)
        progress(ConversionProgress(rows_written=5, partitions_done=2, partitions_total=4))
        time.sleep(0.4)  # the watcher flushes progress while we "run"
        seen.append(store.get(job_id))
        progress(
            ConversionProgress(
                rows_written=10, bytes_written=50, partitions_done=4, partitions_total=4
            )
        )
        return RESULT

    assert runner(store, settings, convert).run(job_id) is S.SUCCEEDED
    assert seen[0].state is S.RUNNING and seen[0].progress.rows_written == 5
    record = store.get(job_id)
    assert edges(record) == [(None, "queued"), ("queued", "running"), ("running", "succeeded")]
    assert record.result is not None and record.result.samples == 10
    assert record.progress.partitions_done == 4 and record.progress.bytes_written == 50
    assert record.started_at and record.finished_at and record.attempts == 1
    assert store.client.exists(store.lease_key(job_id)) == 0
    counters = store.client.hgetall(store.metrics_key)
    assert counters[b"finished:succeeded"] == b"1" and counters[b"rows"] == b"10"


def test_permanent_error_fails_at_once(store, settings) -> None:
    job_id = make_job(store)

    def convert(spec, **_):
        raise TableNotFoundError("table db.t does not exist")

    assert runner(store, settings, convert).run(job_id) is S.FAILED
    error = store.get(job_id).error
    assert error is not None
    assert (error.code, error.message, error.retryable) == (
        "table_not_found",
        "table db.t does not exist",
        False,
    )


def test_unexpected_exception_fails_the_job_with_a_message(store, settings) -> None:
    job_id = make_job(store)

    def convert(spec, **_):
        raise RuntimeError("boom")

    assert runner(store, settings, convert).run(job_id) is S.FAILED
    assert store.get(job_id).error.code == "internal_error"
    assert "boom" in store.get(job_id).error.message


def test_transient_errors_retry_then_succeed(store, settings) -> None:
    job_id = make_job(store)
    calls = []

    def convert(spec, **_):
        calls.append(1)
        if len(calls) == 1:
            raise TransientConversionError("S3 throttled")
        return RESULT

    with pytest.raises(RetryLater) as info:
        runner(store, settings, convert).run(job_id, retries=0)
    assert 0 < info.value.delay <= 1 and store.get(job_id).state is S.RUNNING
    assert runner(store, settings, convert).run(job_id, retries=1) is S.SUCCEEDED
    record = store.get(job_id)
    assert edges(record)[1:] == [
        ("queued", "running"),
        ("running", "running"),
        ("running", "succeeded"),
    ]
    assert record.attempts == 2


def test_transient_errors_fail_the_job_when_retries_run_out(store, settings) -> None:
    job_id = make_job(store)

    def convert(spec, **_):
        raise TransientConversionError("S3 unavailable")

    assert runner(store, settings, convert).run(job_id, retries=2) is S.FAILED
    assert store.get(job_id).error.retryable is True


def test_cancel_is_honoured_within_a_second(store, settings) -> None:
    job_id = make_job(store)
    started = threading.Event()

    def convert(spec, *, progress, cancel):
        started.set()
        if not cancel.wait(10):
            raise AssertionError("cancel never arrived")
        raise ConversionCancelled("cancelled")

    result: list[JobState | None] = []
    thread = threading.Thread(
        target=lambda: result.append(runner(store, settings, convert).run(job_id))
    )
    thread.start()
    assert started.wait(5)
    asked = time.monotonic()
    store.transition(job_id, S.CANCELLING, expected={S.RUNNING})
    thread.join(10)
    assert time.monotonic() - asked < 1.5
    assert result == [S.CANCELLED]
    assert edges(store.get(job_id))[-2:] == [("running", "cancelling"), ("cancelling", "cancelled")]


def test_a_live_lease_makes_a_duplicate_wait(store, settings) -> None:
    job_id = make_job(store)
    assert store.acquire_lease(job_id, "other-worker", 5) is None

    def convert(spec, **_):
        raise AssertionError("must not run while another worker holds the job")

    with pytest.raises(RetryLater) as info:
        runner(store, settings, convert).run(job_id)
    assert 4 < info.value.delay <= 6
    assert store.get(job_id).state is S.QUEUED


def test_redelivery_after_a_dead_worker_reruns_with_an_attempt_counter(store, settings) -> None:
    job_id = make_job(store)
    store.transition(job_id, S.RUNNING, expected={S.QUEUED})  # a worker started, then died
    assert store.acquire_lease(job_id, "dead-worker", 0.2) is None
    time.sleep(0.3)  # its lease expires
    assert runner(store, settings, lambda spec, **_: RESULT).run(job_id) is S.SUCCEEDED
    record = store.get(job_id)
    assert edges(record)[1:] == [
        ("queued", "running"),
        ("running", "running"),
        ("running", "succeeded"),
    ]
    assert [t.attempt for t in record.transitions] == [0, 1, 2, 2]


def test_finished_or_unknown_jobs_are_dropped(store, settings) -> None:
    job_id = make_job(store)
    store.transition(job_id, S.CANCELLING, expected={S.QUEUED})
    store.transition(job_id, S.CANCELLED, expected={S.CANCELLING})

    def convert(spec, **_):
        raise AssertionError("must not run")

    assert runner(store, settings, convert).run(job_id) is None
    assert runner(store, settings, convert).run("0" * 28) is None


def leftovers(target: Path, run_dir: str) -> Path:
    shard = target / run_dir / "00000" / "shard.00000.mds.zstd"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"partial")
    return shard


def test_a_job_left_cancelling_by_a_dead_worker_is_cancelled_and_cleaned(
    store, settings, tmp_path
) -> None:
    job_id = make_job(store, target=str(tmp_path))
    shard = leftovers(tmp_path, job_id)
    other = leftovers(tmp_path, "another-run")
    store.transition(job_id, S.RUNNING, expected={S.QUEUED})
    store.transition(job_id, S.CANCELLING, expected={S.RUNNING})

    def convert(spec, **_):
        raise AssertionError("must not run")

    assert runner(store, settings, convert).run(job_id) is S.CANCELLED
    assert not shard.exists() and not (tmp_path / job_id).exists()
    assert other.exists()


def test_cleanup_never_removes_a_run_that_was_published(store, settings, tmp_path) -> None:
    job_id = make_job(store, target=str(tmp_path))
    shard = leftovers(tmp_path, job_id)
    entry = {
        "column_encodings": ["int64"],
        "column_names": ["x"],
        "column_sizes": [8],
        "compression": "zstd",
        "format": "mds",
        "hashes": [],
        "raw_data": {"basename": f"{job_id}/00000/shard.00000.mds", "bytes": 28, "hashes": {}},
        "samples": 1,
        "size_limit": 1 << 26,
        "version": 2,
        "zip_data": {"basename": f"{job_id}/00000/shard.00000.mds.zstd", "bytes": 7, "hashes": {}},
    }
    (tmp_path / "index.json").write_text(json.dumps({"shards": [entry], "version": 2}))
    discard_unpublished_run(spec_for(store.get(job_id)))
    assert shard.exists()


def test_losing_the_lease_abandons_the_job_without_a_transition(store, settings) -> None:
    job_id = make_job(store)

    def convert(spec, *, progress, cancel):
        store.client.set(store.lease_key(job_id), "thief")  # another worker took over
        assert cancel.wait(5)
        raise ConversionCancelled("stopped")

    fast = settings.model_copy(update={"lease_ttl": 0.3})
    assert runner(store, fast, convert).run(job_id) is None
    assert store.get(job_id).state is S.RUNNING
    assert store.client.get(store.lease_key(job_id)) == b"thief"


def test_spec_for_maps_every_request_field() -> None:
    request = JobRequest(
        source_table="a.b",
        target="/data/x",
        compression=None,
        hashes=["md5", "xxh64"],
        size_limit=1000,
        columns={"c": None},
        partitions=3,
        mode="overwrite",
    )
    record = JobRecord.new(request)
    spec = spec_for(record)
    assert (
        spec.source_table,
        spec.target,
        spec.compression,
        spec.hashes,
        spec.size_limit,
        spec.columns,
        spec.partitions,
        spec.mode,
        spec.run_id,
    ) == ("a.b", "/data/x", None, ("md5", "xxh64"), 1000, {"c": None}, 3, "overwrite", record.id)


def test_the_outcome_survives_a_short_redis_outage(store, settings, redis_server) -> None:
    job_id = make_job(store)

    def convert(spec, *, progress, cancel):
        redis_server.stop()  # Redis dies while Spark works ...
        threading.Timer(1.0, redis_server.start).start()  # ... and comes back a second later
        progress(ConversionProgress(rows_written=10, partitions_done=1, partitions_total=1))
        return RESULT

    assert runner(store, settings, convert).run(job_id) is S.SUCCEEDED
    record = store.get(job_id)
    assert record.state is S.SUCCEEDED and record.result == JobResult(**RESULT_FIELDS)
    assert edges(record)[-1] == ("running", "succeeded")


def test_a_job_that_keeps_killing_its_worker_fails(store, settings) -> None:
    job_id = make_job(store)
    store.transition(job_id, S.RUNNING, expected={S.QUEUED})
    for _ in range(settings.max_attempts - 1):  # each worker died mid-job
        store.transition(job_id, S.RUNNING, expected={S.RUNNING})

    def convert(spec, **_):
        raise AssertionError("must not run again")

    assert runner(store, settings, convert).run(job_id) is S.FAILED
    record = store.get(job_id)
    assert record.error is not None and record.error.code == "too_many_attempts"
    assert record.attempts == settings.max_attempts


def test_a_cancellation_nobody_asked_for_fails_the_job(store, settings) -> None:
    job_id = make_job(store)

    def convert(spec, **_):
        raise ConversionCancelled("the Spark job group was cancelled")

    assert runner(store, settings, convert).run(job_id) is S.FAILED
    assert store.get(job_id).error.code == "cancelled"
