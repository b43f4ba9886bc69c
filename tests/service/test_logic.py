"""Pure logic: the state machine, targets, sizes, tokens and log lines (no services)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.auth import authenticate
from app.errors import Unauthorized
from app.schemas import MAX_SIZE_LIMIT, parse_size
from app.settings import AppSettings
from worker.access.principals import build_registry
from worker.access.targets import (
    TargetError,
    TargetNotAllowedError,
    parse_allow_list,
    parse_target,
    resolve_target,
)
from worker.jobs import (
    FINAL_STATES,
    TRANSITIONS,
    InvalidTransitionError,
    JobRecord,
    JobRequest,
    JobState,
    new_job_id,
)
from worker.logging import JobIdFilter, JsonFormatter, job_context

S = JobState
REQUEST = JobRequest(source_table="t", target="s3://b-1/x")


def test_the_transition_table_is_the_documented_one() -> None:
    edges = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert edges == {
        (S.QUEUED, S.RUNNING),
        (S.QUEUED, S.CANCELLING),
        (S.RUNNING, S.RUNNING),
        (S.RUNNING, S.SUCCEEDED),
        (S.RUNNING, S.FAILED),
        (S.RUNNING, S.CANCELLING),
        (S.CANCELLING, S.CANCELLED),
        (S.CANCELLING, S.SUCCEEDED),
        (S.CANCELLING, S.FAILED),
    }
    assert all(not TRANSITIONS[state] for state in FINAL_STATES)


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ([S.RUNNING, S.SUCCEEDED], True),
        ([S.RUNNING, S.RUNNING, S.FAILED], True),
        ([S.CANCELLING, S.CANCELLED], True),
        ([S.RUNNING, S.CANCELLING, S.CANCELLED], True),
        ([S.SUCCEEDED], False),
        ([S.RUNNING, S.SUCCEEDED, S.RUNNING], False),
        ([S.CANCELLING, S.RUNNING], False),
        ([S.RUNNING, S.CANCELLED], False),
    ],
)
def test_moved_to_follows_the_table_and_logs_each_edge(path, ok) -> None:
    record = JobRecord.new(REQUEST)
    try:
        for state in path:
            record = record.moved_to(state)
    except InvalidTransitionError:
        assert not ok
        return
    assert ok
    assert [t.target for t in record.transitions] == [S.QUEUED, *path]
    assert record.attempts == path.count(S.RUNNING)
    assert (record.finished_at is not None) == (record.state in FINAL_STATES)


def test_job_ids_sort_by_creation_time() -> None:
    ids = [new_job_id() for _ in range(3)]
    assert len(ids[0]) == 28 and len(set(ids)) == 3
    assert ids[0][:12] <= ids[1][:12] <= ids[2][:12]


def test_fingerprint_depends_on_every_field() -> None:
    assert REQUEST.fingerprint() == JobRequest(source_table="t", target="s3://b-1/x").fingerprint()
    assert REQUEST.fingerprint() != REQUEST.model_copy(update={"size_limit": 1}).fingerprint()


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (123, 123),
        ("64mb", 64 << 20),
        ("64MB", 64 << 20),
        ("1.5kb", 1536),
        ("10", 10),
        ("2 gb", 2 << 30),
        ("7b", 7),
    ],
)
def test_parse_size(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "mb", "-1mb", "1pb", "1e3", True, 1.5, None])
def test_parse_size_refuses_garbage(text) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


def test_size_limit_bound_is_just_under_4_gib() -> None:
    assert MAX_SIZE_LIMIT == 4 * 1024**3 - 1


def test_s3_targets_are_normalised_and_matched_by_segment() -> None:
    assert str(parse_target("s3://bucket/a//b/")) == "s3://bucket/a/b"
    roots = parse_allow_list(["s3://bucket/a"])
    assert str(resolve_target("s3://bucket/a/b", roots)) == "s3://bucket/a/b"
    assert str(resolve_target("s3://bucket/a", roots)) == "s3://bucket/a"
    for outside in ("s3://bucket/ab", "s3://bucket", "s3://other/a/b"):
        with pytest.raises(TargetNotAllowedError):
            resolve_target(outside, roots)


@pytest.mark.parametrize(
    "raw", ["s3://bkt/a/../c", "s3://bkt/./c", "/data/../etc", "file:///data/%2E%2E/etc"]
)
def test_traversal_segments_are_never_allowed(raw) -> None:
    with pytest.raises(TargetNotAllowedError):
        parse_target(raw)


@pytest.mark.parametrize(
    "raw", ["", "ftp://x/y", "relative", "file://host/x", "s3://UP/x", "s3://a/x\n", "file:///x?q"]
)
def test_malformed_targets(raw) -> None:
    with pytest.raises(TargetError):
        parse_target(raw)


def test_symlinks_are_judged_by_where_they_lead(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "inner").symlink_to(root / "real")
    roots = parse_allow_list([str(root)])
    assert str(resolve_target(f"{root}/inner/x", roots)) == str(root / "real" / "x")
    with pytest.raises(TargetNotAllowedError):
        resolve_target(f"{root}/escape/x", roots)


def test_default_allow_list_is_the_data_dir(tmp_path: Path) -> None:
    settings = AppSettings(data_dir=tmp_path)
    assert settings.effective_allowed_targets() == [str(tmp_path / "datasets")]


def check_bearer(header: str | None, settings: AppSettings) -> str:
    return authenticate(header, build_registry(settings)).name


def test_bearer_tokens() -> None:
    settings = AppSettings(api_tokens=[SecretStr("one"), SecretStr("two")])
    two = check_bearer("Bearer two", settings)
    assert two.startswith("token:") and two != check_bearer("bearer one", settings)
    assert "two" not in two
    reordered = AppSettings(api_tokens=[SecretStr("two"), SecretStr("one")])
    assert check_bearer("Bearer two", reordered) == two
    for header in (None, "", "Bearer", "Bearer three", "Basic one", "one"):
        with pytest.raises(Unauthorized):
            check_bearer(header, settings)
    assert check_bearer(None, AppSettings(auth_disabled=True)) == "anonymous"
    with pytest.raises(Unauthorized):
        check_bearer("Bearer x", AppSettings())  # no tokens configured: nobody gets in


def test_json_log_lines_carry_the_job_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.service.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with job_context("job-1"):
            logger.info("job.started", extra={"attempt": 2})
        logger.info("idle")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "job.started" and first["job_id"] == "job-1" and first["attempt"] == 2
    assert first["level"] == "info" and first["time"].endswith("+00:00")
    assert "job_id" not in second


def test_the_api_never_imports_spark_or_the_conversion() -> None:
    import subprocess
    import sys

    code = (
        "import sys, app.main, app.cli\n"
        "app.main.create_app(app.settings.AppSettings(api_tokens=['x']))\n"
        "bad = [m for m in sys.modules if m.split('.')[0] == 'pyspark' or m in "
        "('worker.tasks', 'worker.convert.pipeline', 'worker.convert.spark')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr
