"""Fixtures of the console's browser tests: the API on a real HTTP port with a real Celery worker,
two principals from a principals file, and headless Chromium (Debian's) driven by Playwright.

One worker process and one browser serve the whole module; each test gets a fresh browser context
(its own session storage, so nobody is signed in).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.settings import AppSettings
from tests.conftest import ROOT, free_port, require
from tests.service.conftest import LiveServer
from tests.service.test_end_to_end import write_source
from tests.service.workers import CeleryWorker
from worker.access.principals import token_digest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = ROOT / "docs" / "screenshots"
TOKENS = {"alice": "tok-alice-console-0123456789", "bob": "tok-bob-console-0123456789"}


@dataclass
class Console:
    """The running service as the browser tests see it."""

    url: str
    bucket: str
    source: str  # a small table (a job on it succeeds in seconds)
    big_source: str  # a table whose conversion runs long enough to be cancelled
    worker: CeleryWorker

    def api(self, principal: str = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKENS[principal]}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _principals(path: Path, base: Path, bucket: str) -> Path:
    writer = ["jobs:submit", "jobs:read", "jobs:cancel"]
    entries = [
        {"name": name, "tokens": [token_digest(token)], "scopes": writer,
         "source_paths": [str(base)], "targets": [f"{bucket}/{name}/"]}
        for name, token in TOKENS.items()
    ]
    path.write_text(json.dumps({"principals": entries}))
    return path


@pytest.fixture(scope="module")
def console(redis_server, s3_endpoint, tmp_path_factory) -> Iterator[Console]:
    require(shutil.which("java") is not None, "java is not installed")
    import boto3

    base = tmp_path_factory.mktemp("console")
    bucket = f"s3://ui-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket[5:])
    principals = _principals(base / "principals.json", base, bucket)
    prefix = f"ui{uuid.uuid4().hex[:8]}"
    settings = AppSettings(
        redis_url=redis_server.url, redis_prefix=prefix, celery_queue=f"{prefix}-q",
        principals_file=principals, outbox_delay=1, outbox_interval=1, log_json=False,
    )
    worker = CeleryWorker(
        {
            "REDIS_URL": redis_server.url, "REDIS_PREFIX": prefix, "CELERY_QUEUE": f"{prefix}-q",
            "DATA_DIR": str(base / "data"), "SPARK_MASTER": "local[1]",
            "SPARK_CONF": json.dumps({"spark.sql.shuffle.partitions": "4",
                                      "spark.ui.showConsoleProgress": "false"}),
            "WORKER_PROGRESS_INTERVAL": "0.3", "WORKER_CANCEL_POLL_INTERVAL": "0.2",
            # The worker re-checks each job against the same principals as the API.
            "APP_PRINCIPALS_FILE": str(principals),
        },
        base / "worker.log",
        "console",
    )
    source = write_source(base / "small", 20_000, files=8, pad=64)
    big_source = write_source(base / "big", 40_000, files=8, pad=400)
    worker.start(timeout=120)
    try:
        with LiveServer(create_app(settings), free_port()) as server:
            yield Console(server.url, bucket, source, big_source, worker)
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def browser():
    require(os.path.exists(CHROMIUM), f"chromium is not installed at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover - depends on the environment
        require(False, "playwright is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, tmp_path: Path):
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(20_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text
           else None)
    yield tab
    context.close()
    assert not errors, f"script errors or CSP violations in the page: {errors}"


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """Save a full-page screenshot in the test's output directory (and, with
    ``UPDATE_SCREENSHOTS=1``, into docs/screenshots/ for the README)."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SCREENSHOTS / path.name)
    return path


def sign_in(page, url: str, principal: str = "alice") -> None:
    page.goto(f"{url}/ui/signin")
    page.fill("#token", TOKENS[principal])
    page.click("#signin-form button[type=submit]")
    page.wait_for_url(f"{url}/ui/jobs")
    page.wait_for_selector(f"#whoami:has-text('{principal}')")
