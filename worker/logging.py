"""Structured (JSON) logs; every line logged while a job runs carries its ``job_id``."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

_job_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

# LogRecord attributes that are not user-supplied `extra` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log line emitted inside the block (in this thread or context) with ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


def current_job_id() -> str | None:
    return _job_id.get()


class JobIdFilter(logging.Filter):
    """Adds the context's job id to records that do not name one themselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = _job_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event (the message), job_id and extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(*, json_lines: bool = True, level: int | str = logging.INFO) -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_mds_convert", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._mds_convert = True  # type: ignore[attr-defined]
    handler.addFilter(JobIdFilter())
    fmt = "%(asctime)s %(levelname)s %(name)s %(message)s job=%(job_id)s"
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(fmt))
    root.addHandler(handler)
    root.setLevel(level)
