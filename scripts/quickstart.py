"""The quick start: Redis, the API and a worker on this machine, a demo table converted over REST
and streamed back with the loader. With --serve, the service keeps running for your own tables.

Run it through ``scripts/quickstart`` (which installs what is missing first). Everything it starts
is stopped when it ends, fails or is interrupted. Exit status: 0 when the dataset was read back
completely (or ``--serve`` was stopped by the user), 1 when the job or the read-back failed,
2 when a service could not start, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quickstart_lib.console import Console
from quickstart_lib.demo import DemoTable, seed_demo_table
from quickstart_lib.processes import (
    Child,
    StartupError,
    Supervisor,
    free_port,
    is_port_free,
    require_binary,
    wait_until,
)
from quickstart_lib.readback import read_back
from quickstart_lib.redis_local import ensure_redis
from quickstart_lib.rest import FINAL_STATES, ApiError, JobClient, follow

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROWS = 1_000_000
SERVE_PORT = 8000
DATASET_NAME = "demo-events"


@dataclass
class Session:
    """What this run started and where it is, so that cleanup and messages can find it."""

    args: argparse.Namespace
    data_dir: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    supervisor: Supervisor = field(init=False)
    redis_url: str = ""
    api_url: str = ""
    client: JobClient | None = None
    running_job: str | None = None

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(self.data_dir / "logs")

    def service_env(self) -> dict[str, str]:
        """The environment of the API and the worker: one data dir, one Redis, one queue."""
        python = sys.executable
        env = dict(os.environ)
        if not self.args.serve and "SPARK_CONF" not in env:
            # Progress reaches the job as each Spark task ends: splitting the demo table's
            # files into ~16 MB tasks shows it moving, without the shuffle of a repartition.
            env["SPARK_CONF"] = json.dumps({"spark.sql.files.maxPartitionBytes": str(16 << 20)})
        env.update(
            DATA_DIR=str(self.data_dir), REDIS_URL=self.redis_url,
            REDIS_PREFIX=env.get("REDIS_PREFIX", "mdsconvert-quickstart"),
            CELERY_QUEUE=env.get("CELERY_QUEUE", "quickstart"),
            APP_API_TOKENS=self.token, APP_LOG_JSON="false", WORKER_LOG_JSON="false",
            # Path-based sources need an allowed root: the quick start allows its demo folder.
            APP_ALLOWED_SOURCE_PATHS=env.get(
                "APP_ALLOWED_SOURCE_PATHS", str((self.data_dir / "demo").resolve())
            ),
            SPARK_LOCAL_IP=env.get("SPARK_LOCAL_IP", "127.0.0.1"),
            PYSPARK_PYTHON=python, PYSPARK_DRIVER_PYTHON=python,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )  # fmt: skip
        return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    description = __doc__.split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="scripts/quickstart", description=description)
    parser.add_argument(
        "--rows", type=int, default=DEFAULT_ROWS, help="demo table rows (default: 1,000,000)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / ".data",
        help="metastore, Redis data, datasets, logs (default: .data)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="keep the API, worker and Redis running for your own tables",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"API port (default: a free one; {SERVE_PORT} with --serve if free)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="use this Redis if it answers, else start a private one",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="repartition to N before writing (default: Spark's file splits)",
    )
    parser.add_argument("--compression", default="zstd", help="MDS compression, or 'none'")
    parser.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="skip scripts/bootstrap (read by the shell wrapper)",
    )
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    return args


def api_port(args: argparse.Namespace) -> int:
    if args.port:
        if not is_port_free(args.port):
            raise StartupError(f"port {args.port} is already in use")
        return int(args.port)
    if args.serve and is_port_free(SERVE_PORT):
        return SERVE_PORT
    return free_port()


def start_api(session: Session, console: Console) -> None:
    port = api_port(session.args)
    session.api_url = f"http://127.0.0.1:{port}"
    child = session.supervisor.spawn("api", [
        sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
    ], session.service_env(), cwd=ROOT)  # fmt: skip
    session.client = JobClient(session.api_url, session.token)
    wait_until(session.client.is_ready, timeout=90, what="the API", child=child)
    console.info(f"API at {session.api_url}  (log: {child.log_path})")
    console.info(f"API token: {session.token}")


def start_worker(session: Session, console: Console) -> Child:
    require_binary("java", "Spark needs a Java runtime (apt-get install openjdk-17-jre-headless)")
    child = session.supervisor.spawn("worker", [
        sys.executable, "-m", "app.cli", "worker", "--pool", "solo", "--concurrency", "1",
        "--loglevel", "INFO",
    ], session.service_env(), cwd=ROOT)  # fmt: skip
    # Spark itself starts lazily with the first job; the worker is ready once Celery consumes.
    wait_until(
        lambda: b"ready." in child.output(),
        timeout=120,
        what="the Celery worker",
        child=child,
    )
    console.info(
        f"Celery worker pid {child.process.pid}, Spark local mode, "
        f"metastore under {session.data_dir}  (log: {child.log_path})"
    )
    return child


def job_body(session: Session, table: DemoTable) -> dict[str, Any]:
    args = session.args
    body: dict[str, Any] = {
        "source_table": table.source_table,
        "target": str(session.data_dir / "datasets" / DATASET_NAME),
        "compression": None if args.compression == "none" else args.compression,
        "mode": "overwrite",  # a rerun replaces the previous demo dataset atomically
    }
    # By default Spark's own file splits are the partitions: a repartition would shuffle the
    # whole table first, which costs more than it spreads on one machine.
    if args.partitions:
        body["partitions"] = args.partitions
    return body


def convert(session: Session, console: Console, table: DemoTable) -> dict[str, Any]:
    assert session.client is not None
    job = session.client.submit(job_body(session, table))
    session.running_job = job["id"]
    console.info(f"job {job['id']} submitted: {table.source_table} -> {job['request']['target']}")
    done = follow(
        session.client, job["id"], show=console.live, check=session.supervisor.check_alive,
        total_rows=table.rows, every_change=console.tty,
    )  # fmt: skip
    console.end_live()
    session.running_job = None
    if done["state"] != "succeeded":
        raise JobFailed(f"job {done['id']} ended {done['state']}: {json.dumps(done['error'])}")
    result = done["result"]
    console.info(
        f"{result['samples']:,} samples in {result['shards']} shards, "
        f"{result['zip_bytes'] / 1e6:.1f} MB compressed ({result['raw_bytes'] / 1e6:.1f} "
        f"MB raw); columns {result['columns']}"
    )
    console.info(f"index: {result['index_url']}")
    return done


class JobFailed(RuntimeError):
    """The conversion job did not succeed."""


def stream_back(session: Session, console: Console, table: DemoTable, remote: str) -> bool:
    workers = session.args.loader_workers
    report = read_back(
        remote, session.data_dir / "cache" / DATASET_NAME, expected=table.rows,
        workers=workers, show=console.live if console.tty else None,
    )  # fmt: skip
    console.end_live()
    console.info(
        f"StreamingDataLoader ({workers} workers, shuffle on): {report.samples:,} "
        f"samples in {report.seconds:.1f}s = {report.samples_per_second:,.0f} samples/s"
    )
    console.info(
        f"check: missing {report.missing}, duplicated {report.duplicated}, "
        f"wrong values {report.wrong_values}, shuffled {report.shuffled}"
    )
    return report.complete


def serve_forever(session: Session, table: DemoTable) -> None:
    target_root = session.data_dir / "datasets"
    target = str(target_root / "my-events")
    body = json.dumps({"source_table": table.source_table, "target": target})
    auth = f"Authorization: Bearer {session.token}"
    print(f"""
