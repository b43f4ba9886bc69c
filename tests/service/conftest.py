"""Fixtures of the job service tests: isolated key prefixes and queues on the shared Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import AppSettings
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
    with TestClient(create_app(app_settings, enqueue=enqueuer), headers=AUTH) as test_client:
        yield test_client


@pytest.fixture
def store(redis_server, prefix: str) -> Iterator[RedisJobStore]:
    job_store = RedisJobStore.from_url(redis_server.url, prefix=prefix)
    yield job_store
    job_store.client.close()
