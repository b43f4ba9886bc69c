"""Fixtures of the job service tests: isolated key prefixes and queues on the shared Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import AppSettings
from tests.conftest import free_port
from worker.jobs import RedisJobStore

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RecordingEnqueuer:
    """Stands in for the Celery producer in API tests: remembers the ids it was given."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.fail = False

    def __call__(self, job_id: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append(job_id)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def allowed_root(scratch: Path) -> Path:
    root = scratch / "datasets"
    root.mkdir()
    return root


@pytest.fixture
def app_settings(redis_server, prefix: str, allowed_root: Path) -> AppSettings:
    return AppSettings(
        redis_url=redis_server.url,
        redis_prefix=prefix,
        celery_queue=f"{prefix}-q",
        api_tokens=[TOKEN],
        allowed_targets=["s3://datasets/ok", str(allowed_root)],
        outbox_delay=0.2,
        outbox_interval=0.2,
        log_json=False,
    )


@pytest.fixture
def enqueuer() -> RecordingEnqueuer:
    return RecordingEnqueuer()


@pytest.fixture
def client(app_settings: AppSettings, enqueuer: RecordingEnqueuer) -> Iterator[TestClient]:
    """The app in process (fast: most API tests); ``live_api`` serves it over real HTTP."""
    with TestClient(create_app(app_settings, enqueue=enqueuer), headers=AUTH) as test_client:
        yield test_client


@pytest.fixture
def store(redis_server, prefix: str) -> Iterator[RedisJobStore]:
    job_store = RedisJobStore.from_url(redis_server.url, prefix=prefix)
    yield job_store
    job_store.client.close()


class LiveServer:
    """The app served by uvicorn on a loopback port, in a thread (a real HTTP server)."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.app = app
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_api(app_settings: AppSettings, enqueuer: RecordingEnqueuer) -> Iterator[LiveServer]:
    with LiveServer(create_app(app_settings, enqueue=enqueuer), free_port()) as server:
        yield server
