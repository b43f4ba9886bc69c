"""Benchmark the REST API alone: mixed POST/GET requests against uvicorn on loopback.

Starts a private redis-server and ``mds-convert serve`` (one uvicorn process, the real Celery
producer enqueuing into Redis, no worker consuming), then sends ``--requests`` requests at
``--concurrency`` from an asyncio httpx client and prints p50/p99 latency and requests/s as a
markdown table::

    .venv/bin/python bench/api.py --requests 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
BODY = {"source_table": "bench.events", "target": "s3://bench/events", "compression": "zstd:3"}
# Share of each request kind in the mix.
MIX = (("POST /v1/jobs", 0.3), ("GET /v1/jobs/{id}", 0.5), ("GET /v1/jobs", 0.2))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


@contextmanager
def services(workdir: Path):
    """A private redis-server and the API; yields the API's base URL."""
    redis_port, api_port = free_port(), free_port()
    redis = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(redis_port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "APP_API_TOKENS": TOKEN,
        "APP_ALLOWED_TARGETS": "s3://bench",
        # No worker consumes the jobs: lift the per-principal quota and the queue bound, which
        # would otherwise answer most submissions with 429 (that path is measured by the tests).
        "APP_MAX_ACTIVE_JOBS": "1000000",
        "APP_MAX_QUEUE_DEPTH": "1000000",
        "APP_LOG_JSON": "true",
        "DATA_DIR": str(workdir),
    }
    api = None
    try:
        wait_port(redis_port)
        api = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(api_port)],
            cwd=ROOT,
            env=env,
            stderr=(workdir / "api.log").open("wb"),
        )
        wait_port(api_port)
        yield f"http://127.0.0.1:{api_port}", api.pid
    finally:
        for process in (api, redis):
            if process is not None:
                process.terminate()
                process.wait(timeout=10)


async def one(client: httpx.AsyncClient, kind: str, ids: list[str]) -> tuple[str, float, int]:
    started = time.perf_counter()
    try:
        return await _send(client, kind, ids, started)
    except httpx.TransportError:  # counted as an error (status 0), not a crash of the run
        return kind, time.perf_counter() - started, 0


async def _send(
    client: httpx.AsyncClient, kind: str, ids: list[str], started: float
) -> tuple[str, float, int]:
    if kind.startswith("POST"):
        response = await client.post("/v1/jobs", json=BODY)
        if response.status_code == 202:
            ids.append(response.json()["id"])
    elif kind == "GET /v1/jobs/{id}":
        response = await client.get(f"/v1/jobs/{random.choice(ids)}")
    else:
        response = await client.get("/v1/jobs", params={"limit": 20})
    return kind, time.perf_counter() - started, response.status_code


async def load(url: str, requests: int, concurrency: int) -> tuple[dict, float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits) as client:
        ids = [(await client.post("/v1/jobs", json=BODY)).json()["id"]]  # something to GET
        kinds = random.choices([k for k, _ in MIX], weights=[w for _, w in MIX], k=requests)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for kind in kinds:
            queue.put_nowait(kind)
        results: dict[str, list[tuple[float, int]]] = defaultdict(list)

        async def drain() -> None:
            while not queue.empty():
                kind, seconds, status = await one(client, queue.get_nowait(), ids)
                results[kind].append((seconds, status))

        started = time.perf_counter()
        await asyncio.gather(*(drain() for _ in range(concurrency)))
        return results, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else (values[0])
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc), to show where the time goes."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(results: dict, elapsed: float, args: argparse.Namespace, cpu: dict[str, float]) -> str:
    lines = [
        f"API benchmark: {args.requests} requests, concurrency {args.concurrency}, "
        f"1 uvicorn process, Redis on loopback",
        "",
        "| request | count | errors | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    everything: list[float] = []
    for kind, _ in MIX:
        rows = results.get(kind, [])
        latencies = [s * 1000 for s, _ in rows]
        errors = sum(1 for _, status in rows if status >= 400)
        everything += latencies
        if latencies:
            lines.append(
                f"| {kind} | {len(rows)} | {errors} | "
                f"{percentile(latencies, 50):.1f} | {percentile(latencies, 99):.1f} |"
            )
    lines.append(
        f"| **all** | {len(everything)} | | {percentile(everything, 50):.1f} | "
        f"{percentile(everything, 99):.1f} |"
    )
    lines += [
        "",
        f"**{len(everything) / elapsed:.0f} requests/s** ({elapsed:.2f} s wall; CPU: API process "
        f"{cpu['api']:.2f} s = {cpu['api'] / len(everything) * 1000:.2f} ms/request, "
        f"load generator {cpu['client']:.2f} s; {os.cpu_count()} cores)",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed")
    random.seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp, services(Path(tmp)) as (url, pid):
        api_before, client_before = cpu_seconds(pid), time.process_time()
        results, elapsed = asyncio.run(load(url, args.requests, args.concurrency))
        cpu = {"api": cpu_seconds(pid) - api_before, "client": time.process_time() - client_before}
    print(report(results, elapsed, args, cpu))


if __name__ == "__main__":
    main()
