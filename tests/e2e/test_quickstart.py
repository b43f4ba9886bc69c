"""``scripts/quickstart`` as a user runs it: the whole demo, and ``--serve`` until Ctrl-C.

The command runs from this checkout with ``--no-install`` (the environment is already built) and
``--data-dir`` in a scratch directory, so it never touches the repository's ``.data``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, require

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUICKSTART = ROOT / "scripts" / "quickstart"


def quickstart_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CELERY_QUEUE", "REDIS_PREFIX"}}
    return {**env, "REDIS_URL": redis_url}


def is_listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def port_in(output: str, pattern: str) -> int:
    match = re.search(pattern, output)
    assert match, f"{pattern!r} not in output:\n{output}"
    return int(match.group(1))


@pytest.fixture
def prerequisites() -> None:
    require(shutil.which("java") is not None, "java is not installed (Spark needs it)")
    require(shutil.which("curl") is not None, "curl is not installed")
    require(shutil.which("redis-server") is not None, "redis-server is not installed")


def test_quickstart_converts_the_demo_table_and_reads_it_back(prerequisites, scratch) -> None:
    # Nothing answers at this URL, so the quick start must start (and stop) its own Redis.
    env = quickstart_env(f"redis://127.0.0.1:{free_port()}/0")
    done = subprocess.run(
        ["bash", str(QUICKSTART), "--no-install", "--rows", "2000", "--data-dir", str(scratch)],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    output = done.stdout + done.stderr
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in (scratch / "logs").glob("*"))
    assert done.returncode == 0, f"{output}\n{logs}"
    assert "OK: 2,000 rows converted and read back" in output
    assert "missing 0, duplicated 0, wrong values 0, shuffled True" in output
    assert re.search(r"\d[\d,]* samples/s", output)

    index = json.loads((scratch / "datasets" / "demo-events" / "index.json").read_text())
    assert sum(shard["samples"] for shard in index["shards"]) == 2000
    assert (scratch / "redis" / "appendonlydir").is_dir(), "Redis data belongs in the data dir"
    assert not (scratch / "cache" / "demo-events").exists(), "the read-back cache is removed"

    # Everything it started is gone: Redis, the API, the worker and its JVM.
    assert not is_listening(port_in(output, r"redis-server at redis://127\.0\.0\.1:(\d+)"))
    assert not is_listening(port_in(output, r"API at http://127\.0\.0\.1:(\d+)"))
    assert group_is_gone(port_in(output, r"Celery worker pid (\d+)"))
    assert "stopped: worker, api, redis" in output


class LineReader:
    """Collects a child's stdout on a thread, so a test can wait for a line with a deadline.

    (``select`` on the pipe would miss lines already pulled into the text wrapper's buffer.)
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(process,), daemon=True)
        self.thread.start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def until(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if marker in line:
                return self.text
        raise AssertionError(f"{marker!r} never appeared:\n{self.text}")

    def rest(self, timeout: float = 30) -> str:
        """Everything up to the end of the output."""
        self.thread.join(timeout)
        while not self.lines.empty():
            line = self.lines.get()
            if line is not None:
                self.seen.append(line)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.seen)


def test_quickstart_serve_runs_the_service_until_interrupted(
    prerequisites, redis_server, scratch: Path
) -> None:
    port = free_port()
    process = subprocess.Popen(
        ["bash", str(QUICKSTART), "--no-install", "--serve", "--rows", "500", "--port",
         str(port), "--data-dir", str(scratch)],
        env=quickstart_env(redis_server.url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    reader = LineReader(process)
    try:
        output = reader.until("Press Ctrl-C to stop", timeout=120)
        output = reader.until("catalog tables live", timeout=10)
        token = re.search(r"^\s*token\s+(\S+)", output, re.MULTILINE).group(1)
        assert f"using {redis_server.url}" in output  # a reachable Redis is used, not replaced
        worker_pgid = port_in(output, r"Celery worker pid (\d+)")

        # The printed curl example, run as a user would paste it, submits a job that succeeds.
        submitted = subprocess.run(
            ["bash", "-c", printed_submit_command(output)], capture_output=True, text=True,
            timeout=30, check=True,
        )  # fmt: skip
        job_id = json.loads(submitted.stdout)["id"]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get(f"/v1/jobs/{job_id}").status_code == 401  # the token is needed
            client.headers["Authorization"] = f"Bearer {token}"
            job = wait_for_final(client, job_id)
        assert job["state"] == "succeeded", job
        assert job["result"]["samples"] == 500
        assert job["request"]["target"] == str(scratch.resolve() / "datasets" / "my-events")

        process.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    stopped = reader.rest().split("stopped:")[-1]
    assert stopped.startswith(" worker, api") and "redis" not in stopped, reader.text
    assert not is_listening(port)
    assert group_is_gone(worker_pgid)
    assert is_listening(redis_server.port), "the quick start stopped a Redis it did not start"


def printed_submit_command(output: str) -> str:
    """The ``curl -X POST`` example of the --serve banner, continuation lines included."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "curl -s -X POST" in line)
    end = start
    while lines[end].rstrip().endswith("\\"):
        end += 1
    return "\n".join(lines[start : end + 1])


def wait_for_final(client: httpx.Client, job_id: str, timeout: float = 150) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert "state" in job, job  # a problem body: say which
        if job["state"] in {"succeeded", "failed", "cancelled"}:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_quickstart_failure_stops_what_it_started(prerequisites, scratch: Path) -> None:
    # The API port is taken, so the run fails after it has started its own Redis.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            ["bash", str(QUICKSTART), "--no-install", "--rows", "10", "--port", str(port),
             "--data-dir", str(scratch)],
            env=quickstart_env(f"redis://127.0.0.1:{free_port()}/0"), capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"port {port} is already in use" in done.stderr
    assert "stopped: redis" in done.stdout
    assert not is_listening(port_in(done.stdout, r"redis-server at redis://127\.0\.0\.1:(\d+)"))
