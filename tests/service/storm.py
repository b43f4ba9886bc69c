"""The storm of issue 16: many jobs from several callers over a few shared targets, on several
worker processes, while workers are killed (``kill -9``) and stopped (``SIGTERM``), Redis restarts
and the S3 server answers 503 in bursts. Then the guarantees are checked.

Used by ``tests/service/test_storm.py`` (a small plan, in the suite) and ``bench/storm.py`` (the
full plan). Everything is real: a redis-server, the moto S3 server behind the storage tests' fault
proxy, ``mds-convert serve`` as its own process, and Celery workers (solo pool, Spark local[1]).

Checks (:meth:`Storm.verify`):
- every job ends in a final state;
- each target's ``index.json`` is exactly the output of the last job that reported ``succeeded``
  on it (all its shards under that job's run directory, every sample equal to that job's source),
  and a target with no succeeded job has no ``index.json``;
- after housekeeping (grace 0) no file is left that the index does not reference;
- no job ran twice at the same time, and no two jobs ran on one target at the same time (from the
  workers' ``job.started`` / ``job.run_ended`` log lines; a killed run ends when it was killed);
- the API's p99 latency during the storm (returned; the callers assert the bound).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from tests.conftest import RedisServer, free_port, wait_for_port
from tests.service.fleet import FINAL, PoolWorker, published_files
from tests.service.workers import ROOT
from tests.storage.storage_helpers import Fault, FaultProxy, QuietServer, make_handler

TOKENS = [f"storm-caller-{i}-0123456789" for i in range(8)]


@dataclass(frozen=True)
class Plan:
    """The size and the faults of one storm."""

    workers: int = 3
    jobs: int = 60
    targets: int = 10
    local_targets: int = 2  # the others are s3:// targets behind the fault proxy
    callers: int = 4
    sources: tuple[int, ...] = (3000, 4000, 5000, 6000, 7000, 8000)  # rows; distinct sizes
    kills: int = 3
    sigterms: int = 1
    redis_restarts: int = 1
    s3_bursts: int = 4
    burst_seconds: float = 0.6
    submit_seconds: float = 60.0  # submissions are spread over this long
    # Faults happen within this long after the first job finished (so they meet running jobs).
    faults_seconds: float = 50.0
    shutdown_timeout: float = 15.0  # WORKER_SHUTDOWN_TIMEOUT
    timeout: float = 900.0  # for every job to reach a final state
    housekeeping_interval: float = 5.0  # periodic housekeeping during the storm, grace 0
    seed: int = 16


@dataclass
class Incarnation:
    """One process of one worker slot; ``killed_at`` when it was killed with SIGKILL."""

    worker: PoolWorker
    log: Path
    killed_at: float | None = None  # or when a SIGTERM'd process had exited
    ready: bool = False


@dataclass
class Outcome:
    jobs: dict[str, dict] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    sigterm_exit_seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Storm:
    """Sets up the services, runs the plan, and checks the outcome."""

    def __init__(self, plan: Plan, base: Path, redis: RedisServer, s3_endpoint: str) -> None:
        import boto3

        self.plan, self.base, self.redis, self.s3_endpoint = plan, base, redis, s3_endpoint
        self.rng = random.Random(plan.seed)
        self.prefix = f"storm{uuid.uuid4().hex[:8]}"
        self.queue = f"{self.prefix}-q"
        self.bucket = f"storm-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=self.bucket)
        local_root = base / "datasets"
        local_root.mkdir(parents=True, exist_ok=True)
        self.targets = [
            str(local_root / f"t{i}") if i < plan.local_targets else f"s3://{self.bucket}/t{i}"
            for i in range(plan.targets)
        ]
        self.sources = self._write_sources()
        self.proxy = FaultProxy(upstream=s3_endpoint)
        self.proxy_server = QuietServer(("127.0.0.1", 0), make_handler(self.proxy))
        self.proxy.url = f"http://127.0.0.1:{self.proxy_server.server_address[1]}"
        self.slots: list[list[Incarnation]] = []
        self.api_url = ""
        self.api_process: subprocess.Popen[bytes] | None = None
        self.outcome = Outcome()
        self._lock = threading.Lock()
        self._started = 0.0
        self.errors: list[BaseException] = []

    # -- setup --------------------------------------------------------------------------------

    def _write_sources(self) -> dict[str, int]:
        from tests.service.test_end_to_end import write_source

        sources = {}
        for rows in self.plan.sources:
            sources[write_source(self.base / "sources" / f"s{rows}", rows, files=2)] = rows
        return sources

    def _shared_env(self) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis.url,
            "REDIS_PREFIX": self.prefix,
            "CELERY_QUEUE": self.queue,
            "APP_API_TOKENS": ",".join(TOKENS[: self.plan.callers]),
            "APP_ALLOWED_TARGETS": ",".join([f"s3://{self.bucket}", str(self.base / "datasets")]),
            "APP_ALLOWED_SOURCE_PATHS": str(self.base / "sources"),
        }

    def worker_env(self, slot: int) -> dict[str, str]:
        return {
            **self._shared_env(),
            "S3_ENDPOINT_URL": self.proxy.url,  # the workers' S3 traffic crosses the fault proxy
            "DATA_DIR": str(self.base / f"data-w{slot}"),
            "SPARK_MASTER": "local[1]",
            "SPARK_CONF": json.dumps(
                {"spark.sql.shuffle.partitions": "2", "spark.ui.showConsoleProgress": "false"}
            ),
            "WORKER_PROGRESS_INTERVAL": "0.5",
            "WORKER_CANCEL_POLL_INTERVAL": "0.2",
            "WORKER_LOG_JSON": "true",
            "WORKER_LEASE_TTL": "4",
            "WORKER_TARGET_WAIT_INTERVAL": "0.5",
            "WORKER_SHUTDOWN_TIMEOUT": str(self.plan.shutdown_timeout),
            # Spark starts on the first job (no warm-up conversion), with a JIT that starts
            # cheaply: several JVMs start at once on a small machine here.
            "WORKER_WARM_START": "false",
            "JAVA_TOOL_OPTIONS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
            "WORKER_RESTORE_INTERVAL": "2",
            "CELERY_VISIBILITY_TIMEOUT": "30",
            "WORKER_HOUSEKEEPING_INTERVAL": str(self.plan.housekeeping_interval),
            "WORKER_HOUSEKEEPING_GRACE": "0",
        }

    def _start_worker(self, slot: int) -> Incarnation:
        generation = len(self.slots[slot])
        log = self.base / f"w{slot}-{generation}.log"
        worker = PoolWorker(self.worker_env(slot), log, f"w{slot}g{generation}")
        incarnation = Incarnation(worker, log)
        self.slots[slot].append(incarnation)
        worker.start()
        incarnation.ready = True
        return incarnation

    def _start_api(self) -> None:
        port = free_port()
        env = {
            **os.environ, **self._shared_env(), "APP_OUTBOX_DELAY": "1", "APP_OUTBOX_INTERVAL": "1",
            "APP_LOG_JSON": "true",
        }
        self.api_process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=(self.base / "api.log").open("ab"), stderr=subprocess.STDOUT,
        )
        wait_for_port(port, timeout=60)
        self.api_url = f"http://127.0.0.1:{port}"

    # -- the storm ----------------------------------------------------------------------------

    def run(self) -> Outcome:
        threading.Thread(
            target=self.proxy_server.serve_forever, args=(0.05,), daemon=True
        ).start()
        self._start_api()
        self.slots = [[] for _ in range(self.plan.workers)]
        starters = [
            threading.Thread(target=self._start_worker, args=(slot,))
            for slot in range(self.plan.workers)
        ]
        for thread in starters:
            thread.start()
        for thread in starters:
            thread.join()
        self._started = time.monotonic()
        plan = self._job_plan()
        callers = [
            threading.Thread(
                target=self._guarded(self._caller), args=(i, plan[i]), name=f"caller-{i}"
            )
            for i in range(self.plan.callers)
        ]
        chaos = threading.Thread(target=self._guarded(self._chaos), name="chaos")
        for thread in [*callers, chaos]:
            thread.start()
        for thread in [*callers, chaos]:
            thread.join()
        self.outcome.wall_seconds = time.monotonic() - self._started
        if self.errors:
            raise self.errors[0]
        return self.outcome

    def _guarded(self, fn):
        """A thread body whose exception is kept and raised by :meth:`run`."""

        def body(*args):
            try:
                fn(*args)
            except BaseException as exc:
                self.errors.append(exc)
                raise

        return body

    def _job_plan(self) -> list[list[dict]]:
        """Jobs per caller: targets drawn unevenly (so several are shared hard), both modes."""
        weights = [3 if i < 3 else 1 for i in range(len(self.targets))]
        per_caller: list[list[dict]] = [[] for _ in range(self.plan.callers)]
        sources = list(self.sources)
        for j in range(self.plan.jobs):
            body = {
                "source_table": self.rng.choice(sources),
                "target": self.rng.choices(self.targets, weights)[0],
                "mode": "overwrite" if self.rng.random() < 0.6 else "error",
                "compression": "zstd:1",
                "partitions": self.rng.choice([1, 2, 3]),
            }
            per_caller[j % self.plan.callers].append(body)
        return per_caller

    def _request(self, client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response:
        started = time.monotonic()
        try:
            response = client.request(method, path, **kwargs)
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                self.outcome.latencies.append(elapsed)
        with self._lock:
            self.outcome.statuses[response.status_code] = (
                self.outcome.statuses.get(response.status_code, 0) + 1
            )
        return response

    def _caller(self, index: int, bodies: list[dict]) -> None:
        """Submit (retrying 429/503 with the same idempotency key), then poll until all final."""
        headers = {"Authorization": f"Bearer {TOKENS[index]}"}
        gap = self.plan.submit_seconds / max(len(bodies), 1)
        ids: list[str] = []
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=30) as client:
            for n, body in enumerate(bodies):
                key = f"c{index}-j{n}"
                while True:
                    try:
                        response = self._request(
                            client, "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}
                        )
                    except httpx.HTTPError:
                        time.sleep(0.5)
                        continue
                    if response.status_code in (200, 202):
                        ids.append(response.json()["id"])
                        break
                    assert response.status_code in (429, 503), response.text
                    time.sleep(min(float(response.headers.get("Retry-After", 1)), 2.0))
                time.sleep(gap * random.uniform(0.5, 1.5))
            self._poll(client, ids)

    def _poll(self, client: httpx.Client, ids: list[str]) -> None:
        deadline = time.monotonic() + self.plan.timeout
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for job_id in sorted(pending):
                try:
                    response = self._request(client, "GET", f"/v1/jobs/{job_id}")
                except httpx.HTTPError:
                    continue
                if response.status_code == 200 and response.json()["state"] in FINAL:
                    pending.discard(job_id)
                    with self._lock:
                        self.outcome.jobs[job_id] = response.json()
            try:
                self._request(client, "GET", "/v1/jobs", params={"limit": 20})
            except httpx.HTTPError:
                pass  # counted in the latencies; Redis may be restarting
            time.sleep(0.5)
        assert not pending, f"jobs never final: {sorted(pending)}"

    def _chaos(self) -> None:
        plan = self.plan
        events = (
            [("kill", None)] * plan.kills + [("sigterm", None)] * plan.sigterms
            + [("redis", None)] * plan.redis_restarts + [("s3", None)] * plan.s3_bursts
        )
        times = sorted(self.rng.uniform(0, plan.faults_seconds) for _ in events)
        self.rng.shuffle(events)
        restarts: list[threading.Thread] = []
        deadline = time.monotonic() + plan.timeout
        while not self._any_finished() and time.monotonic() < deadline:
            time.sleep(0.5)
        origin = time.monotonic()
        for at, (kind, _) in zip(times, events):
            time.sleep(max(0.0, at - (time.monotonic() - origin)))
            stamp = f"{time.monotonic() - self._started:6.1f}s {kind}"
            if kind == "kill":
                slot = self._alive_slot()
                if slot is None:
                    continue
                incarnation = self.slots[slot][-1]
                incarnation.killed_at = time.time()
                incarnation.worker.kill()
                restarts.append(self._restart(slot))
                stamp += f" w{slot}"
            elif kind == "sigterm":
                slot = self._alive_slot()
                if slot is None:
                    continue
                restarts.append(self._restart(slot, sigterm=True))
                stamp += f" w{slot}"
            elif kind == "redis":
                self.redis.stop()
                time.sleep(2.0)
                self.redis.start()
            else:
                self.proxy.always = Fault("status", 503)
                time.sleep(plan.burst_seconds)
                self.proxy.always = None
            self.outcome.faults.append(stamp)
        for thread in restarts:
            thread.join()

    def _any_finished(self) -> bool:
        """A first job has finished somewhere (Spark is up, work is flowing)."""
        return any(
            b'"job.finished"' in incarnation.log.read_bytes()
            for slot in self.slots for incarnation in slot if incarnation.log.exists()
        )

    def _alive_slot(self) -> int | None:
        """A worker to hit: one running a job if there is one (the fault meets work)."""
        alive = [i for i, s in enumerate(self.slots) if s and s[-1].ready and s[-1].worker.alive]
        busy = [i for i in alive if _open_runs(self.slots[i][-1])]
        if not busy:  # wait a little for work to start somewhere
            deadline = time.monotonic() + 10
            while not busy and time.monotonic() < deadline:
                time.sleep(0.2)
                busy = [i for i in alive if _open_runs(self.slots[i][-1])]
        candidates = busy or alive
        return self.rng.choice(candidates) if candidates else None

    def _restart(self, slot: int, *, sigterm: bool = False) -> threading.Thread:
        def run() -> None:
            if sigterm:
                incarnation = self.slots[slot][-1]
                asked = time.monotonic()
                incarnation.worker.terminate()
                code = incarnation.worker.wait_exit(timeout=60)
                incarnation.killed_at = time.time()  # any run it had has ended by now
                assert code is not None, f"w{slot} ignored SIGTERM"
                self.outcome.sigterm_exit_seconds.append(time.monotonic() - asked)
            self._start_worker(slot)

        thread = threading.Thread(target=self._guarded(run), name=f"restart-{slot}")
        thread.start()
        return thread

    def stop(self) -> None:
        for slot in self.slots:
            if slot:
                slot[-1].worker.stop()
        if self.api_process is not None:
            self.api_process.terminate()
            self.api_process.wait(timeout=20)
        self.proxy_server.shutdown()
        self.proxy_server.server_close()

    # -- the checks ---------------------------------------------------------------------------

    def store(self):
        from worker.jobs import RedisJobStore

        return RedisJobStore.from_url(self.redis.url, prefix=self.prefix)

    def verify(self, read_dir: Path) -> dict[str, object]:
        """Every check of the module docstring; returns a summary for printing."""
        from mdsloader.storage import open_storage
        from tests.service.test_end_to_end import assert_same_rows, read_dataset
        from worker.housekeeping import Housekeeper
        from worker.target_lease import normalise_target

        store = self.store()
        records = [store.get(job_id) for job_id in self.outcome.jobs]
        assert len(records) == self.plan.jobs
        assert all(r.state.value in FINAL for r in records)
        by_target: dict[str, list] = defaultdict(list)
        for record in records:
            by_target[normalise_target(record.request.target)].append(record)
        readbacks = 0
        for target in self.targets:
            storage = open_storage(target)
            succeeded = [
                r for r in by_target[normalise_target(target)] if r.state.value == "succeeded"
            ]
            if not succeeded:
                assert not storage.exists("index.json"), f"{target}: index without a success"
                continue
            last = max(succeeded, key=lambda r: r.finished_at)
            index = json.loads(storage.read_bytes("index.json"))
            shards = [(s["zip_data"] or s["raw_data"])["basename"] for s in index["shards"]]
            assert all(s.startswith(f"{last.id}/") for s in shards), (target, last.id, shards)
            rows = self.sources[last.request.source_table]
            assert last.result is not None and last.result.samples == rows
            assert_same_rows(read_dataset(target, read_dir / f"r{readbacks}"), rows)
            readbacks += 1
        report = Housekeeper(store, grace=0).run(self.targets)
        for _ in range(20):  # a worker's periodic round may hold a target's lease for a moment
            if not report.skipped:
                break
            time.sleep(0.5)
            report = Housekeeper(store, grace=0).run(self.targets)
        assert not report.skipped, report.skipped
        for target in self.targets:
            storage = open_storage(target)
            names = set(storage.list(""))
            internal = {n for n in names if n.startswith("_mds_convert/")}
            expected = published_files(storage) if storage.exists("index.json") else set()
            assert names - internal == expected, f"{target}: {sorted(names - internal - expected)}"
        overlaps = self._overlaps(records)
        assert not overlaps, overlaps
        metrics = httpx.get(f"{self.api_url}/metrics", timeout=10).text if self.api_url else ""
        return {
            "jobs": len(records),
            "succeeded": sum(r.state.value == "succeeded" for r in records),
            "failed": sum(r.state.value == "failed" for r in records),
            "errors": sorted({r.error.code for r in records if r.error}),
            "redelivered_jobs": sum(r.attempts > 1 for r in records),
            "targets_read_back": readbacks,
            "housekeeping_removed": len(report.removed),
            "metrics": _metric_lines(metrics),
        }

    def _overlaps(self, records) -> list[str]:
        """Run intervals from the workers' logs; a killed run ends when it was killed."""
        from worker.target_lease import normalise_target

        target_of = {r.id: normalise_target(r.request.target) for r in records}
        runs: list[tuple[float, float, str, str]] = []  # start, end, job, incarnation
        for slot in self.slots:
            for incarnation in slot:
                runs += [(a, b or a, j, n) for a, b, j, n in _runs_in_log(incarnation)]
        problems = []
        ordered = sorted(runs)
        for i, (_start, end, job, who) in enumerate(ordered):
            for start2, _end2, job2, who2 in ordered[i + 1 :]:
                if start2 >= end:
                    break
                if job2 == job:
                    problems.append(f"job {job} ran on {who} and {who2} at once")
                elif target_of.get(job2) == target_of.get(job) and job in target_of:
                    problems.append(f"jobs {job} and {job2} wrote {target_of[job]} at once")
        return problems