The service is running. Press Ctrl-C to stop it.
  API          {session.api_url}   (OpenAPI docs: {session.api_url}/docs)
  console      {session.api_url}/ui   (sign in with the API token)
  token        {session.token}
  targets      local directories under {target_root}
  demo table   {table.source_table}
Submit a job and follow it:
  curl -s -X POST {session.api_url}/v1/jobs -H {shlex.quote(auth)} \\
       -H 'Content-Type: application/json' -d {shlex.quote(body)}
  curl -s {session.api_url}/v1/jobs/<job id> -H {shlex.quote(auth)}
or with the CLI:
  MDS_CONVERT_URL={session.api_url} MDS_CONVERT_TOKEN={session.token} \\
    .venv/bin/mds-convert submit {shlex.quote(table.source_table)} {target_root}/cli-events --wait
Your own tables: path-based ones (parquet.`/path`, orc.`...`, json.`...`, csv.`...`) under a folder
listed in APP_ALLOWED_SOURCE_PATHS (set it before starting; the demo folder is allowed);
catalog tables live in the worker's embedded Derby metastore, which only one JVM may open.""",
          flush=True)  # fmt: skip
    while True:
        session.supervisor.check_alive()
        time.sleep(1.0)


def run(session: Session, console: Console) -> int:
    args = session.args
    with console.step("Redis"):
        session.redis_url, started = ensure_redis(
            args.redis_url, session.data_dir / "redis", session.supervisor
        )
        console.info(
            ("started a private redis-server at " if started else "using ") + session.redis_url
        )
    with console.step(f"Demo table ({args.rows:,} rows: text, embedding[64], label)"):
        table, written = seed_demo_table(session.data_dir / "demo" / "events", args.rows)
        console.info(("wrote " if written else "reusing ") + table.source_table)
    with console.step("API (uvicorn)"):
        start_api(session, console)
    with console.step("Worker (Celery + Spark)"):
        start_worker(session, console)
    if args.serve:
        serve_forever(session, table)
    with console.step("Convert over REST (Spark -> MDS shards)"):
        done = convert(session, console, table)
    with console.step("Stream it back with the loader"):
        complete = stream_back(session, console, table, done["request"]["target"])
    if not complete:
        print("FAILED: the dataset did not read back completely", flush=True)
        return 1
    print(
        f"OK: {table.rows:,} rows converted and read back in {console.elapsed():.1f}s", flush=True
    )
    return 0


