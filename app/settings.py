"""The API process's settings: ``APP_*`` variables plus the values shared with the worker."""

from __future__ import annotations

import functools
import logging

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from worker.settings import SharedSettings

log = logging.getLogger("app.settings")


class AppSettings(SharedSettings):
    """Settings of the REST service."""

    model_config = SettingsConfigDict(env_prefix="APP_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Jobs stored but not confirmed on the broker after this long are enqueued again.
    outbox_delay: float = Field(5.0, gt=0)
    outbox_interval: float = Field(2.0, gt=0)
    max_page_size: int = Field(200, ge=1)
    log_json: bool = True

    # Admission control: queued + running jobs per principal (a principal may override it),
    # jobs waiting in the queue overall, and the largest request body read.
    max_active_jobs: int = Field(50, ge=0)
    max_queue_depth: int = Field(1000, ge=1)
    retry_after: int = Field(10, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024)


@functools.cache
def get_app_settings() -> AppSettings:
    """Settings for the CLI entry points, read from the environment once per process."""
    return AppSettings()
