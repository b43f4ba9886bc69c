"""The access model through the REST API, against a real Redis and a principals file.

Every refusal must leave no job behind, write nothing, and appear in the audit trail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import AppSettings
from tests.conftest import free_port
from tests.service.conftest import LiveServer, RecordingEnqueuer
from tests.service.test_bad_input import assert_problem
from worker.access.principals import token_digest
from worker.jobs import JobState, RedisJobStore

pytestmark = pytest.mark.integration

TOKENS = {name: f"tok-{name}-0123456789" for name in ("sales", "hr", "reader", "admin", "legacy")}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


@pytest.fixture
def lake(scratch: Path) -> Path:
    root = scratch / "lake"
    for folder in ("sales/events", "hr/salaries"):
        (root / folder).mkdir(parents=True)
    (root / "sales" / "link-to-hr").symlink_to(root / "hr")
    return root


@pytest.fixture
def principals_file(scratch: Path, lake: Path) -> Path:
    def principal(name: str, scopes: list[str], **grants: object) -> dict[str, object]:
        return {"name": name, "tokens": [token_digest(TOKENS[name])], "scopes": scopes, **grants}

    writer = ["jobs:submit", "jobs:read", "jobs:cancel"]
    path = scratch / "principals.json"
    path.write_text(
        json.dumps(
            {
                "principals": [
                    principal(
                        "sales",
                        writer,
                        sources=["sales.*", "main.sales.events"],
                        source_paths=[str(lake / "sales")],
                        targets=["s3://datasets/sales/", str(scratch / "out" / "sales")],
                        max_active_jobs=2,
                    ),
                    principal("hr", writer, sources=["hr.*"], targets=["s3://datasets/hr/"]),
                    principal("reader", ["jobs:read"], sources=["*"], targets=["s3://datasets/"]),
                    principal("admin", ["admin"]),
                ]
            }
        )
    )
    return path


@pytest.fixture
def access_settings(app_settings: AppSettings, principals_file: Path) -> AppSettings:
    return app_settings.model_copy(
        update={
            "principals_file": principals_file,
            "api_tokens": [TOKENS["legacy"]],
            "max_body_bytes": 4096,
            "max_active_jobs": 5,
        }
    )


@pytest.fixture
def api(access_settings: AppSettings, enqueuer: RecordingEnqueuer) -> Iterator[TestClient]:
    with TestClient(create_app(access_settings, enqueue=enqueuer)) as test_client:
        yield test_client


@pytest.fixture
def audit_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="audit")
    return caplog


def audit_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [
        {"event": r.getMessage(), **{k: v for k, v in vars(r).items() if k in AUDIT_FIELDS}}
        for r in caplog.records
        if r.name == "audit"
    ]


AUDIT_FIELDS = {"principal", "job_id", "source", "target", "reason", "scope"}


def submit(api: TestClient, who: str, source: str = "sales.events", target: str | None = None):
    body = {"source_table": source, "target": target or "s3://datasets/sales/events/v1"}
    return api.post("/v1/jobs", json=body, headers=bearer(who))


def all_jobs(store: RedisJobStore) -> list[str]:
    return [i.decode() for i in store.client.zrange(store.all_key, 0, -1)]


@pytest.mark.parametrize(
    "source",
    ["sales.events", "`SALES`.`Events`", "spark_catalog.sales.x", "main.sales.events"],
)
def test_allowed_sources_are_accepted_and_recorded_with_the_principal(
    api, store, audit_log, source
) -> None:
    response = submit(api, "sales", source)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["principal"] == "sales" and job["transitions"][0]["actor"] == "sales"
    assert store.get(job["id"]).principal == "sales"
    [event] = audit_events(audit_log)
    assert event == {
        "event": "job.submitted",
        "principal": "sales",
        "job_id": job["id"],
        "source": source,
        "target": "s3://datasets/sales/events/v1",
    }


@pytest.mark.parametrize(
    ("who", "source", "target", "status", "code"),
    [
        ("sales", "hr.salaries", None, 403, "source_not_allowed"),
        ("sales", "`hr`.`SALARIES`", None, 403, "source_not_allowed"),
        ("sales", "spark_catalog.hr.salaries", None, 403, "source_not_allowed"),
        ("sales", "other.sales.events", None, 403, "source_not_allowed"),
        ("sales", "csv.`/etc/passwd`", None, 403, "source_not_allowed"),
        ("sales", "parquet.`/`", None, 403, "source_not_allowed"),
        ("sales", "parquet.`{lake}/sales/../hr/salaries`", None, 403, "source_not_allowed"),
        ("sales", "parquet.`{lake}/sales/link-to-hr/salaries`", None, 403, "source_not_allowed"),
        ("sales", "parquet.`file://{lake}/hr`", None, 403, "source_not_allowed"),
        ("sales", "parquet.`{lake}/sales/*`", None, 422, "invalid_request"),
        ("sales", "sales.events", "s3://datasets/hr/x", 403, "target_not_allowed"),
        ("sales", "sales.events", "s3://datasets/salesx/x", 403, "target_not_allowed"),
        ("hr", "sales.events", "s3://datasets/hr/x", 403, "source_not_allowed"),
        ("reader", "sales.events", "s3://datasets/x", 403, "forbidden"),
        ("admin", "csv.`/etc/passwd`", "s3://datasets/x", 403, "source_not_allowed"),
    ],
)
def test_refusals_leave_nothing_and_are_audited(
    api, store, audit_log, lake, scratch, who, source, target, status, code
) -> None:
    response = submit(api, who, source.format(lake=lake), target)
    problem = assert_problem(response, status, code)
    assert all_jobs(store) == []
    assert not (scratch / "out").exists()
    [event] = audit_events(audit_log)
    assert event["event"] in {"job.refused", "request.refused"} and event["principal"] == who
    assert event["reason"] == code, problem


def test_path_sources_under_the_root_are_stored_resolved(api, lake) -> None:
    response = submit(api, "sales", f"parquet.`file://{lake}/sales/./events/`")
    assert response.status_code == 202, response.text
    assert response.json()["request"]["source_table"] == f"parquet.`{lake / 'sales' / 'events'}`"


def test_each_scope_guards_its_route(api, store, audit_log) -> None:
    job = submit(api, "sales").json()
    admin = bearer("admin")
    # reader: read only
    assert_problem(submit(api, "reader", "sales.events", "s3://datasets/a"), 403, "forbidden")
    # No cancel scope: 403 for any id, so the answer says nothing about the job.
    assert_problem(
        api.post(f"/v1/jobs/{job['id']}/cancel", headers=bearer("reader")), 403, "forbidden"
    )
    # reader may read, but only its own jobs; it has none
    assert api.get("/v1/jobs", headers=bearer("reader")).json()["jobs"] == []
    assert_problem(api.get(f"/v1/jobs/{job['id']}", headers=bearer("reader")), 404, "job_not_found")
    # admin reads and cancels anybody's job
    assert api.get(f"/v1/jobs/{job['id']}", headers=admin).json()["id"] == job["id"]
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel", headers=admin).json()
    assert cancelled["state"] == "cancelled"
    assert [t["actor"] for t in cancelled["transitions"]] == ["sales", "admin", "admin"]
    events = [(e["event"], e["principal"]) for e in audit_events(audit_log)]
    assert ("job.cancel_requested", "admin") in events


def test_a_principal_without_the_scope_gets_403_on_every_route(
    api, store, principals_file
) -> None:
    # "submit-only" holds jobs:submit alone
    data = json.loads(principals_file.read_text())
    data["principals"].append(
        {"name": "submit-only", "tokens": [token_digest("tok-submit-only")],
         "scopes": ["jobs:submit"], "sources": ["*"], "targets": ["s3://datasets/"]}
    )  # fmt: skip
    principals_file.write_text(json.dumps(data))
    import os
    import time

    os.utime(principals_file, ns=(time.time_ns(), time.time_ns() + 10**9))
    time.sleep(1.05)  # the file is checked at most once a second
    headers = {"Authorization": "Bearer tok-submit-only"}
    job = api.post(
        "/v1/jobs", json={"source_table": "a.b", "target": "s3://datasets/x"}, headers=headers
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    assert_problem(api.get(f"/v1/jobs/{job_id}", headers=headers), 403, "forbidden")
    assert_problem(api.get("/v1/jobs", headers=headers), 403, "forbidden")
    assert_problem(api.post(f"/v1/jobs/{job_id}/cancel", headers=headers), 403, "forbidden")
    assert store.get(job_id).state is JobState.QUEUED


def test_jobs_are_visible_to_their_owner_and_admins_only(api, store) -> None:
    sales = submit(api, "sales").json()
    hr = submit(api, "hr", "hr.salaries", "s3://datasets/hr/x").json()
    legacy = submit(api, "legacy", "any.table", "s3://datasets/ok/legacy").json()

    def ids(who: str, **params: str) -> list[str]:
        response = api.get("/v1/jobs", headers=bearer(who), params=params)
        assert response.status_code == 200, response.text
        return [j["id"] for j in response.json()["jobs"]]

    assert ids("sales") == [sales["id"]]
    assert ids("hr") == [hr["id"]]
    assert ids("sales", state="queued") == [sales["id"]]
    assert ids("sales", state="running") == []
    assert ids("admin") == [legacy["id"], hr["id"], sales["id"]]
    assert ids("legacy") == [legacy["id"], hr["id"], sales["id"]]  # legacy tokens are admins
    assert ids("admin", principal="hr") == [hr["id"]]
    assert ids("admin", principal="hr", state="queued") == [hr["id"]]
    assert ids("sales", principal="sales") == [sales["id"]]
    assert_problem(
        api.get("/v1/jobs", headers=bearer("sales"), params={"principal": "hr"}), 403, "forbidden"
    )
    # Another principal's job is indistinguishable from a job that does not exist.
    other = api.get(f"/v1/jobs/{hr['id']}", headers=bearer("sales"))
    missing = api.get("/v1/jobs/0123456789abcdef0123456789ab", headers=bearer("sales"))
    assert_problem(other, 404, "job_not_found")
    assert_problem(missing, 404, "job_not_found")
    assert other.json()["title"] == missing.json()["title"]
    assert_problem(api.post(f"/v1/jobs/{hr['id']}/cancel", headers=bearer("sales")), 404,
                   "job_not_found")  # fmt: skip
    assert store.get(hr["id"]).state is JobState.QUEUED


def test_quota_429_then_accepted_after_a_job_finishes(api, store, audit_log) -> None:
    first, second = (submit(api, "sales", f"sales.t{i}").json() for i in range(2))
    refused = submit(api, "sales", "sales.t3")
    problem = assert_problem(refused, 429, "quota_exceeded")
    assert refused.headers["retry-after"] == "10" and "limit 2" in problem["detail"]
    assert len(all_jobs(store)) == 2
    assert audit_events(audit_log)[-1]["reason"] == "quota_exceeded"
    # Another principal is not affected by sales' quota.
    assert submit(api, "hr", "hr.x", "s3://datasets/hr/x").status_code == 202
    # A running job still counts; a finished one does not.
    store.transition(first["id"], JobState.RUNNING, expected={JobState.QUEUED})
    assert submit(api, "sales", "sales.t3").status_code == 429
    store.transition(first["id"], JobState.SUCCEEDED, expected={JobState.RUNNING})
    assert submit(api, "sales", "sales.t3").status_code == 202
    api.post(f"/v1/jobs/{second['id']}/cancel", headers=bearer("sales"))
    assert submit(api, "sales", "sales.t4").status_code == 202


def test_the_queue_depth_bound_answers_429(access_settings, enqueuer, store) -> None:
    settings = access_settings.model_copy(update={"max_queue_depth": 2, "retry_after": 7})
    with TestClient(create_app(settings, enqueue=enqueuer)) as api:
        assert submit(api, "legacy", "a.b", "s3://datasets/ok/1").status_code == 202
        assert submit(api, "legacy", "a.b", "s3://datasets/ok/2").status_code == 202
        full = submit(api, "legacy", "a.b", "s3://datasets/ok/3")
        assert_problem(full, 429, "queue_full")
        assert full.headers["retry-after"] == "7"
        assert len(all_jobs(store)) == 2


def test_body_size_limit_is_enforced_before_parsing(
    access_settings, enqueuer, store, audit_log
) -> None:
    big = json.dumps(
        {"source_table": "sales.events", "target": "s3://datasets/sales/x", "x": "y" * 5000}
    ).encode()
    app = create_app(access_settings, enqueue=enqueuer)
    with LiveServer(app, free_port()) as server, server.client(headers=bearer("sales")) as client:
        declared = client.post("/v1/jobs", content=big)
        assert_problem(declared, 413, "request_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
            for start in range(0, len(big), 1000):
                yield big[start : start + 1000]

        try:
            chunked = client.post("/v1/jobs", content=chunks())
        except httpx.HTTPError:
            chunked = None  # the server may close before reading the whole upload
        if chunked is not None:
            assert_problem(chunked, 413, "request_too_large")
        # Malformed JSON of a small body still gets the usual answer.
        json_header = {"content-type": "application/json"}
        malformed = client.post("/v1/jobs", content=b"{", headers=json_header)
        assert_problem(malformed, 400, "malformed_request")
    assert all_jobs(store) == []
    assert [e["reason"] for e in audit_events(audit_log)][:1] == ["request_too_large"]


def test_a_broken_principals_file_refuses_every_request(api, principals_file) -> None:
    import os
    import time

    principals_file.write_text("{ not json")
    os.utime(principals_file, ns=(time.time_ns(), time.time_ns() + 10**9))
    time.sleep(1.05)
    assert_problem(api.get("/v1/jobs", headers=bearer("admin")), 503, "auth_unavailable")


def test_a_bad_principals_file_stops_the_start(access_settings, scratch) -> None:
    bad = scratch / "bad.yaml"
    bad.write_text("principals:\n  - name: x\n    tokens: [abc]\n    scopes: [admin]\n")
    from worker.access.principals import AccessConfigError

    with pytest.raises(AccessConfigError, match=r"bad\.yaml"):
        create_app(access_settings.model_copy(update={"principals_file": bad}))
