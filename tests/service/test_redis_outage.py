"""Redis stopped: readiness and submissions answer 503; after it returns, nothing was lost."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.integration

BODY = {"source_table": "sales.events", "target": "s3://datasets/ok/events"}


def test_service_answers_503_while_redis_is_down_and_recovers(client, redis_server) -> None:
    accepted = client.post("/v1/jobs", json=BODY).json()
    redis_server.stop()
    try:
        started = time.monotonic()
        for response in (
            client.get("/readyz"),
            client.post("/v1/jobs", json=BODY),
            client.get(f"/v1/jobs/{accepted['id']}"),
        ):
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["code"] == "store_unavailable"
            assert "Redis" in response.json()["detail"]
        assert time.monotonic() - started < 10, "a dead Redis must fail fast"
        assert client.get("/healthz").status_code == 200
    finally:
        redis_server.start()
    # Same process, no restart: the pool reconnects and the accepted job is still there.
    assert client.get("/readyz").status_code == 200
    assert client.get(f"/v1/jobs/{accepted['id']}").json() == accepted
    again = client.post("/v1/jobs", json=BODY)
    assert again.status_code == 202
    ids = [job["id"] for job in client.get("/v1/jobs").json()["jobs"]]
    assert ids == [again.json()["id"], accepted["id"]]
