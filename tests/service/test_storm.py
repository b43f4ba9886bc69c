"""A small storm in the suite (bench/storm.py runs the full one): three workers, jobs from three
callers over four shared targets, a kill -9, a SIGTERM, a Redis restart and S3 503 bursts; then
every guarantee of tests/service/storm.py is checked and the API's p99 is printed."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import require
from tests.service.storm import Plan, Storm

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = Plan(
    workers=3, jobs=10, targets=4, local_targets=1, callers=3, sources=(300, 500, 700),
    kills=1, sigterms=1, redis_restarts=1, s3_bursts=2, submit_seconds=10, faults_seconds=15,
    timeout=240, housekeeping_interval=3,
)


def test_storm(redis_server, s3_endpoint, tmp_path) -> None:
    require(shutil.which("java") is not None, "java is not installed")
    storm = Storm(SMALL, tmp_path, redis_server, s3_endpoint)
    try:
        outcome = storm.run()
        summary = storm.verify(tmp_path / "read")
    finally:
        storm.stop()
    p50, p99 = outcome.p(0.5), outcome.p(0.99)
    print(
        f"\nstorm: {summary} faults={outcome.faults} wall={outcome.wall_seconds:.1f}s "
        f"API requests={len(outcome.latencies)} p50={p50 * 1000:.1f}ms p99={p99 * 1000:.1f}ms "
        f"statuses={outcome.statuses} sigterm_exit_s={outcome.sigterm_exit_seconds}"
    )
    assert summary["succeeded"] >= 1
    assert len(outcome.faults) == 5, outcome.faults
    assert p99 < 1.0, f"API p99 {p99:.3f}s during the storm"
