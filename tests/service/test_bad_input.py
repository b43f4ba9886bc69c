"""Every bad request is a 4xx problem body with a stable code, and creates no job."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.service.conftest import AUTH
from worker.jobs import RedisJobStore

pytestmark = pytest.mark.integration

BODY = {"source_table": "sales.events", "target": "s3://datasets/ok/events"}
PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status and body["code"] == code and body["detail"]
    assert body["type"] == f"urn:mds-convert:problem:{code}" and body["title"]
    return body


def assert_no_job(store: RedisJobStore) -> None:
    assert store.client.zcard(store.all_key) == 0
    assert store.client.keys(f"{store.prefix}:job:*") == []


BAD_FIELDS = [
    ({"target": "s3://datasets/ok/x"}, "source_table", "missing"),
    ({"source_table": "a.b"}, "target", "missing"),
    ({**BODY, "color": "blue"}, "color", "extra_forbidden"),
    ({**BODY, "compression": "zstd:99"}, "compression", "value_error"),
    ({**BODY, "compression": "lz4"}, "compression", "value_error"),
    ({**BODY, "hashes": ["xxh64", "crc32"]}, "hashes", "value_error"),
    ({**BODY, "size_limit": 4 << 30}, "size_limit", "less_than_equal"),
    ({**BODY, "size_limit": "4gb"}, "size_limit", "less_than_equal"),
    ({**BODY, "size_limit": "lots"}, "size_limit", "value_error"),
    ({**BODY, "size_limit": 0}, "size_limit", "greater_than"),
    ({**BODY, "source_table": "events; DROP TABLE users"}, "source_table", "value_error"),
    ({**BODY, "source_table": "a.b WHERE 1=1"}, "source_table", "value_error"),
    ({**BODY, "source_table": "x.y.z.w"}, "source_table", "value_error"),
    ({**BODY, "columns": {"x": "ndarray:complex"}}, "columns", "value_error"),
    ({**BODY, "columns": {"x": "varchar"}}, "columns", "value_error"),
    ({**BODY, "columns": {}}, "columns", "value_error"),
    ({**BODY, "partitions": 0}, "partitions", "greater_than_equal"),
    ({**BODY, "partitions": "many"}, "partitions", "int_type"),
    ({**BODY, "partitions": "8"}, "partitions", "int_type"),  # strict: no string -> number
    ({**BODY, "partitions": 8.0}, "partitions", "int_type"),
    ({**BODY, "compression": 7}, "compression", "string_type"),  # nor number -> string
    ({**BODY, "mode": "merge"}, "mode", "literal_error"),
    ({**BODY, "null_policy": "drop"}, "null_policy", "literal_error"),
    ({**BODY, "target": "ftp://host/x"}, "target", "invalid_request"),
    ({**BODY, "target": "relative/path"}, "target", "invalid_request"),
    ({**BODY, "target": "s3://Bad_Bucket/x"}, "target", "invalid_request"),
]


@pytest.mark.parametrize(("body", "field", "kind"), BAD_FIELDS, ids=[f[1] for f in BAD_FIELDS])
def test_invalid_fields_are_listed(client, store, body, field, kind) -> None:
    problem = assert_problem(client.post("/v1/jobs", json=body), 422, "invalid_request")
    if kind == "invalid_request":  # checked by the service after the schema
        assert field in problem["detail"]
    else:
        reported = {(e["field"].split(".")[0], e["type"]) for e in problem["errors"]}
        assert (field, kind) in reported
    assert_no_job(store)


@pytest.mark.parametrize(
    "extra",
    [
        {"fill_values": {"x": 0}},
        {"null_policy": "fill"},
        {"null_policy": "skip", "fill_values": {"x": 0}},
    ],
    ids=["fill-values-without-policy", "fill-policy-without-values", "skip-with-fill-values"],
)
def test_null_policy_and_fill_values_must_agree(client, store, extra) -> None:
    problem = assert_problem(
        client.post("/v1/jobs", json={**BODY, **extra}), 422, "invalid_request"
    )
    assert "fill_values" in " ".join(e["message"] for e in problem["errors"])
    assert_no_job(store)


def test_every_bad_field_is_reported_at_once(client, store) -> None:
    body = {
        "source_table": "1; drop",
        "target": "s3://datasets/ok/x",
        "compression": "lz4",
        "hashes": ["nope"],
        "size_limit": 1 << 40,
        "extra": 1,
    }
    problem = assert_problem(client.post("/v1/jobs", json=body), 422, "invalid_request")
    fields = {e["field"] for e in problem["errors"]}
    assert fields == {"source_table", "compression", "hashes", "size_limit", "extra"}
    assert_no_job(store)


def test_malformed_json_is_a_400(client, store) -> None:
    response = client.post(
        "/v1/jobs", content=b'{"source_table": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400, "malformed_request")
    assert_no_job(store)


def test_a_body_that_is_not_an_object_is_refused(client, store) -> None:
    assert_problem(client.post("/v1/jobs", json=["a"]), 422, "invalid_request")
    assert_no_job(store)


@pytest.mark.parametrize(
    "target",
    [
        "s3://datasets/other/x",
        "s3://elsewhere/ok/x",
        "s3://datasets/okay",  # a sibling that shares the allowed prefix's characters
        "s3://datasets/ok/../secret",
        "file:///../../etc",
        "file:///etc/passwd",
        "/etc",
        "file:///tmp/%2e%2e/etc",
    ],
)
def test_targets_outside_the_allow_list_are_refused(client, store, target) -> None:
    response = client.post("/v1/jobs", json={**BODY, "target": target})
    assert_problem(response, 403, "target_not_allowed")
    assert_no_job(store)


def test_local_traversal_and_symlink_escapes_are_refused(client, store, allowed_root: Path) -> None:
    outside = allowed_root.parent / "outside"
    outside.mkdir()
    os.symlink(outside, allowed_root / "link")
    for target in (
        f"{allowed_root}/../outside",
        f"file://{allowed_root}/a/../../outside",
        f"{allowed_root}/link/data",
    ):
        response = client.post("/v1/jobs", json={**BODY, "target": target})
        assert_problem(response, 403, "target_not_allowed")
    assert_no_job(store)


def test_a_local_target_under_the_root_is_accepted(client, allowed_root: Path) -> None:
    response = client.post("/v1/jobs", json={**BODY, "target": f"file://{allowed_root}/ds"})
    assert response.status_code == 202
    assert response.json()["request"]["target"] == str(allowed_root.resolve() / "ds")


def test_unknown_job_is_a_404(client) -> None:
    assert_problem(client.get("/v1/jobs/0123456789abcdef0123456789ab"), 404, "job_not_found")
    assert_problem(client.get("/v1/jobs/not-an-id"), 404, "job_not_found")
    assert_problem(client.post("/v1/jobs/not-an-id/cancel"), 404, "job_not_found")


def test_cancel_of_a_finished_job_is_a_409(client) -> None:
    job_id = client.post("/v1/jobs", json=BODY).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "job_not_cancellable")


def test_reused_idempotency_key_with_another_body_is_a_conflict(client, store) -> None:
    key = {"Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", json=BODY, headers=key)
    other = client.post("/v1/jobs", json={**BODY, "compression": "gz"}, headers=key)
    assert_problem(other, 422, "idempotency_conflict")
    assert store.client.zcard(store.all_key) == 1
    assert first.json()["id"] in other.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer"},
        {"Authorization": AUTH["Authorization"].lower().replace("bearer", "token")},
    ],
)
def test_no_or_a_wrong_token_is_a_401(client, store, headers) -> None:
    client.headers.pop("Authorization")
    for response in (
        client.post("/v1/jobs", json=BODY, headers=headers),
        client.post("/v1/jobs", content=b"{not json", headers=headers),
        client.get("/v1/jobs", headers=headers),
        client.get("/v1/jobs/whatever", headers=headers),
    ):
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert_no_job(store)


def test_health_endpoints_need_no_token(client) -> None:
    client.headers.pop("Authorization")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_unknown_routes_and_methods_are_problems(client) -> None:
    assert_problem(client.get("/v2/nothing"), 404, "not_found")
    assert_problem(client.delete("/v1/jobs"), 405, "method_not_allowed")
    assert client.delete("/v1/jobs").headers["allow"] == "GET, POST"
    assert client.put("/v1/jobs/abc/cancel").headers["allow"] == "POST"


def test_json_nested_too_deep_is_malformed(client, store) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400, "malformed_request")
    assert_no_job(store)


def test_every_documented_error_is_problem_json(client) -> None:
    document = client.get("/openapi.json").json()
    seen = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    seen += 1
                    assert list(response["content"]) == ["application/problem+json"], (
                        method,
                        path,
                        status,
                    )
    assert seen > 20 and "HTTPValidationError" not in document["components"]["schemas"]
    job_path = document["paths"]["/v1/jobs/{job_id}"]
    assert {"401", "403", "404", "422", "503"} <= set(job_path["get"]["responses"])


def test_an_over_long_job_id_is_a_documented_422(client) -> None:
    problem = assert_problem(client.get("/v1/jobs/" + "a" * 65), 422, "invalid_request")
    assert problem["errors"][0]["field"] == "job_id"
    assert_problem(client.post("/v1/jobs/" + "a" * 65 + "/cancel"), 422, "invalid_request")
