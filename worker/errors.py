"""Conversion errors, classified once so the task layer knows whether to retry.

Every error carries a stable machine ``code`` (surfaced in the job record's ``error.code``) and a
``retryable`` flag. The Celery task retries ``TransientConversionError`` with backoff and fails the
job at once on ``PermanentConversionError``.
"""

from __future__ import annotations


class ConversionError(Exception):
    """Base of every conversion failure."""

    code = "conversion_failed"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class PermanentConversionError(ConversionError):
    """Retrying cannot help: bad table, bad type, nulls without a policy, target exists, ..."""

    code = "conversion_failed"
    retryable = False


class TableNotFoundError(PermanentConversionError):
    code = "table_not_found"


class InvalidSourceError(PermanentConversionError):
    code = "invalid_source"


class SourceTimeoutError(PermanentConversionError):
    code = "source_timeout"


class UnsupportedTypeError(PermanentConversionError):
    code = "unsupported_type"


class ColumnOverrideError(PermanentConversionError):
    code = "invalid_column_encoding"


class NullValuesError(PermanentConversionError):
    code = "null_values"


class TargetExistsConversionError(PermanentConversionError):
    code = "target_exists"


class TargetNotAllowedError(PermanentConversionError):
    code = "target_not_allowed"


class TransientConversionError(ConversionError):
    """Worth retrying: storage unavailable, Spark executor lost, network errors."""

    code = "transient_failure"
    retryable = True


class ConversionCancelled(ConversionError):
    """The conversion was cancelled; nothing was published and what was written is removed."""

    code = "cancelled"
    retryable = False
