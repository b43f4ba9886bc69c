"""Completion callbacks: the URL policy (no SSRF), the API's checks, and delivery from the outbox
(real Redis, a real HTTP receiver on loopback)."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.service.callback_receiver import CallbackReceiver
from tests.service.conftest import AUTH
from tests.service.test_bad_input import assert_no_job, assert_problem
from worker.callbacks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackDispatcher,
    CallbackNotAllowedError,
    CallbackPolicy,
    DeliverySettings,
    pending,
    verify,
)
from worker.jobs import JobRecord, JobRequest, JobState

pytestmark = pytest.mark.integration
SECRET = "callback-secret-0123456789"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


def fixed(*addresses: str):
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    ("url", "addresses", "message"),
    [
        ("ftp://hooks.example.com/x", ["93.184.216.34"], "http:// or https://"),
        ("http://user:pw@hooks.example.com/x", ["93.184.216.34"], "credentials"),
        ("http://evil.example.net/x", ["93.184.216.34"], "not in the allowed callback hosts"),
        ("http://hooks.example.com/x", ["10.0.0.5"], "non-public address"),
        ("http://hooks.example.com/x", ["127.0.0.1"], "non-public address"),
        ("http://hooks.example.com/x", ["169.254.169.254"], "non-public address"),  # metadata
        ("http://hooks.example.com/x", ["::1"], "non-public address"),
        ("http://hooks.example.com/x", ["fd00::1"], "non-public address"),
        ("http://hooks.example.com/x", ["93.184.216.34", "192.168.1.1"], "non-public address"),
        ("http://hooks.example.com/x", ["0.0.0.0"], "non-public address"),
        ("http://hooks.example.com/x", ["224.0.0.1"], "non-public address"),
        ("http://example.com/x", ["93.184.216.34"], "not in the allowed callback hosts"),
    ],
)
def test_the_policy_refuses_what_could_reach_inside(url, addresses, message) -> None:
    policy = CallbackPolicy(("hooks.example.com", "*.ci.example.org"), (), fixed(*addresses))
    with pytest.raises(CallbackNotAllowedError, match=message):
        policy.check(url)


def test_the_policy_allows_public_and_explicitly_allowed_addresses() -> None:
    public = CallbackPolicy(("hooks.example.com", "*.ci.example.org"), (), fixed("93.184.216.34"))
    assert public.check("https://hooks.example.com:8443/x?y=1") == ["93.184.216.34"]
    assert public.check("https://a.b.ci.example.org/x")
    inside = CallbackPolicy(("127.0.0.1",), LOOPBACK, fixed("127.0.0.1"))
    assert inside.check("http://127.0.0.1:9/x") == ["127.0.0.1"]
    with pytest.raises(CallbackNotAllowedError, match="does not resolve"):
        CallbackPolicy(("nx.invalid",)).check("http://nx.invalid/x")


@pytest.fixture
def callback_settings(app_settings):
    return app_settings.model_copy(
        update={
            "callback_secret": SECRET,
            "callback_allowed_hosts": ["127.0.0.1"],
            "callback_allowed_networks": ["127.0.0.0/8"],
        }
    )


def test_the_api_checks_callback_urls_at_submission(
    app_settings, callback_settings, enqueuer, store
) -> None:
    body = {"source_table": "a.b", "target": "s3://datasets/ok/x"}
    with TestClient(create_app(app_settings, enqueue=enqueuer), headers=AUTH) as api:
        response = api.post("/v1/jobs", json={**body, "callback_url": "http://127.0.0.1/h"})
        assert "not configured" in assert_problem(response, 422, "invalid_request")["detail"]
    loopback_refused = app_settings.model_copy(
        update={"callback_secret": SECRET, "callback_allowed_hosts": ["127.0.0.1", "localhost"]}
    )
    with TestClient(create_app(loopback_refused, enqueue=enqueuer), headers=AUTH) as api:
        for url in ("http://127.0.0.1:8000/h", "http://localhost/h", "http://10.1.2.3/h"):
            response = api.post("/v1/jobs", json={**body, "callback_url": url})
            assert_problem(response, 403, "callback_not_allowed")
        assert_no_job(store)
    with TestClient(create_app(callback_settings, enqueue=enqueuer), headers=AUTH) as api:
        response = api.post("/v1/jobs", json={**body, "callback_url": "http://127.0.0.1:9/h"})
        assert response.status_code == 202, response.text
        assert response.json()["request"]["callback_url"] == "http://127.0.0.1:9/h"


def dispatcher(store, **delivery) -> CallbackDispatcher:
    return CallbackDispatcher(
        store,
        CallbackPolicy(("127.0.0.1",), LOOPBACK),
        DeliverySettings(secret=SECRET.encode(), timeout=5, backoff_cap=0.05, **delivery),
    )


def finished_job(store, url: str, state: JobState = JobState.SUCCEEDED) -> str:
    record = JobRecord.new(JobRequest(source_table="a.b", target="s3://b/x", callback_url=url))
    store.create(record)
    store.transition(record.id, JobState.RUNNING, expected={JobState.QUEUED})
    store.transition(record.id, state, expected={JobState.RUNNING})
    return record.id


def deliver_until_done(sender: CallbackDispatcher, store, deadline: float = 10) -> None:
    end = time.monotonic() + deadline
    while pending(store) and time.monotonic() < end:
        sender.run_once()
        time.sleep(0.06)
    assert not pending(store)


def test_a_final_state_is_delivered_signed(store) -> None:
    with CallbackReceiver([200]) as receiver:
        job_id = finished_job(store, receiver.url, JobState.FAILED)
        assert list(pending(store)) == [job_id]  # queued with the state, atomically
        deliver_until_done(dispatcher(store), store)
    [got] = receiver.received
    body = json.loads(got.body)
    assert body["id"] == job_id and body["state"] == "failed" and "callbacks" not in body
    assert verify(SECRET.encode(), got.headers[TIMESTAMP_HEADER], got.body,
                  got.headers[SIGNATURE_HEADER])  # fmt: skip
    assert not verify(b"another secret", got.headers[TIMESTAMP_HEADER], got.body,
                      got.headers[SIGNATURE_HEADER])  # fmt: skip
    [attempt] = store.get(job_id).callbacks
    assert attempt.delivered and attempt.status_code == 200 and attempt.attempt == 1


def test_a_failing_receiver_is_retried_then_succeeds(store) -> None:
    with CallbackReceiver([500, 503, 200]) as receiver:
        job_id = finished_job(store, receiver.url)
        deliver_until_done(dispatcher(store), store)
    attempts = store.get(job_id).callbacks
    assert [(a.status_code, a.delivered) for a in attempts] == [
        (500, False), (503, False), (200, True),
    ]  # fmt: skip
    bodies = [json.loads(r.body) for r in receiver.received]
    assert {(b["id"], b["state"], b["finished_at"]) for b in bodies} == {
        (job_id, "succeeded", bodies[0]["finished_at"])
    }


def test_delivery_gives_up_after_the_limit_and_says_so(store) -> None:
    with CallbackReceiver([500]) as receiver:
        job_id = finished_job(store, receiver.url)
        deliver_until_done(dispatcher(store, max_attempts=3), store)
    attempts = store.get(job_id).callbacks
    assert [a.attempt for a in attempts] == [1, 2, 3] and len(receiver.received) == 3
    assert attempts[-1].gave_up and not any(a.delivered for a in attempts)


def test_a_receiver_that_is_down_is_recorded(store) -> None:
    with CallbackReceiver() as receiver:
        url = receiver.url
    job_id = finished_job(store, url)
    deliver_until_done(dispatcher(store, max_attempts=2), store)
    attempts = store.get(job_id).callbacks
    assert all(a.status_code is None and "ConnectError" in (a.error or "") for a in attempts)
    assert attempts[-1].gave_up


def test_an_address_refused_at_delivery_is_not_called(store) -> None:
    with CallbackReceiver([200]) as receiver:
        job_id = finished_job(store, receiver.url)
        strict = CallbackDispatcher(
            store,
            CallbackPolicy(("127.0.0.1",), ()),  # loopback no longer allowed
            DeliverySettings(secret=b"s", max_attempts=1, backoff_cap=0.05),
        )
        deliver_until_done(strict, store)
    assert receiver.received == []
    assert "non-public address" in (store.get(job_id).callbacks[0].error or "")


def test_a_job_cancelled_while_queued_calls_back_too(callback_settings, enqueuer, store) -> None:
    with CallbackReceiver([200]) as receiver, TestClient(
        create_app(callback_settings, enqueue=enqueuer), headers=AUTH
    ) as api:
        body = {"source_table": "a.b", "target": "s3://datasets/ok/x", "callback_url": receiver.url}
        job = api.post("/v1/jobs", json=body).json()
        assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
        deliver_until_done(dispatcher(store), store)
        assert api.get(f"/v1/jobs/{job['id']}").json()["callbacks"][0]["delivered"]
    assert json.loads(receiver.received[0].body)["state"] == "cancelled"
