"""The console in headless Chromium against the real service: a real Celery worker converts what
the form submits, and the pages must show it live.

Each test saves a screenshot in its output directory (``UPDATE_SCREENSHOTS=1`` also refreshes
docs/screenshots/, which the README shows).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.ui.conftest import TOKENS, Console, screenshot, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]

XSS = "<img src=x onerror=window.__xss=1>"


def state_of(page) -> str:
    return page.get_attribute("#job", "data-state") or ""


def wait_for_state(page, states: set[str], timeout: float = 180, seen: list | None = None) -> str:
    """Poll the page (not the API) until it shows one of ``states``; records rows shown."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = state_of(page)
        if seen is not None and page.is_visible("#progress-stats dd[data-key=rows]"):
            seen.append(int(page.inner_text("#progress-stats dd[data-key=rows]").replace(",", "")))
        if state in states:
            return state
        page.wait_for_timeout(250)
    raise AssertionError(f"the page never showed {states}; last {state_of(page)!r}")


def test_a_wrong_token_is_refused(console: Console, page, tmp_path: Path) -> None:
    page.goto(f"{console.url}/ui/jobs")
    page.wait_for_url(f"{console.url}/ui/signin")  # no token: sent to sign in
    page.fill("#token", "not-a-valid-token")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#signin-error:has-text('This token was refused.')")
    assert page.evaluate("sessionStorage.length") == 0
    assert page.url == f"{console.url}/ui/signin"
    screenshot(page, tmp_path, "signin-refused")


def test_submit_watch_it_succeed_and_preview(console: Console, page, tmp_path: Path) -> None:
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    sign_in(page, console.url)
    page.click("a.button.primary:has-text('New conversion')")
    page.wait_for_url(f"{console.url}/ui/submit")
    page.fill("#f-source_table", console.source)
    page.fill("#f-target", f"{console.bucket}/alice/events")
    page.fill("#f-compression", "zstd:3")
    page.fill("#f-partitions", "8")
    page.click("#submit-button")
    page.wait_for_url(f"{console.url}/ui/jobs/*")
    job_id = page.get_attribute("#job", "data-job-id")

    rows_seen: list[int] = []
    assert wait_for_state(page, {"succeeded", "failed"}, seen=rows_seen) == "succeeded", (
        console.worker.log_tail()
    )
    page.wait_for_selector("#progress-stats dd[data-key=rows]:has-text('20,000')")
    assert rows_seen == sorted(rows_seen), rows_seen  # progress only moves forward
    assert len(set(rows_seen)) >= 2, rows_seen  # and it moved while the page watched
    assert int(page.get_attribute("#chart polyline", "data-points")) >= 2
    assert page.inner_text("#outcome-body dd[data-key=samples]") == "20,000"
    page.wait_for_selector("#dataset-summary dd[data-key=samples]:has-text('20,000')")
    assert page.inner_text("#dataset-summary dd[data-key=compression]") == "zstd:3"
    columns = page.locator("#dataset-columns tbody tr").all_inner_texts()
    assert [c.split("\t")[0] for c in columns] == ["emb", "id", "name", "score"]

    page.click("#preview-button")
    page.wait_for_selector("#preview-table tbody tr >> nth=19")
    assert page.locator("#preview-table tbody tr").count() == 20
    first = page.locator("#preview-table tbody tr").first.inner_text()
    assert "ndarray float32 [3]" in first and "row-" in first
    screenshot(page, tmp_path, "job-succeeded")

    page.click("nav.nav a:has-text('Jobs')")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    row.wait_for()
    assert row.get_attribute("data-state") == "succeeded"
    assert "20,000 rows" in row.inner_text() and "rows/s" in row.inner_text()
    screenshot(page, tmp_path, "jobs")
    page.select_option("#state-filter", "failed")
    row.wait_for(state="detached")
    page.select_option("#state-filter", "succeeded")
    row.wait_for()

    # The token never went into a URL or a cookie.
    assert not any(TOKENS["alice"] in url for url in requested)
    assert page.evaluate("document.cookie") == ""


