"""Job options of the second wave through the API: row filters (shape checked at submission)."""

from __future__ import annotations

import pytest

from tests.service.test_bad_input import assert_no_job, assert_problem

pytestmark = pytest.mark.integration

BODY = {"source_table": "sales.events", "target": "s3://datasets/ok/events/v1"}


def test_a_filter_is_stored_with_the_job(client) -> None:
    conditions = [
        {"column": "day", "op": ">=", "value": "2024-01-01"},
        {"column": "country", "op": "in", "value": ["FR", "DE"]},
        {"column": "score", "op": "between", "value": [0.5, 1]},
        {"column": "deleted_at", "op": "is_null"},
    ]
    response = client.post("/v1/jobs", json={**BODY, "filter": conditions})
    assert response.status_code == 202, response.text
    stored = response.json()["request"]["filter"]
    assert [(c["column"], c["op"], c["value"]) for c in stored] == [
        ("day", ">=", "2024-01-01"),
        ("country", "in", ["FR", "DE"]),
        ("score", "between", [0.5, 1]),
        ("deleted_at", "is_null", None),
    ]


@pytest.mark.parametrize(
    "conditions",
    [
        [],
        [{"column": "a", "op": "like", "value": "%x"}],
        [{"column": "a", "op": "=", "value": None}],
        [{"column": "a", "op": "in", "value": "x"}],
        [{"column": "a", "op": "between", "value": [1, 2, 3]}],
        [{"column": "a", "op": "not_null", "value": 1}],
        [{"column": "a", "op": "=", "value": 1, "sql": "1=1"}],
        "a > 1",  # free-form SQL is never accepted
    ],
)
def test_a_malformed_filter_is_refused_at_submission(client, store, conditions) -> None:
    response = client.post("/v1/jobs", json={**BODY, "filter": conditions})
    problem = assert_problem(response, 422, "invalid_request")
    assert problem["errors"][0]["field"].startswith("filter")
    assert_no_job(store)


def test_splits_and_append_are_stored_with_the_job(client) -> None:
    splits = {"by": ["user", "day"], "seed": 7, "parts": {"train": 0.98, "val": 0.02}}
    response = client.post("/v1/jobs", json={**BODY, "mode": "append", "splits": splits})
    assert response.status_code == 202, response.text
    request = response.json()["request"]
    assert request["mode"] == "append" and request["splits"] == splits


@pytest.mark.parametrize(
    "splits",
    [
        {"by": "id", "parts": {"train": 0.9}},
        {"by": "id", "parts": {"train": 0.9, "val": 0.2}},
        {"by": "id", "parts": {"train": 0.5, "../val": 0.5}},
        {"by": "id", "seed": "7", "parts": {"a": 0.5, "b": 0.5}},
        {"by": [], "parts": {"a": 0.5, "b": 0.5}},
        {"parts": {"a": 0.5, "b": 0.5}},
    ],
)
def test_malformed_splits_are_refused_at_submission(client, store, splits) -> None:
    response = client.post("/v1/jobs", json={**BODY, "splits": splits})
    problem = assert_problem(response, 422, "invalid_request")
    assert problem["errors"][0]["field"].startswith("splits")
    assert_no_job(store)