def _open_runs(incarnation: Incarnation) -> list[str]:
    """Jobs the incarnation has started and not yet ended."""
    return [job for _, end, job, _ in _runs_in_log(incarnation, until=None) if end is None]


def _runs_in_log(
    incarnation: Incarnation, until: float | None = 0.0
) -> list[tuple[float, float | None, str, str]]:
    """(start, end, job, log) of each run; an open run ends at ``until`` (default: when the
    incarnation was killed, or now)."""
    open_runs: dict[str, float] = {}
    runs: list[tuple[float, float | None, str, str]] = []
    name = incarnation.log.name
    for line in incarnation.log.read_bytes().splitlines():
        if not line.startswith(b"{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        event, job = entry.get("event"), entry.get("job_id")
        if event not in ("job.started", "job.run_ended") or not job:
            continue
        at = datetime.fromisoformat(entry["time"]).timestamp()
        if event == "job.started":
            open_runs[job] = at
        elif job in open_runs:
            runs.append((open_runs.pop(job), at, job, name))
    end = (incarnation.killed_at or time.time()) if until is not None else None
    runs += [(start, end, job, name) for job, start in open_runs.items()]
    return runs


def _metric_lines(text: str) -> list[str]:
    wanted = ("lease_waits", "redeliveries", "handbacks", "running_jobs", "queue_depth")
    return [
        line for line in text.splitlines()
        if line.startswith("mds_convert_") and any(w in line for w in wanted)
    ]
