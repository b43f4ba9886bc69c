"""The Celery application, built from settings by :func:`make_celery`.

``celery -A worker.celery_app worker`` finds ``app`` here; it is created on first access (module
``__getattr__``) from the environment, never at import, so importing this module is cheap and
side-effect free. The API builds its own producer-only instance with the same factory.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals

from worker import warm as _warm  # noqa: F401 - connects the warm-start signal handlers
from worker.logging import configure_logging
from worker.settings import SharedSettings, WorkerSettings, get_worker_settings

TASK_NAME = "conversion.run"
log = logging.getLogger("worker.celery_app")


def make_celery(settings: SharedSettings) -> Celery:
    """A Celery app for the API (producer) or a worker, configured for long, idempotent jobs."""
    # The API builds a producer from its own settings: worker-only values keep their defaults.
    worker = settings if isinstance(settings, WorkerSettings) else WorkerSettings.model_construct()
    app = Celery("mds-convert", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # the job record in Redis is the source of truth
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=worker.concurrency,
        worker_hijack_root_logger=False,
        task_default_queue=settings.celery_queue,
        task_routes={TASK_NAME: {"queue": settings.celery_queue}},
        task_time_limit=worker.task_time_limit,
        task_soft_time_limit=max(worker.task_time_limit - 60, 1),
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            "unacked_restore_interval": worker.restore_interval,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 2,
            "socket_timeout": 5,
        },
        # A publish to a dead broker fails fast; the API's outbox enqueues the job again later.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.5},
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    app.conf["mds_settings"] = settings
    if (
        isinstance(settings, WorkerSettings)
        and settings.visibility_timeout <= worker.task_time_limit
    ):
        # Redis redelivers a message still unacknowledged after the visibility timeout: a job
        # running longer than that would be started a second time (the lease then defers it).
        log.warning(
            "celery.visibility_timeout_short: CELERY_VISIBILITY_TIMEOUT=%ds is not longer than "
            "WORKER_TASK_TIME_LIMIT=%ds",
            settings.visibility_timeout,
            worker.task_time_limit,
        )
    return app


@signals.setup_logging.connect
def _setup_logging(**kwargs: Any) -> None:
    """Worker processes log JSON lines (with the job id inside a job) instead of Celery's format."""
    loglevel = kwargs.get("loglevel") or "INFO"
    configure_logging(json_lines=get_worker_settings().log_json, level=loglevel)


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        value = make_celery(get_worker_settings())
        globals()["app"] = globals()["celery"] = value
        return value
    raise AttributeError(f"module 'worker.celery_app' has no attribute {name!r}")
