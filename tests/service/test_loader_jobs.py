"""``mdsloader.jobs``: a training pod resolves a job id to its dataset over real HTTP."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from mdsloader.errors import (
    AccessDeniedError,
    MissingExtraError,
    ObjectNotFoundError,
    StorageUnavailableError,
)
from mdsloader.jobs import JobClient, JobFailedError, JobWaitTimeout, remote_for_job
from tests.conftest import free_port
from tests.service.conftest import TOKEN
from worker.jobs import JobError, JobResult, JobState, RedisJobStore

pytestmark = pytest.mark.integration

S = JobState
TARGET = "s3://datasets/ok/events"


def create(live_api) -> str:
    with JobClient(live_api.url, TOKEN) as client:
        response = client._http.post("/v1/jobs", json={"source_table": "a.b", "target": TARGET})
    assert response.status_code == 202
    return response.json()["id"]


def succeed(store: RedisJobStore, job_id: str) -> None:
    store.transition(job_id, S.RUNNING, expected={S.QUEUED})
    result = JobResult(
        index_url=f"{TARGET}/index.json",
        samples=1,
        shards=1,
        raw_bytes=1,
        zip_bytes=1,
        columns={"x": "int64"},
    )
    store.transition(
        job_id, S.SUCCEEDED, expected={S.RUNNING}, mutate=lambda r: setattr(r, "result", result)
    )


def test_waits_for_success_and_returns_the_remote(live_api, store) -> None:
    job_id = create(live_api)
    timer = threading.Timer(0.3, succeed, args=(store, job_id))
    timer.start()
    started = time.monotonic()
    assert (
        remote_for_job(
            job_id, url=live_api.url, token=TOKEN, wait=True, poll_interval=0.05, timeout=10
        )
        == TARGET
    )
    assert 0.25 < time.monotonic() - started < 5
    timer.join()


def test_environment_supplies_url_and_token(live_api, store, monkeypatch) -> None:
    job_id = create(live_api)
    succeed(store, job_id)
    monkeypatch.setenv("MDS_CONVERT_URL", live_api.url)
    monkeypatch.setenv("MDS_CONVERT_TOKEN", TOKEN)
    assert remote_for_job(job_id) == TARGET


def test_a_pending_job_without_wait_is_an_error(live_api) -> None:
    job_id = create(live_api)
    with pytest.raises(JobFailedError, match=r"queued.*wait=True"):
        remote_for_job(job_id, url=live_api.url, token=TOKEN)


def test_failed_job_raises_with_its_error(live_api, store) -> None:
    job_id = create(live_api)
    store.transition(job_id, S.RUNNING, expected={S.QUEUED})
    error = JobError(code="table_not_found", message="no table a.b")
    store.transition(
        job_id, S.FAILED, expected={S.RUNNING}, mutate=lambda r: setattr(r, "error", error)
    )
    with pytest.raises(JobFailedError) as info:
        remote_for_job(job_id, url=live_api.url, token=TOKEN, wait=True)
    assert (info.value.state, info.value.code) == ("failed", "table_not_found")
    assert "no table a.b" in str(info.value)


def test_cancelled_job_raises(live_api) -> None:
    job_id = create(live_api)
    with JobClient(live_api.url, TOKEN) as client:
        client._http.post(f"/v1/jobs/{job_id}/cancel")
    with pytest.raises(JobFailedError, match="cancelled"):
        remote_for_job(job_id, url=live_api.url, token=TOKEN, wait=True)


def test_unknown_job_bad_token_and_dead_service(live_api) -> None:
    with pytest.raises(ObjectNotFoundError, match="no conversion job"):
        remote_for_job("0" * 28, url=live_api.url, token=TOKEN)
    with pytest.raises(AccessDeniedError):
        remote_for_job("0" * 28, url=live_api.url, token="wrong")
    with pytest.raises(StorageUnavailableError, match="cannot reach"):
        remote_for_job("0" * 28, url=f"http://127.0.0.1:{free_port()}", token=TOKEN)


def test_wait_times_out(live_api) -> None:
    job_id = create(live_api)
    with pytest.raises(JobWaitTimeout, match="still queued"):
        remote_for_job(
            job_id, url=live_api.url, token=TOKEN, wait=True, timeout=0.2, poll_interval=0.05
        )


def test_missing_httpx_names_the_jobs_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(MissingExtraError, match=r"mds-loader\[jobs\]"):
        remote_for_job("x", url="http://127.0.0.1:1")
