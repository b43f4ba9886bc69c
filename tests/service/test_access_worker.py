"""The worker's re-check of a stored job's grants (real Redis, the job runner, a fake conversion).

The conversion function records what it was asked to read; a refused job must never reach it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from worker.access.principals import token_digest
from worker.convert.model import ConversionResult
from worker.jobs import JobRecord, JobRequest, JobState, RedisJobStore
from worker.settings import WorkerSettings
from worker.tasks import JobRunner, RetryLater

pytestmark = pytest.mark.integration

RESULT = ConversionResult(
    index_url="s3://datasets/sales/x/index.json", samples=1, shards=1, raw_bytes=1, zip_bytes=1,
    columns={"x": "int64"},
)  # fmt: skip


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    (tmp_path / "lake" / "sales" / "events").mkdir(parents=True)
    (tmp_path / "lake" / "hr").mkdir()
    (tmp_path / "lake" / "sales" / "current").symlink_to(tmp_path / "lake" / "sales" / "events")
    return tmp_path / "lake"


@pytest.fixture
def principals(tmp_path: Path, lake: Path) -> Path:
    path = tmp_path / "principals.json"
    write(path, scopes=["jobs:submit", "jobs:read"], lake=lake)
    return path


def write(path: Path, *, scopes: list[str], lake: Path, sources: tuple[str, ...] = ("sales.*",)):
    path.write_text(
        json.dumps(
            {
                "principals": [
                    {
                        "name": "sales",
                        "tokens": [token_digest("t")],
                        "scopes": scopes,
                        "sources": list(sources),
                        "source_paths": [str(lake / "sales")],
                        "targets": ["s3://datasets/sales/"],
                    }
                ]
            }
        )
    )
    # The file is re-read when its stamp changes; make sure it does within this test.
    stamp = time.time_ns() + 5 * 10**9
    os.utime(path, ns=(stamp, stamp))


@pytest.fixture
def settings(redis_server, prefix, principals: Path) -> WorkerSettings:
    return WorkerSettings(
        redis_url=redis_server.url,
        redis_prefix=prefix,
        principals_file=principals,
        allowed_targets=["s3://datasets/legacy/"],
        cancel_poll_interval=0.05,
        lease_ttl=2,
        max_retries=2,
    )


class Converter:
    def __init__(self) -> None:
        self.sources: list[str] = []

    def __call__(self, spec, *, progress, cancel) -> ConversionResult:
        self.sources.append(spec.source_table)
        return RESULT


def job(store: RedisJobStore, source: str, target: str, principal: str | None = "sales") -> str:
    record = JobRecord.new(JobRequest(source_table=source, target=target), principal)
    store.create(record)
    return record.id


def run(store, settings, job_id: str) -> tuple[JobState | None, Converter]:
    convert = Converter()
    runner = JobRunner(store, settings, convert, "w1", discard=lambda spec: None)
    return runner.run(job_id), convert


def test_a_job_within_its_grants_runs_with_the_checked_source(store, settings, lake) -> None:
    job_id = job(store, "`SALES`.events", "s3://datasets/sales/v1")
    state, convert = run(store, settings, job_id)
    assert state is JobState.SUCCEEDED and convert.sources == ["`SALES`.events"]
    # A path source is read where it resolves now, on the worker.
    job_id = job(store, f"parquet.`{lake}/sales/current`", "s3://datasets/sales/v2")
    state, convert = run(store, settings, job_id)
    assert state is JobState.SUCCEEDED
    assert convert.sources == [f"parquet.`{lake / 'sales' / 'events'}`"]


@pytest.mark.parametrize(
    ("source", "target", "principal", "reason"),
    [
        ("hr.salaries", "s3://datasets/sales/v1", "sales", "not in the allowed sources"),
        ("csv.`/etc/passwd`", "s3://datasets/sales/v1", "sales", "not under an allowed source"),
        ("parquet.`{lake}/hr`", "s3://datasets/sales/v1", "sales", "not under an allowed source"),
        ("sales.events", "s3://datasets/hr/v1", "sales", "outside the allowed targets"),
        ("sales.events", "s3://datasets/sales/v1", "mallory", "not configured on this worker"),
        ("sales.events", "s3://datasets/sales/v1", "anonymous", "not configured on this worker"),
        # A record without a principal gets the global allow-lists: no path source at all.
        ("csv.`/etc/passwd`", "s3://datasets/legacy/x", None, "none is configured"),
        ("any.table", "s3://datasets/sales/v1", None, "outside the allowed targets"),
    ],
)
def test_an_altered_record_is_refused_before_the_source_is_touched(
    store, settings, lake, caplog, source, target, principal, reason
) -> None:
    caplog.set_level("INFO", logger="audit")
    job_id = job(store, source.format(lake=lake), target, principal)
    state, convert = run(store, settings, job_id)
    assert state is JobState.FAILED and convert.sources == []
    record = store.get(job_id)
    assert record.error is not None and record.error.code == "access_denied"
    assert reason in record.error.message and not record.error.retryable
    [event] = [r for r in caplog.records if r.name == "audit"]
    assert event.getMessage() == "job.access_denied" and event.job_id == job_id


def test_grants_narrowed_after_submission_apply(store, settings, principals, lake) -> None:
    job_id = job(store, "sales.events", "s3://datasets/sales/v1")
    write(principals, scopes=["jobs:read"], lake=lake)  # submit scope taken away
    state, convert = run(store, settings, job_id)
    assert state is JobState.FAILED and convert.sources == []
    assert "no longer has 'jobs:submit'" in store.get(job_id).error.message

    write(principals, scopes=["jobs:submit"], lake=lake, sources=("sales.public_*",))
    job_id = job(store, "sales.events", "s3://datasets/sales/v2")
    state, _ = run(store, settings, job_id)
    assert state is JobState.FAILED and store.get(job_id).error.code == "access_denied"


def test_a_broken_principals_file_makes_the_job_wait(store, settings, principals) -> None:
    job_id = job(store, "sales.events", "s3://datasets/sales/v1")
    principals.write_text("{")
    with pytest.raises(RetryLater):
        run(store, settings, job_id)
    record = store.get(job_id)
    assert record.state is JobState.RUNNING and record.error is None  # retried, not failed
