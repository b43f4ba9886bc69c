"""Helpers for the many-workers tests: workers of either pool, SIGTERM, and job bookkeeping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.service.workers import ROOT, CeleryWorker

FINAL = {"succeeded", "failed", "cancelled"}


class PoolWorker(CeleryWorker):
    """A Celery worker with a chosen pool and concurrency (``prefork`` runs tasks in children)."""

    def __init__(
        self, env: dict[str, str], log_path: Path, name: str, *, pool: str = "solo",
        concurrency: int = 1,
    ) -> None:
        super().__init__(env, log_path, name)
        self.pool, self.concurrency = pool, concurrency

    def start(self, timeout: float = 90.0) -> PoolWorker:
        command = [
            sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
            f"--pool={self.pool}", f"--concurrency={self.concurrency}",
            f"--queues={self.env['CELERY_QUEUE']}", "--loglevel=INFO",
            f"--hostname={self.name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat",
        ]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_for(b"ready.", timeout)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM to the main process only, as compose and Kubernetes send it."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int | None:
        """The exit status, or None if still running after ``timeout``; reaps what is left."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        try:  # the Spark JVM leaves on its own when its driver's pipe closes; do not wait for it
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None
        return code


def wait_final(api: httpx.Client, job_ids: list[str], timeout: float) -> dict[str, dict]:
    """Poll until every job is in a final state; returns the jobs by id."""
    deadline, jobs = time.monotonic() + timeout, {}
    pending = list(job_ids)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            response = api.get(f"/v1/jobs/{job_id}")
            if response.status_code == 200 and response.json()["state"] in FINAL:
                jobs[job_id] = response.json()
                pending.remove(job_id)
        time.sleep(0.25)
    assert not pending, f"never final: {[api.get(f'/v1/jobs/{i}').json() for i in pending]}"
    return jobs


def published_files(storage) -> set[str]:
    """index.json, every shard it references and each shard directory's own index.json."""
    index = json.loads(storage.read_bytes("index.json"))
    names = {"index.json"}
    for shard in index["shards"]:
        basename = (shard["zip_data"] or shard["raw_data"])["basename"]
        names |= {basename, f"{basename.rpartition('/')[0]}/index.json"}
    return names


def running_intervals(record: dict) -> list[tuple[str, str | None]]:
    """(start, end) of each attempt from the transition log: entering running to leaving it."""
    spans: list[tuple[str, str | None]] = []
    for entry in record["transitions"]:
        if entry["target"] == "running":
            if spans and spans[-1][1] is None:
                spans[-1] = (spans[-1][0], entry["at"])
            spans.append((entry["at"], None))
        elif spans and spans[-1][1] is None:
            spans[-1] = (spans[-1][0], entry["at"])
    return spans
