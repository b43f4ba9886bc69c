"""End-to-end fixtures: the real API (uvicorn) and a real Celery worker as separate processes.

Nothing runs in-process or eagerly: the test talks HTTP to a uvicorn server on loopback, the
worker consumes from a real Redis and converts with its own Spark JVM, and shards go to the S3
server on loopback. Each process runs in its own session so that stopping it reaches its JVM.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, require

# The quick start's helper package lives beside its script, outside any installed package.
sys.path.insert(0, str(ROOT / "scripts"))

FINAL = frozenset({"succeeded", "failed", "cancelled"})


class Service:
    """One child process in its own session, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def log_tail(self, size: int = 6000) -> str:
        return self.log_path.read_bytes()[-size:].decode(errors="replace")

    def assert_alive(self) -> None:
        code = self.process.poll()
        assert code is None, f"{self.name} exited with {code}:\n{self.log_tail()}"

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=wait)
                if sig == signal.SIGTERM:
                    # The leader is gone; a JVM left in the group must go too.
                    os.killpg(self.process.pid, signal.SIGKILL)
                return
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                return


class Stack:
    """The API and one worker sharing a Redis, a key prefix, a queue and an S3 bucket."""

    def __init__(self, redis_url: str, bucket: str, base: Path) -> None:
        self.bucket, self.base = bucket, base
        self.token = secrets.token_urlsafe(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        prefix = f"e2e{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "REDIS_URL": redis_url, "REDIS_PREFIX": prefix, "CELERY_QUEUE": f"{prefix}-q",
            "DATA_DIR": str(base / "data"), "APP_API_TOKENS": self.token,
            "APP_ALLOWED_TARGETS": bucket, "APP_ALLOWED_SOURCE_PATHS": str(base),
            "APP_LOG_JSON": "false", "WORKER_LOG_JSON": "false",
            "SPARK_MASTER": "local[2]",
            "SPARK_CONF": json.dumps({"spark.sql.shuffle.partitions": "4"}),
            "WORKER_PROGRESS_INTERVAL": "0.5",
        }  # fmt: skip
        self.services: list[Service] = []

    def start(self) -> Stack:
        python = sys.executable
        self.api = self._spawn("api", [python, "-m", "app.cli", "serve", "--port", str(self.port)])
        self.worker = self._spawn(
            "worker", [python, "-m", "app.cli", "worker", "--pool", "solo", "--loglevel", "INFO"]
        )
        self._wait_ready()
        return self

    def _spawn(self, name: str, argv: list[str]) -> Service:
        service = Service(name, argv, self.env, self.base)
        self.services.append(service)
        return service

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for service in self.services:
                service.assert_alive()
            try:
                api_ready = httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                api_ready = False
            if api_ready and b"ready." in self.worker.log_path.read_bytes():
                return
            time.sleep(0.2)
        raise AssertionError(
            f"the stack did not start:\n{self.api.log_tail()}\n{self.worker.log_tail()}"
        )

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )

    def wait_for(self, client: httpx.Client, job_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] in FINAL:
                return job
            self.worker.assert_alive()
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} did not finish: {job}\n{self.worker.log_tail()}")

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


@pytest.fixture(scope="module")
def stack(redis_server, s3_endpoint) -> Iterator[Stack]:
    """API + worker, with a bucket of their own on the loopback S3 server."""
    require(shutil.which("java") is not None, "java is not installed (Spark needs it)")
    import boto3

    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    base = Path(__import__("tempfile").mkdtemp(prefix="mds-e2e-"))
    running = Stack(redis_server.url, f"s3://{bucket}", base)
    try:
        yield running.start()
    finally:
        running.stop()
        shutil.rmtree(base, ignore_errors=True)