def test_cancel_a_running_job(console: Console, page, tmp_path: Path) -> None:
    with console.api() as api:
        job = api.post("/v1/jobs", json={
            "source_table": console.big_source, "target": f"{console.bucket}/alice/big",
            "partitions": 16, "compression": "gz:9",
        }).json()
    sign_in(page, console.url)
    page.goto(f"{console.url}/ui/jobs/{job['id']}")
    assert wait_for_state(page, {"running", "succeeded", "failed"}) == "running"
    page.click("#cancel")
    assert page.is_visible("#cancel-dialog")
    screenshot(page, tmp_path, "cancel-confirm")
    page.click("#cancel-confirm")
    assert wait_for_state(page, {"cancelled", "succeeded", "failed"}, timeout=60) == "cancelled"
    assert page.is_hidden("#cancel")
    transitions = page.locator("#transitions tbody tr").all_inner_texts()
    assert any("cancelling" in t and "alice" in t for t in transitions), transitions
    screenshot(page, tmp_path, "job-cancelled")


def test_a_failed_job_shows_its_error_and_stays_private(
    console: Console, page, tmp_path: Path
) -> None:
    with console.api() as api:
        response = api.post("/v1/jobs", json={
            "source_table": console.source, "target": f"{console.bucket}/alice/broken",
            "columns": {XSS: None},
        })
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    sign_in(page, console.url)
    page.goto(f"{console.url}/ui/jobs/{job_id}")
    assert wait_for_state(page, {"failed", "succeeded"}) == "failed"
    assert page.inner_text("#outcome-title") == "Error"
    code = page.inner_text("#outcome-body dd[data-key=code]")
    assert code and " " not in code
    assert page.inner_text("#outcome-body dd[data-key=retryable]") == "no"
    assert XSS in page.inner_text("#outcome-body dd[data-key=message]") + page.inner_text(
        "#request dd[data-key=columns]"
    )
    assert page.locator("img").count() == 0 and page.evaluate("window.__xss") is None
    assert page.is_hidden("#cancel") and page.is_hidden("#dataset")
    screenshot(page, tmp_path, "job-failed")

    # Another principal sees neither the job nor that it exists.
    page.click("#signout")
    page.wait_for_url(f"{console.url}/ui/signin")
    sign_in(page, console.url, "bob")
    assert page.locator(f"tr[data-job-id='{job_id}']").count() == 0
    page.goto(f"{console.url}/ui/jobs/{job_id}")
    page.wait_for_selector("#job-error:has-text('No such job')")


def test_field_errors_for_bad_input(console: Console, page, tmp_path: Path) -> None:
    sign_in(page, console.url)
    page.goto(f"{console.url}/ui/submit")
    page.fill("#f-source_table", "db.events; DROP TABLE x")
    page.fill("#f-target", f"{console.bucket}/alice/bad")
    page.fill("#f-compression", "zstd:99")
    page.fill("#f-hashes", "xxh64, nope")
    page.fill("#f-partitions", "0")
    page.fill("#f-columns", '{"id": "int128"}')
    page.fill("#f-filter", '[{"column": "id", "op": "~", "value": 1}]')
    page.click("#submit-button")
    for field in ("source_table", "compression", "hashes", "partitions", "columns", "filter"):
        page.wait_for_selector(f"#err-{field}:visible")
        assert page.get_attribute(f"#f-{field}", "aria-invalid") == "true"
    assert page.is_hidden("#err-target")
    assert "int128" in page.inner_text("#err-columns")
    screenshot(page, tmp_path, "submit-errors")

    page.fill("#f-columns", "{not json")
    page.click("#submit-button")
    page.wait_for_selector("#err-columns:has-text('not valid JSON')")

    # Valid input, but outside the principal's targets: refused beside the target field.
    for field, value in (("source_table", console.source), ("compression", "zstd"),
                         ("hashes", "xxh64"), ("partitions", ""), ("columns", ""),
                         ("filter", "")):
        page.fill(f"#f-{field}", value)
    page.fill("#f-target", f"{console.bucket}/bob/not-mine")
    page.click("#submit-button")
    page.wait_for_selector("#err-target:has-text('outside the allowed targets')")
    assert page.is_hidden("#err-compression")
    assert page.url == f"{console.url}/ui/submit"
