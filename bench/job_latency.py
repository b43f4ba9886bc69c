"""Benchmark: end-to-end job latency on a fresh worker (submit -> succeeded), first and second.

Starts a private redis-server, the API (``mds-convert serve``) and one fresh worker
(``mds-convert worker --pool solo``, Spark ``local[2]``), seeds the quick start's demo table
(``--rows`` rows of text, 64-float embeddings and labels as a path-based Parquet table), then:

* waits until the worker says its Spark session is ready (``worker-ping``'s Redis state) and
  reports how long after the worker process started that was;
* submits the conversion of the demo table over REST and waits for ``succeeded``, twice (two
  targets), printing each job's latency and the time the job spent running;
* with ``--cold``, submits the first job right when the worker process starts instead (what a
  user sees when a job meets a worker that is still starting).

    python bench/job_latency.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from api import free_port, wait_port  # bench/api.py  # noqa: E402

TOKEN = "bench-token"
PREFIX = "benchlat"


@contextmanager
def stack(workdir: Path, master: str):
    """Redis, the API and a worker; yields (API URL, env, worker start time)."""
    redis_port, api_port = free_port(), free_port()
    processes = [subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
         "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL,
    )]
    env = {
        **os.environ, "PYTHONPATH": str(ROOT),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "REDIS_PREFIX": PREFIX,
        "APP_API_TOKENS": TOKEN, "APP_ALLOWED_TARGETS": str(workdir / "out"),
        "APP_ALLOWED_SOURCE_PATHS": str(workdir), "DATA_DIR": str(workdir / "data"),
        "SPARK_MASTER": master, "APP_LOG_JSON": "false", "WORKER_LOG_JSON": "false",
        "WORKER_PROGRESS_INTERVAL": "0.5",
    }
    (workdir / "out").mkdir()
    log = open(workdir / "services.log", "wb")  # noqa: SIM115 - closed below
    try:
        wait_port(redis_port)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(api_port)], env=env,
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        ))
        wait_port(api_port)
        started = time.monotonic()
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--pool", "solo"], env=env,
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        ))
        yield f"http://127.0.0.1:{api_port}", env, started
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()


def wait_spark_ready(env: dict[str, str], timeout: float = 600) -> None:
    from worker.readiness import read_states

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            states = read_states(env["REDIS_URL"], PREFIX)
        except Exception:  # Redis still starting
            states = {}
        if states and all(s["state"] == "ready" for s in states.values()):
            return
        if any(s["state"] == "failed" for s in states.values()):
            raise RuntimeError(f"the worker's Spark failed to start: {states}")
        time.sleep(0.2)
    raise TimeoutError("the worker's Spark did not become ready")


def run_job(client: httpx.Client, source: str, target: str) -> dict[str, float]:
    start = time.monotonic()
    job = client.post("/v1/jobs", json={"source_table": source, "target": target}).json()
    while True:
        record = client.get(f"/v1/jobs/{job['id']}").json()
        if record["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    latency = time.monotonic() - start
    if record["state"] != "succeeded":
        raise RuntimeError(f"job failed: {record.get('error')}")
    running = _seconds(record["started_at"], record["finished_at"])
    return {"latency": latency, "running": running,
            "read_path": record["result"].get("read_path") or "?"}


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--cold", action="store_true",
                        help="submit the first job as soon as the worker process starts")
    args = parser.parse_args()
    from quickstart_lib.demo import seed_demo_table

    workdir = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    try:
        table, _ = seed_demo_table(workdir / "demo", args.rows)
        with stack(workdir, args.master) as (url, env, started), httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as client:
            ready_after = None
            if not args.cold:
                wait_spark_ready(env)
                ready_after = time.monotonic() - started
            jobs = [run_job(client, table.source_table, str(workdir / "out" / f"ds{i}"))
                    for i in range(2)]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{args.rows:,}-row demo table, fresh worker (--pool solo, {args.master})"
          f"{', first job submitted at worker start' if args.cold else ''}\n")
    if ready_after is not None:
        print(f"worker process start -> Spark ready: {ready_after:.1f} s\n")
    print("| job | submit -> succeeded s | running s | read path |")
    print("|---|---:|---:|---|")
    for name, job in zip(("first", "second"), jobs, strict=True):
        print(f"| {name} | {job['latency']:.1f} | {job['running']:.1f} | {job['read_path']} |")
    print(f"\nfirst / second: {jobs[0]['latency'] / jobs[1]['latency']:.2f}x")


if __name__ == "__main__":
    main()
