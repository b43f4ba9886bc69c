"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.auth import BearerAuthMiddleware, BodyLimitMiddleware
from app.errors import install_error_handlers
from app.openapi import install_openapi
from app.outbox import OutboxSweeper
from app.routes import datasets, health, jobs, whoami
from app.service import TASK_NAME, Admission, Enqueuer, JobService
from app.settings import AppSettings, get_app_settings
from app.ui import install_console
from worker.access.principals import build_registry
from worker.callbacks import CallbackPolicy
from worker.celery_app import make_celery
from worker.jobs import RedisJobStore
from worker.metrics import RedisJobCollector

log = logging.getLogger("app.main")


def celery_enqueuer(settings: AppSettings) -> Enqueuer:
    """Send ``conversion.run(job_id)`` by name: the API never imports the conversion code."""
    celery = make_celery(settings)

    def enqueue(job_id: str) -> None:
        celery.send_task(TASK_NAME, args=[job_id], queue=settings.celery_queue)

    return enqueue


def create_app(settings: AppSettings | None = None, *, enqueue: Enqueuer | None = None) -> FastAPI:
    """Build the service. ``enqueue`` replaces the Celery producer (tests, benchmarks)."""
    settings = settings or get_app_settings()
    principals = build_registry(settings)  # a bad principals file stops the start here
    if settings.auth_disabled:
        log.warning("auth.disabled: every request is accepted without a token (development only)")
    elif not principals.configured:
        log.warning(
            "auth.no_principals: neither APP_PRINCIPALS_FILE nor APP_API_TOKENS is configured, "
            "every /v1 request gets 401"
        )
    store = RedisJobStore.from_url(settings.redis_url, prefix=settings.redis_prefix)
    service = JobService(
        store,
        enqueue or celery_enqueuer(settings),
        Admission(
            max_active_jobs=settings.max_active_jobs,
            max_queue_depth=settings.max_queue_depth,
            retry_after=settings.retry_after,
            callbacks=(
                CallbackPolicy.from_settings(settings) if settings.callback_secret else None
            ),
        ),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        sweeper = OutboxSweeper(
            service,
            store.client,
            f"{settings.redis_prefix}:outbox-lock",
            delay=settings.outbox_delay,
            interval=settings.outbox_interval,
        )
        app.state.sweeper = sweeper
        sweeper.start()
        yield
        sweeper.stop()
        store.client.close()

    app = FastAPI(
        title="mds-convert",
        version="1",
        summary="Convert Spark tables into MDS shard datasets on object storage.",
        lifespan=lifespan,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisJobCollector(store, settings.celery_queue))
    app.state.settings, app.state.store, app.state.service = settings, store, service
    app.state.registry = registry
    app.state.principals = principals
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(whoami.router)
    app.include_router(health.router)
    install_error_handlers(app)
    install_openapi(app)
    install_console(app)  # /ui: pages and static files, with their security headers
    # The last added runs first: authentication, then the body limit, then FastAPI.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(BearerAuthMiddleware, registry=principals)
    return app
