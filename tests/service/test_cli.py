"""The ``mds-convert`` command-line client against the API served on loopback."""

from __future__ import annotations

import json
import threading

import pytest

from app.cli import build_parser, main, progress_line
from tests.service.conftest import TOKEN
from worker.jobs import JobResult, JobState

pytestmark = pytest.mark.integration

S = JobState


@pytest.fixture
def cli(live_api, monkeypatch, capsys):
    monkeypatch.setenv("MDS_CONVERT_URL", live_api.url)
    monkeypatch.setenv("MDS_CONVERT_TOKEN", TOKEN)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_submit_status_list_cancel(cli, enqueuer) -> None:
    code, out, _ = cli(
        "submit",
        "sales.events",
        "s3://datasets/ok/x",
        "--compression",
        "gz:5",
        "--hash",
        "md5",
        "--hash",
        "xxh64",
        "--column",
        "a=str",
        "--column",
        "b",
        "--size-limit",
        "1mb",
        "--partitions",
        "3",
    )
    assert code == 0
    job_id = out.strip()
    assert enqueuer.sent == [job_id]
    code, out, _ = cli("status", job_id)
    request = json.loads(out)["request"]
    assert request["compression"] == "gz:5" and request["hashes"] == ["md5", "xxh64"]
    assert request["columns"] == {"a": "str", "b": None} and request["size_limit"] == 1 << 20
    code, out, _ = cli("list", "--state", "queued")
    assert code == 0 and job_id in out and "sales.events -> s3://datasets/ok/x" in out
    code, out, _ = cli("cancel", job_id)
    assert (code, out.strip()) == (0, f"{job_id} cancelled")
    code, _, err = cli("cancel", job_id)
    assert code == 2 and "409 job_not_cancellable" in err


def test_wait_shows_progress_and_exits_by_outcome(cli, store) -> None:
    _, out, _ = cli("submit", "sales.events", "s3://datasets/ok/y")
    job_id = out.strip()

    def finish() -> None:
        store.transition(job_id, S.RUNNING, expected={S.QUEUED})
        result = JobResult(
            index_url="s3://datasets/ok/y/index.json",
            samples=7,
            shards=1,
            raw_bytes=1,
            zip_bytes=1,
            columns={},
        )
        store.transition(
            job_id, S.SUCCEEDED, expected={S.RUNNING}, mutate=lambda r: setattr(r, "result", result)
        )

    timer = threading.Timer(0.3, finish)
    timer.start()
    code, out, err = cli("wait", job_id, "--interval", "0.05")
    timer.join()
    assert code == 0 and json.loads(out)["state"] == "succeeded"
    assert "partitions" in err and "queued" in err and "succeeded" in err


def test_errors_are_reported_with_exit_code_2(cli) -> None:
    code, _, err = cli("submit", "a; drop", "s3://elsewhere/x")
    assert code == 2 and "422 invalid_request" in err and "source_table" in err
    code, _, err = cli("status", "0" * 28)
    assert code == 2 and "404 job_not_found" in err
    code, _, err = cli("status", "x", "--token", "nope")
    assert code == 2 and "401 unauthorized" in err
    code, _, err = cli("status", "x", "--url", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach" in err


def test_progress_line() -> None:
    job = {
        "state": "running",
        "progress": {
            "partitions_total": 4,
            "partitions_done": 2,
            "rows_written": 1234,
            "bytes_written": 2_500_000,
        },
    }
    assert progress_line(job, width=10) == (
        "[#####-----] 2/4 partitions, 1,234 rows, 2.5 MB  running"
    )


def test_parser_has_service_commands() -> None:
    parser = build_parser()
    assert parser.parse_args(["serve", "--port", "9000"]).port == 9000
    assert parser.parse_args(["worker", "--pool", "solo"]).pool == "solo"
    assert parser.parse_args(["worker-ping"]).command == "worker-ping"


def test_submit_with_filter_splits_append_and_callback(cli, app_settings) -> None:
    code, out, err = cli(
        "submit", "sales.events", "s3://datasets/ok/y", "--mode", "append", "--json",
        "--filter", '{"column": "day", "op": ">=", "value": "2024-01-01"}',
        "--filter", '[{"column": "country", "op": "in", "value": ["FR"]}]',
        "--splits", '{"by": "id", "seed": 3, "parts": {"train": 0.9, "val": 0.1}}',
    )  # fmt: skip
    assert code == 0, err
    request = json.loads(out)["request"]
    assert request["mode"] == "append" and request["splits"]["seed"] == 3
    assert [c["column"] for c in request["filter"]] == ["day", "country"]
    # Callbacks are not configured on this API: refused with the reason.
    code, _, err = cli("submit", "a.b", "s3://datasets/ok/z", "--callback-url", "http://x/h")
    assert code == 2 and "not configured" in err
    code, _, err = cli("submit", "a.b", "s3://datasets/ok/z", "--filter", "{not json")
    assert code == 2 and "--filter must be JSON" in err
