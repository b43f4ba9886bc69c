"""A fresh worker starts Spark before its first job, says so through ``worker-ping``, and its
first job reads a Parquet table directly (pyarrow on the executors), recorded in the job."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import require
from tests.e2e.conftest import Stack
from worker.readiness import read_states

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fresh_worker_is_warm_before_its_first_job(redis_server, s3_endpoint) -> None:
    require(shutil.which("java") is not None, "java is not installed (Spark needs it)")
    import boto3

    bucket = f"warm-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    base = Path(tempfile.mkdtemp(prefix="mds-warm-"))
    table = base / "table"
    table.mkdir()
    ids = np.arange(2000)
    pq.write_table(pa.table({"id": ids, "v": pa.array(ids * 0.5)}), table / "part-0.parquet")
    stack = Stack(redis_server.url, f"s3://{bucket}", base)
    try:
        stack.start()
        states = _wait_until_ready(stack, timeout=240)
        assert all(s["state"] == "ready" for s in states.values()), states
        ping = subprocess.run(
            [sys.executable, "-m", "app.cli", "worker-ping", "--require-spark"],
            env=stack.env, capture_output=True, text=True, timeout=60, check=False,
        )
        assert ping.returncode == 0, ping.stderr
        assert '"state": "ready"' in ping.stdout

        with stack.client() as client:
            body = {"source_table": f"parquet.`{table}`", "target": f"s3://{bucket}/ds"}
            job = client.post("/v1/jobs", json=body).json()
            assert "id" in job, job
            done = stack.wait_for(client, job["id"])
        assert done["state"] == "succeeded", done
        assert done["result"]["samples"] == 2000
        assert done["result"]["read_path"] == "direct", done["result"]
        assert done["progress"]["read_path"] == "direct"
    finally:
        stack.stop()
        shutil.rmtree(base, ignore_errors=True)


def _wait_until_ready(stack: Stack, timeout: float) -> dict:
    prefix = stack.env["REDIS_PREFIX"]
    deadline = time.monotonic() + timeout
    states: dict = {}
    while time.monotonic() < deadline:
        stack.worker.assert_alive()
        states = read_states(stack.env["REDIS_URL"], prefix)
        if states and all(s["state"] in ("ready", "failed") for s in states.values()):
            return states
        time.sleep(0.5)
    raise AssertionError(f"the worker's Spark did not start: {states}\n{stack.worker.log_tail()}")
