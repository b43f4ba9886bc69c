"""The REST contract against a real Redis: submit, read, list, cancel, idempotency, OpenAPI."""

from __future__ import annotations

import logging
import time

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.main import create_app
from worker.jobs import JobState, RedisJobStore

pytestmark = pytest.mark.integration

BODY = {"source_table": "sales.events", "target": "s3://datasets/ok/events/v3"}


def submit(client: TestClient, body: dict | None = None, **headers: str):
    return client.post("/v1/jobs", json=body or BODY, headers=headers)


def test_submit_carries_the_null_policy_to_the_conversion_spec(client) -> None:
    from worker.jobs import JobRecord
    from worker.tasks import spec_for

    body = {**BODY, "null_policy": "fill", "fill_values": {"text": "", "n": 0}}
    job = submit(client, body).json()
    assert job["request"]["null_policy"] == "fill"
    spec = spec_for(JobRecord.model_validate(job))
    assert spec.null_policy == "fill" and spec.fill_values == {"text": "", "n": 0}


def test_submit_returns_202_with_location_and_normalised_request(client, enqueuer) -> None:
    body = {
        **BODY,
        "compression": "zstd:7",
        "hashes": ["xxh64", "md5", "xxh64"],
        "size_limit": "64mb",
        "columns": {"text": "str", "emb": "ndarray:float32", "n": None},
        "partitions": 16,
        "mode": "overwrite",
    }
    response = submit(client, body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued"
    assert job["request"] == {
        "source_table": "sales.events",
        "target": "s3://datasets/ok/events/v3",
        "compression": "zstd:7",
        "hashes": ["md5", "xxh64"],
        "size_limit": 64 << 20,
        "columns": {"text": "str", "emb": "ndarray:float32", "n": None},
        "partitions": 16,
        "mode": "overwrite",
        "null_policy": "error",
        "fill_values": {},
        "filter": None,
        "callback_url": None,
        "splits": None,
    }
    assert job["progress"]["rows_written"] == 0
    assert job["result"] is None and job["error"] is None and job["finished_at"] is None
    assert enqueuer.sent == [job["id"]]


def test_defaults_are_filled_in(client) -> None:
    request = submit(client).json()["request"]
    assert request["compression"] == "zstd"
    assert request["hashes"] == ["xxh64"]
    assert request["size_limit"] == 1 << 26
    assert request["mode"] == "error"
    assert request["columns"] is None and request["partitions"] is None


def test_compression_null_means_none(client) -> None:
    assert submit(client, {**BODY, "compression": None}).json()["request"]["compression"] is None


def test_get_returns_the_stored_job(client) -> None:
    job = submit(client).json()
    response = client.get(f"/v1/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.json() == job


def test_list_is_newest_first_with_cursor_pagination(client) -> None:
    ids = [submit(client).json()["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_list_filters_by_state(client) -> None:
    first, second = submit(client).json()["id"], submit(client).json()["id"]
    client.post(f"/v1/jobs/{first}/cancel")
    cancelled = client.get("/v1/jobs", params={"state": "cancelled"}).json()["jobs"]
    queued = client.get("/v1/jobs", params={"state": "queued"}).json()["jobs"]
    assert [job["id"] for job in cancelled] == [first]
    assert [job["id"] for job in queued] == [second]


def test_list_refuses_an_unknown_state(client) -> None:
    response = client.get("/v1/jobs", params={"state": "sleeping"})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_cancel_of_a_queued_job_cancels_it_at_once(client) -> None:
    job_id = submit(client).json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    job = response.json()
    assert job["state"] == "cancelled"
    assert [(t["source"], t["target"]) for t in job["transitions"]] == [
        (None, "queued"),
        ("queued", "cancelling"),
        ("cancelling", "cancelled"),
    ]


def test_cancel_of_a_running_job_asks_the_worker(client, store: RedisJobStore) -> None:
    job_id = submit(client).json()["id"]
    store.transition(job_id, JobState.RUNNING, expected={JobState.QUEUED})
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["state"] == "cancelling"
    # Asking twice is harmless.
    assert client.post(f"/v1/jobs/{job_id}/cancel").json()["state"] == "cancelling"


def test_idempotency_key_with_same_body_returns_the_same_job(client, enqueuer) -> None:
    first = submit(client, **{"Idempotency-Key": "abc"})
    again = submit(client, **{"Idempotency-Key": "abc"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert enqueuer.sent == [first.json()["id"]]


def test_idempotency_keys_are_scoped_to_the_token(app_settings, enqueuer) -> None:
    settings = app_settings.model_copy(update={"api_tokens": [SecretStr("a"), SecretStr("b")]})
    with TestClient(create_app(settings, enqueue=enqueuer)) as anonymous:
        key = {"Idempotency-Key": "same"}
        first = anonymous.post("/v1/jobs", json=BODY, headers={**key, "Authorization": "Bearer a"})
        other = anonymous.post(
            "/v1/jobs",
            json={**BODY, "mode": "overwrite"},
            headers={**key, "Authorization": "Bearer b"},
        )
    assert first.status_code == other.status_code == 202
    assert first.json()["id"] != other.json()["id"]


def test_health_and_readiness(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}


def test_openapi_documents_the_contract(client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel", "/readyz"} <= set(paths)
    post = paths["/v1/jobs"]["post"]
    assert {"202", "401", "403", "422", "503"} <= set(post["responses"])
    assert "Problem" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_metrics_report_jobs_by_state_and_queue_depth(client, store, app_settings) -> None:
    job_id = submit(client).json()["id"]
    queued = submit(client).json()["id"]
    store.transition(job_id, JobState.RUNNING, expected={JobState.QUEUED})
    store.client.rpush(app_settings.celery_queue, "m1", "m2", "m3")
    text = client.get("/metrics").text
    assert 'mds_convert_jobs{state="queued"} 1.0' in text
    assert 'mds_convert_jobs{state="running"} 1.0' in text
    assert "mds_convert_queue_depth 3.0" in text
    assert "mds_convert_conversion_duration_seconds_count 0.0" in text
    client.post(f"/v1/jobs/{queued}/cancel")  # cancelled by the API: counted as well
    text = client.get("/metrics").text
    assert 'mds_convert_jobs_finished_total{state="cancelled"} 1.0' in text
    assert 'mds_convert_jobs{state="cancelled"} 1.0' in text


def test_a_failed_enqueue_is_retried_by_the_outbox(client, enqueuer, store) -> None:
    enqueuer.fail = True
    job_id = submit(client).json()["id"]
    assert enqueuer.sent == []
    assert store.pending_enqueue(0) == [job_id]
    enqueuer.fail = False
    sweeper = client.app.state.sweeper
    deadline = time.monotonic() + 10
    while not enqueuer.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert enqueuer.sent == [job_id]
    assert store.pending_enqueue(0) == []
    assert sweeper.is_alive()


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_disabled_auth_is_explicit_and_logged(app_settings, enqueuer) -> None:
    settings = app_settings.model_copy(update={"auth_disabled": True, "api_tokens": []})
    recorder, logger = Recorder(), logging.getLogger("app.main")
    logger.addHandler(recorder)
    try:
        app = create_app(settings, enqueue=enqueuer)
    finally:
        logger.removeHandler(recorder)
    assert any("auth.disabled" in m for m in recorder.messages)
    with TestClient(app) as anonymous:
        assert anonymous.post("/v1/jobs", json=BODY).status_code == 202
