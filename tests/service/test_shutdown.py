"""SIGTERM: a running job is handed back to the queue at once and succeeds on another worker."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.conftest import free_port, require
from tests.service.conftest import AUTH, LiveServer
from tests.service.fleet import PoolWorker, published_files, wait_final
from worker.shutdown import Shutdown

pytestmark = pytest.mark.integration


def test_first_signal_starts_a_bounded_stop_and_the_second_exits_hard() -> None:
    shutdown, exits, notified = Shutdown(), [], []
    shutdown.begin(
        30, notify_children=lambda: notified.append(1), hard_exit=lambda: exits.append(1)
    )
    assert shutdown.requested.is_set() and notified == [1] and exits == []
    shutdown.begin(30, hard_exit=lambda: exits.append(2))
    assert exits == [2]
    shutdown.reset()


def test_the_time_bound_exits_hard_without_a_second_signal() -> None:
    shutdown, fired = Shutdown(), threading.Event()
    shutdown.begin(0.1, hard_exit=fired.set)
    assert fired.wait(5)
    shutdown.reset()


@pytest.fixture
def env(redis_server, tmp_path_factory):
    from tests.service.test_end_to_end import Env

    require(shutil.which("java") is not None, "java is not installed")
    base = tmp_path_factory.mktemp("sigterm")
    (base / "datasets").mkdir()
    return Env(redis_server.url, str(base / "datasets"), base)


@pytest.fixture
def api(env) -> Iterator:
    from app.main import create_app

    with (
        LiveServer(create_app(env.settings), free_port()) as server,
        server.client(headers=AUTH) as client,
    ):
        yield client


@pytest.mark.slow
@pytest.mark.parametrize(
    ("pool", "signals"),
    [
        ("solo", 1),  # graceful: cancelled, handed back, the worker exits
        # prefork (the task runs in a pool child, which the main process tells with SIGUSR2),
        # and a second SIGTERM at once: the hard exit queues the job again and kills the child
        ("prefork", 2),
    ],
)
def test_sigterm_mid_job_hands_it_back_and_another_worker_finishes_it(
    env, api, pool, signals
) -> None:
    from mdsloader.storage import open_storage
    from tests.service.test_end_to_end import wait_for_written_shard, write_source

    source = write_source(env.base / "big", 24_000, files=8, pad=400)
    target = f"{env.bucket}/handed-back"
    extra = {"WORKER_SHUTDOWN_TIMEOUT": "25", "WORKER_HOUSEKEEPING_INTERVAL": "0"}
    first = PoolWorker(
        env.worker_env("first", **extra), env.base / "first.log", "first", pool=pool
    ).start()
    second = None
    try:
        job = api.post(
            "/v1/jobs",
            json={"source_table": source, "target": target, "partitions": 24,
                  "compression": "gz:9"},
        ).json()
        wait_for_written_shard(api, job["id"], target, first)
        second = PoolWorker(
            env.worker_env("second", **extra), env.base / "second.log", "second"
        ).start()
        first.terminate()
        asked = time.monotonic()
        if signals == 2:
            time.sleep(0.3)
            first.terminate()
        code = first.wait_exit(timeout=40)
        assert code is not None, f"no exit after SIGTERM\n{first.log_tail()}"
        exited = time.monotonic() - asked
        done = wait_final(api, [job["id"]], timeout=240)[job["id"]]
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert exited < (25 if signals == 1 else 5), f"took {exited:.1f}s to exit"
    assert done["state"] == "succeeded", f"{done}\n{second.log_tail() if second else ''}"
    edges = [(t["source"], t["target"], t["attempt"]) for t in done["transitions"]]
    assert edges == [
        (None, "queued", 0), ("queued", "running", 1), ("running", "running", 2),
        ("running", "succeeded", 2),
    ], f"{edges}\n{first.log_tail()}"
    # Back in the queue at once: the second start follows the signal within seconds, not after
    # the visibility timeout (6 h here); after a hard exit, once the job's lease (4 s) expired.
    restarted = datetime.fromisoformat(done["transitions"][2]["at"]).timestamp()
    signalled = time.time() - (time.monotonic() - asked)
    assert restarted - signalled < 15, f"restarted {restarted - signalled:.1f}s after SIGTERM"
    log = first.log_tail(40_000)
    assert ('"job.handed_back"' if signals == 1 else "worker.hard_exit jobs=['") in log
    assert done["result"]["samples"] == 24_000
    storage = open_storage(target)
    assert set(storage.list("")) == published_files(storage), "files left by the first attempt"
    metrics = api.get("/metrics").text
    assert "mds_convert_redeliveries_total 1.0" in metrics
    if signals == 1:
        assert "mds_convert_handbacks_total 1.0" in metrics
