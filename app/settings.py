"""The API process's settings: ``APP_*`` variables plus the values shared with the worker."""

from __future__ import annotations

import functools
import logging
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from worker.settings import SharedSettings

log = logging.getLogger("app.settings")


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class AppSettings(SharedSettings):
    """Settings of the REST service."""

    model_config = SettingsConfigDict(env_prefix="APP_", extra="ignore", populate_by_name=True)

    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    # Development only: every request is accepted without a token (logged loudly at start).
    auth_disabled: bool = False
    # s3:// prefixes and local roots (absolute paths or file:// URIs) that jobs may write under.
    # Empty means: only <data_dir>/datasets.
    allowed_targets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Jobs stored but not confirmed on the broker after this long are enqueued again.
    outbox_delay: float = Field(5.0, gt=0)
    outbox_interval: float = Field(2.0, gt=0)
    max_page_size: int = Field(200, ge=1)
    log_json: bool = True

    _split_tokens = field_validator("api_tokens", mode="before")(_split_commas)
    _split_targets = field_validator("allowed_targets", mode="before")(_split_commas)

    def effective_allowed_targets(self) -> list[str]:
        return self.allowed_targets or [str((self.data_dir / "datasets").resolve())]


@functools.cache
def get_app_settings() -> AppSettings:
    """Settings for the CLI entry points, read from the environment once per process."""
    return AppSettings()
