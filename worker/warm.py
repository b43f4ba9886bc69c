"""Warm start: a worker process starts Spark when it starts, not when its first job arrives.

Celery's prefork pool runs jobs in forked children, so each child starts its own session right
after the fork (``worker_process_init``); a solo or threads pool starts it in the worker process
itself (``worker_init``). A background thread builds the session and converts a tiny table
through both read paths, so the JVM, the Python workers and their imports are ready before the
first job. The state ("starting", "ready", "failed") is kept here for the job runner (a job that
arrives early reports the phase ``starting_spark``) and published in Redis for
``mds-convert worker-ping``.

Set ``WORKER_WARM_START=false`` to start Spark lazily on the first job instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from celery import signals

from worker.readiness import STATE_TTL, worker_key

log = logging.getLogger("worker.warm")
_REFRESH = 20.0
_state: dict[str, Any] = {"state": "cold", "since": time.time(), "error": None}
_state_lock = threading.Lock()
_changed = threading.Event()


def spark_state() -> str:
    """This process's Spark: ``cold``, ``starting``, ``ready`` or ``failed``."""
    return str(_state["state"])


def is_warming() -> bool:
    """Whether a warm start is under way (a job arriving now waits for it)."""
    return spark_state() == "starting"


def enabled() -> bool:
    return os.environ.get("WORKER_WARM_START", "true").strip().lower() not in {"0", "false", "no"}


def start_warmup(settings: Any) -> threading.Thread | None:
    """Start Spark (and a tiny conversion) in a background thread; None when disabled."""
    if not enabled():
        return None
    _set("starting")
    thread = threading.Thread(target=_warm, args=(settings,), name="spark-warmup", daemon=True)
    thread.start()
    threading.Thread(
        target=_publish_forever, args=(settings,), name="spark-state", daemon=True
    ).start()
    return thread


def _warm(settings: Any) -> None:
    started = time.monotonic()
    try:
        from worker.convert.spark import get_spark

        spark = get_spark(settings)
        _warm_conversion(spark, Path(getattr(settings, "data_dir", ".data")))
    except Exception as exc:  # the first job will try again and report the real error
        log.exception("worker.spark_warmup_failed")
        _set("failed", error=repr(exc))
    else:
        _set("ready", seconds=round(time.monotonic() - started, 1))
        log.info("worker.spark_ready seconds=%.1f", time.monotonic() - started)


def _warm_conversion(spark: Any, data_dir: Path) -> None:
    """Convert a few rows through both read paths: Python workers start and import our code."""
    from worker.convert.pipeline import dataframe_to_mds

    data_dir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="warmup-", dir=data_dir))
    try:
        frame = spark.range(0, 64, numPartitions=2).selectExpr(
            "id", "cast(id as string) as s", "array(cast(id as float)) as v"
        )
        frame.write.parquet(str(root / "table"))
        table = spark.read.parquet(str(root / "table"))
        dataframe_to_mds(table, str(root / "direct"), run_id="warmup")
        dataframe_to_mds(frame, str(root / "spark"), run_id="warmup", read_path="spark")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _set(state: str, **extra: Any) -> None:
    with _state_lock:
        _state.clear()
        _state.update({"state": state, "since": time.time(), "error": None, **extra})
    _changed.set()


def _publish_forever(settings: Any) -> None:
    """Keep this process's state visible in Redis while it lives (best effort)."""
    redis_url = getattr(settings, "redis_url", None)
    if not redis_url:
        return
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    key = worker_key(getattr(settings, "redis_prefix", "mdsconvert"))
    while True:
        with _state_lock:
            value = json.dumps(_state)
        try:
            client.set(key, value, ex=STATE_TTL)
        except redis.RedisError as exc:
            log.warning("worker.state_publish_failed error=%r", exc)
        # Publish again at once when the state changes, else refresh before the TTL ends.
        _changed.wait(_REFRESH)
        _changed.clear()


def _settings_of(sender: Any) -> Any:
    from worker.settings import WorkerSettings, get_worker_settings

    app = getattr(sender, "app", None)
    settings = getattr(app, "conf", {}).get("mds_settings") if app is not None else None
    return settings if isinstance(settings, WorkerSettings) else get_worker_settings()


@signals.worker_process_init.connect
def _warm_pool_child(**kwargs: Any) -> None:
    start_warmup(_settings_of(None))


@signals.worker_init.connect
def _warm_in_process_pool(sender: Any = None, **kwargs: Any) -> None:
    pool = getattr(sender, "pool_cls", None)
    name = pool if isinstance(pool, str) else getattr(pool, "__module__", "")
    if "prefork" in str(name):
        return  # the children start their own sessions after the fork
    start_warmup(_settings_of(sender))
