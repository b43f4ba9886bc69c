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


# Graceful shutdown (worker.shutdown): SIGTERM hands running jobs back to the queue; time-bounded.
_controller: dict[str, Any] = {}


@signals.worker_init.connect
def _remember_worker(sender: Any = None, **kwargs: Any) -> None:
    _controller["worker"] = sender


@signals.worker_process_init.connect
def _pool_child_shutdown_handler(**kwargs: Any) -> None:
    from worker.shutdown import install_child_handler

    install_child_handler()


@signals.worker_shutting_down.connect
def _begin_graceful_shutdown(**kwargs: Any) -> None:
    from worker.shutdown import CHILD_SIGNAL, SHUTDOWN, pool_child_pids, signal_children

    worker = _controller.get("worker")
    settings = _worker_settings(worker)
    SHUTDOWN.begin(
        settings.shutdown_timeout,
        notify_children=lambda: signal_children(pool_child_pids(worker), CHILD_SIGNAL),
        hard_exit=lambda: _hard_exit(worker, settings),
    )


def _worker_settings(worker: Any) -> WorkerSettings:
    settings = getattr(getattr(worker, "app", None), "conf", {}).get("mds_settings")
    return settings if isinstance(settings, WorkerSettings) else get_worker_settings()


def _hard_exit(worker: Any, settings: WorkerSettings) -> None:
    """Publish the running jobs again, kill the pool's children and leave at once."""
    import os
    import signal
    import threading

    from celery.worker import state

    from worker.shutdown import HARD_EXIT_CODE, pool_child_pids, signal_children

    job_ids = [
        str(request.args[0])
        for request in list(state.active_requests)
        if request.name == TASK_NAME and request.args
    ]

    def requeue() -> None:
        app = getattr(worker, "app", None)
        for job_id in job_ids:
            # Another worker takes the job once this one's job lease has expired.
            app.send_task(TASK_NAME, args=[job_id], queue=settings.celery_queue)

    if job_ids and getattr(worker, "app", None) is not None:
        # In a thread with a bound: the broker may be the reason the shutdown is stuck.
        thread = threading.Thread(target=requeue, daemon=True)
        thread.start()
        thread.join(3.0)
    log.warning("worker.hard_exit jobs=%s", job_ids)
    signal_children(pool_child_pids(worker), signal.SIGKILL)
    os._exit(HARD_EXIT_CODE)


@signals.worker_ready.connect
def _start_housekeeping_schedule(sender: Any = None, **kwargs: Any) -> None:
    """Every worker offers to run housekeeping each interval; one round runs per interval."""
    from worker.housekeeping import Schedule
    from worker.jobs import RedisJobStore
    from worker.tasks import HOUSEKEEPING_TASK

    app = getattr(sender, "app", None)
    settings = _worker_settings(_controller.get("worker"))
    if app is None or settings.housekeeping_interval <= 0:
        return
    store = RedisJobStore.from_url(settings.redis_url, prefix=settings.redis_prefix)
    Schedule(
        store,
        settings.housekeeping_interval,
        lambda: app.send_task(HOUSEKEEPING_TASK, queue=settings.celery_queue),
    ).start()


@signals.worker_ready.connect
def _start_callback_dispatcher(sender: Any = None, **kwargs: Any) -> None:
    """Deliver completion callbacks from this worker (every worker polls the outbox; a claimed
    callback is a lease, so each attempt is made by one of them)."""
    from worker.callbacks import start_dispatcher

    start_dispatcher(_worker_settings(_controller.get("worker")))
