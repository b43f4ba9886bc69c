"""Child processes of the quick start (Redis, the API, the worker) and stopping all of them.

Every child runs in its own session, so that stopping it reaches its whole process group (the
worker's Spark JVM included) and a Ctrl-C in the terminal reaches only the quick start, which
then stops the children in reverse order of their start.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class StartupError(RuntimeError):
    """A prerequisite is missing, or a service did not come up (the message says which)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Child:
    """One started service: its process (a group leader) and the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_start: int = 0  # logs are appended across runs: this run's output starts here

    def output(self) -> bytes:
        """What this process has written so far (earlier runs' lines excluded)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self.log_start)
                return log.read()
        except OSError:
            return b""

    def check_alive(self) -> None:
        """Raise with the end of the log if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise StartupError(
                f"{self.name} exited with status {code}; its log ends with:\n{self.log_tail()}"
            )

    def log_tail(self, size: int = 4000) -> str:
        return self.output()[-size:].decode(errors="replace") or "(nothing)"

    def stop(self, grace: float) -> None:
        """SIGTERM the leader, then SIGKILL what is left of its group after ``grace`` seconds.

        Only the leader gets SIGTERM: a Celery worker shuts down warm and its Spark JVM exits
        with it, whereas a JVM signalled directly would fail the job the worker is finishing.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # The group may outlive its leader (a JVM whose parent exited): kill the rest in any case,
        # and return only once all of it is gone, so a port or a Derby lock is really released.
        _signal_group(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _group_exists(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Supervisor:
    """Starts children with their output in ``log_dir`` and stops them all, newest first."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as log:
            start = log.tell()
            process = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        child = Child(name, process, log_path, start)
        self.children.append(child)
        return child

    def is_running(self, name: str) -> bool:
        return any(c.name == name and c.process.poll() is None for c in self.children)

    def check_alive(self) -> None:
        for child in self.children:
            child.check_alive()

    def stop_all(self, grace: float = 15.0) -> list[str]:
        """Stop every child (newest first); returns their names in the order stopped."""
        stopped = []
        while self.children:
            child = self.children.pop()
            child.stop(grace)
            stopped.append(child.name)
        return stopped


def wait_until(
    ready: Callable[[], bool], *, timeout: float, what: str, child: Child | None = None
) -> None:
    """Poll ``ready`` until it holds; fail early if ``child`` dies, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if child is not None:
            child.check_alive()
        time.sleep(0.2)
    tail = f"; its log ends with:\n{child.log_tail()}" if child is not None else ""
    raise StartupError(f"{what} not ready after {timeout:.0f}s{tail}")


def require_binary(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StartupError(f"{name} is not installed: {hint}")
    return path
