"""The full storm of issue 16: 3 worker processes, 60 jobs from 4 callers over 10 targets (some
shared hard, both modes), 3 ``kill -9`` of a random worker, a ``SIGTERM`` to another, a Redis
restart and S3 503 bursts (the storage tests' fault proxy in front of the moto server), then every
check of ``tests/service/storm.py``; prints a markdown table with the API's p50/p99::

    .venv/bin/python bench/storm.py            # the full storm
    .venv/bin/python bench/storm.py --jobs 20 --targets 5 --kills 1

Starts its own redis-server and moto server on loopback (nothing else is needed but Java).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

from tests.conftest import RedisServer, free_port  # noqa: E402
from tests.service.storm import Plan, Storm  # noqa: E402


def main() -> int:
    defaults = Plan()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("workers", "jobs", "targets", "callers", "kills", "sigterms", "redis_restarts",
                 "s3_bursts", "seed"):
        flag = f"--{name.replace('_', '-')}"
        parser.add_argument(flag, type=int, default=getattr(defaults, name))
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    plan = dataclasses.replace(
        defaults,
        **{k: v for k, v in vars(args).items() if k != "keep" and hasattr(defaults, k)},
        local_targets=min(defaults.local_targets, args.targets),
    )

    from moto.server import ThreadedMotoServer

    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    workdir = Path(tempfile.mkdtemp(prefix="mds-storm-"))
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    os.environ["S3_ENDPOINT_URL"] = endpoint = f"http://127.0.0.1:{port}"
    (workdir / "redis").mkdir()
    redis = RedisServer(workdir / "redis")
    redis.start()
    storm = Storm(plan, workdir, redis, endpoint)
    started = time.monotonic()
    try:
        outcome = storm.run()
        summary = storm.verify(workdir / "read")
    finally:
        storm.stop()
        redis.stop()
        moto.stop()
    rows = [
        ("plan", f"{plan.workers} workers, {plan.jobs} jobs, {plan.callers} callers, "
                 f"{plan.targets} targets"),
        ("faults", "; ".join(f.strip() for f in outcome.faults)),
        ("jobs succeeded / failed", f"{summary['succeeded']} / {summary['failed']} "
                                    f"({', '.join(summary['errors']) or 'no errors'})"),
        ("jobs started more than once", summary["redelivered_jobs"]),
        ("targets read back against their source", summary["targets_read_back"]),
        ("paths removed by the final housekeeping", summary["housekeeping_removed"]),
        ("SIGTERM to exit (s)", ", ".join(f"{s:.1f}" for s in outcome.sigterm_exit_seconds)),
        ("API requests (by status)", f"{len(outcome.latencies)} {outcome.statuses}"),
        ("API p50 / p99 (ms)", f"{outcome.p(0.5) * 1000:.1f} / {outcome.p(0.99) * 1000:.1f}"),
        ("storm wall time (s)", f"{outcome.wall_seconds:.1f}"),
        ("total with setup and checks (s)", f"{time.monotonic() - started:.1f}"),
    ]
    print("| storm | |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    for line in summary["metrics"]:
        print(f"    {line}")
    print("all checks passed: every job final, each index.json is its last success's output, "
          "no orphan files after housekeeping, no overlapping runs")
    if args.keep:
        print(f"work directory: {workdir}")
    else:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if outcome.p(0.99) < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