def cancel_job(client: JobClient, job_id: str, timeout: float = 20.0) -> None:
    """Ask the worker to cancel and give it a moment to clean up what the job wrote."""
    print(f"cancelling job {job_id} ...", file=sys.stderr, flush=True)
    try:
        client.cancel(job_id)
        deadline = time.monotonic() + timeout
        while client.get(job_id)["state"] not in FINAL_STATES and time.monotonic() < deadline:
            time.sleep(0.5)
    except Exception:  # best effort: the API or Redis may be what failed
        pass


def cleanup(session: Session) -> None:
    """Cancel an unfinished job, then stop every started process, newest first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut cleanup short
    if session.client is not None:
        if session.running_job is not None:
            # Without a live worker nobody would act on the cancel: record it and move on.
            wait = 20.0 if session.supervisor.is_running("worker") else 0.0
            cancel_job(session.client, session.running_job, timeout=wait)
        session.client.close()
    stopped = session.supervisor.stop_all()
    if stopped:
        print(f"stopped: {', '.join(stopped)}  (logs in {session.data_dir / 'logs'})", flush=True)


def _exit_on_signal(signum: int, _frame: object) -> None:
    print(f"\n{signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C must reach us in any case.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    session = Session(args, data_dir)
    console = Console(total=4 if args.serve else 6)
    try:
        return run(session, console)
    except StartupError as exc:
        print(f"\nERROR: {exc}", file=sys.stderr, flush=True)
        return 2
    except (JobFailed, ApiError) as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr, flush=True)
        return 0 if args.serve else 130
    finally:
        cleanup(session)


if __name__ == "__main__":
    sys.exit(main())
