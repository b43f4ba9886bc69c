"""Real Celery worker processes for the end-to-end tests (never eager mode)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class CeleryWorker:
    """``celery -A worker.celery_app worker --pool=solo`` in its own process group.

    The group holds the worker and its Spark JVM, so ``kill(SIGKILL)`` is a pod dying: nothing
    gets to clean up or acknowledge.
    """

    def __init__(self, env: dict[str, str], log_path: Path, name: str) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> CeleryWorker:
        queue = self.env["CELERY_QUEUE"]
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            "worker",
            "--pool=solo",
            "--concurrency=1",
            f"--queues={queue}",
            "--loglevel=INFO",
            f"--hostname={self.name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_for(b"ready.", timeout)
        return self

    def _wait_for(self, marker: bytes, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.log_path.read_bytes():
                return
            if self.process is not None and self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"worker {self.name} did not start:\n{self.log_tail()}")

    def log_tail(self, size: int = 6000) -> str:
        return self.log_path.read_bytes()[-size:].decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group (worker and JVM) at once."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            self.kill()
        self.process = None
