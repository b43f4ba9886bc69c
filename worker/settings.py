"""Process settings shared by the API and the worker, and the worker's own settings.

Settings are built in factories (never at import). Values shared by both processes (the Redis URL,
the S3 endpoint, Spark, the data directory, the queue and key prefix) use unprefixed environment
names so that one docker-compose value reaches both; the rest use ``APP_`` / ``WORKER_`` prefixes.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _shared(env: str, default: Any, **kwargs: Any) -> Any:
    """A field read from the unprefixed variable ``env`` (or by its own name when constructed)."""
    return Field(default, validation_alias=AliasChoices(env.lower(), env), **kwargs)


def _access(name: str, default: Any = None, **kwargs: Any) -> Any:
    """An access setting: named ``APP_<NAME>`` for both processes (the API checks it, the worker
    checks the stored job again), so one deployment value reaches both."""
    return Field(default, validation_alias=AliasChoices(name, f"APP_{name.upper()}"), **kwargs)


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SharedSettings(BaseSettings):
    """Values that the API and the worker must agree on."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    redis_url: str = _shared("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis_prefix: str = _shared("REDIS_PREFIX", "mdsconvert", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    celery_queue: str = _shared("CELERY_QUEUE", "conversion", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    s3_endpoint_url: str | None = _shared("S3_ENDPOINT_URL", None)
    spark_master: str = _shared("SPARK_MASTER", "local[*]")
    spark_conf: Annotated[dict[str, str], NoDecode] = _shared("SPARK_CONF", {})
    data_dir: Path = _shared("DATA_DIR", Path(".data"))
    # Longer than the longest job: an unacknowledged message is redelivered after this long.
    visibility_timeout: int = _shared("CELERY_VISIBILITY_TIMEOUT", 6 * 3600, ge=1)

    # Access (see worker.access): who may read which source and write which target.
    principals_file: Path | None = _access("principals_file")
    api_tokens: Annotated[list[SecretStr], NoDecode] = _access("api_tokens", [])
    # Development only: every request is accepted without a token (logged loudly at start).
    auth_disabled: bool = _access("auth_disabled", False)
    # s3:// prefixes and local roots (absolute paths or file:// URIs) that jobs may write under.
    # Empty means: only <data_dir>/datasets.
    allowed_targets: Annotated[list[str], NoDecode] = _access("allowed_targets", [])
    # Catalog patterns ("sales.*", "main.sales.events", "*") and path roots that legacy tokens
    # (APP_API_TOKENS) and anonymous development access may read. No path root by default.
    allowed_sources: Annotated[list[str], NoDecode] = _access("allowed_sources", ["*"])
    allowed_source_paths: Annotated[list[str], NoDecode] = _access("allowed_source_paths", [])
    # Completion callbacks (worker.callbacks): the HMAC secret, which hosts may be called, which
    # non-public networks are allowed explicitly, and the delivery bounds.
    callback_secret: SecretStr | None = _access("callback_secret")
    callback_allowed_hosts: Annotated[list[str], NoDecode] = _access("callback_allowed_hosts", [])
    callback_allowed_networks: Annotated[list[str], NoDecode] = _access(
        "callback_allowed_networks", []
    )
    callback_timeout: float = _access("callback_timeout", 10.0, gt=0)
    callback_max_attempts: int = _access("callback_max_attempts", 8, ge=1)
    callback_max_seconds: float = _access("callback_max_seconds", 600.0, gt=0)
    # What a one- or two-part table name means (the worker's Spark defaults).
    source_default_catalog: str = _access("source_default_catalog", "spark_catalog")
    source_default_database: str = _access("source_default_database", "default")

    @field_validator("principals_file", mode="before")
    @classmethod
    def _no_empty_path(cls, value: object) -> object:
        # An empty variable (compose's ${APP_PRINCIPALS_FILE:-}) means "no file", not ".".
        return None if isinstance(value, str) and not value.strip() else value

    _split_lists = field_validator(
        "api_tokens", "allowed_targets", "allowed_sources", "allowed_source_paths",
        "callback_allowed_hosts", "callback_allowed_networks", mode="before"
    )(_split_commas)

    def effective_allowed_targets(self) -> list[str]:
        return self.allowed_targets or [str((self.data_dir / "datasets").resolve())]

    @field_validator("spark_conf", mode="before")
    @classmethod
    def _parse_spark_conf(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value


class WorkerSettings(SharedSettings):
    """The Celery worker's settings (``WORKER_*`` variables plus the shared ones)."""

    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore", populate_by_name=True)

    concurrency: int = Field(1, ge=1)
    # A worker holds a lease on a running job and renews it; a redelivered job is taken over only
    # after the previous holder's lease has expired (it died), never while it is still alive.
    lease_ttl: float = Field(30.0, gt=0)
    progress_interval: float = Field(1.0, gt=0)
    cancel_poll_interval: float = Field(0.5, gt=0)
    # Seconds that resolving a job's source (catalog lookup, or listing a path) may take.
    source_timeout: float = Field(300.0, gt=0)
    max_retries: int = Field(5, ge=0)
    # Starts of one job (first run, transient retries, redeliveries after a worker died) after
    # which it fails instead of being run again.
    max_attempts: int = Field(10, ge=1)
    retry_backoff_max: int = Field(300, ge=1)
    task_time_limit: int = Field(5 * 3600, ge=1)
    # How often the worker looks for unacknowledged messages whose visibility timeout expired.
    restore_interval: int = Field(10, ge=1)
    log_json: bool = True
    # A job whose target is owned by another job looks again after this long (with jitter).
    target_wait_interval: float = Field(2.0, gt=0)
    # SIGTERM: a running job is cancelled and handed back to the queue; after this long (or on a
    # second SIGTERM) the worker exits hard.
    shutdown_timeout: float = Field(30.0, gt=0)
    # Housekeeping removes overwritten generations and the run directories of failed, cancelled
    # or abandoned jobs once they are this old (long enough for readers mid-epoch).
    housekeeping_grace: float = Field(24 * 3600.0, ge=0)
    # How often the periodic housekeeping task runs (celery beat); 0 disables the schedule.
    housekeeping_interval: float = Field(3600.0, ge=0)


@functools.cache
def get_worker_settings() -> WorkerSettings:
    """Settings for the CLI entry points, read from the environment once per process."""
    return WorkerSettings()
