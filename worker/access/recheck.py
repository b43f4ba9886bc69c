"""The worker's own access check of a job, from the stored record, before it touches the source.

The API checked the request when it was submitted, but the record has been in Redis since and the
principals file may have changed: a principal whose grants were narrowed, or a record whose
source or target was edited, must not be converted. The check uses the principals as configured
now (the file is re-read when it changes) and the worker's own view of the filesystem (a path
source is resolved again here, and the worker reads the path it checked).

Records from before principals existed (``principal`` is None) are checked against the global
allow-lists, which is what every token could do then.
"""

from __future__ import annotations

import threading

from worker.access.audit import audit
from worker.access.principals import (
    ALL_SCOPES,
    AccessConfigError,
    Principal,
    PrincipalRegistry,
    Scope,
    build_registry,
)
from worker.access.sources import SourceNotAllowedError
from worker.access.targets import TargetError, TargetNotAllowedError
from worker.errors import (
    InvalidSourceError,
    PermanentConversionError,
    TransientConversionError,
)
from worker.jobs import JobRecord


class AccessDeniedError(PermanentConversionError):
    """The job's principal may not (or no longer) read its source or write its target."""

    code = "access_denied"


class RecordAuthorizer:
    """Checks a stored job against the current grants; returns the source text to read."""

    def __init__(self, settings: object) -> None:
        self.settings = settings
        self._registry: PrincipalRegistry | None = None
        self._lock = threading.Lock()

    def registry(self) -> PrincipalRegistry:
        with self._lock:
            if self._registry is None:
                try:
                    self._registry = build_registry(self.settings)
                except AccessConfigError as exc:
                    # An operator can fix the file; the job waits (retried with backoff).
                    raise TransientConversionError(
                        f"the access configuration is invalid: {exc}", code="access_config"
                    ) from None
            return self._registry

    def __call__(self, record: JobRecord) -> str:
        """The canonical source to read for ``record``.

        Raises:
            AccessDeniedError: the principal is unknown now, lacks ``jobs:submit``, or the
                source or target is outside its grants.
            TransientConversionError: the principals file is invalid right now.
        """
        try:
            principal = self._principal(record)
            return self._check(record, principal)
        except AccessDeniedError as exc:
            audit(
                "job.access_denied",
                principal=record.principal,
                job_id=record.id,
                source=record.request.source_table,
                target=record.request.target,
                reason=exc.message,
            )
            raise
        except AccessConfigError as exc:
            raise TransientConversionError(
                f"the access configuration is invalid: {exc}", code="access_config"
            ) from None

    def _principal(self, record: JobRecord) -> Principal:
        registry = self.registry()
        if record.principal is None:
            legacy = registry.anonymous
            return Principal("(legacy record)", ALL_SCOPES, legacy.sources, legacy.targets)
        principal = registry.get(record.principal)
        if principal is None:
            raise AccessDeniedError(
                f"principal {record.principal!r} that submitted the job is not configured on "
                "this worker (removed since, or the worker's APP_PRINCIPALS_FILE / "
                "APP_API_TOKENS / APP_AUTH_DISABLED differ from the API's)"
            )
        if not principal.has(Scope.SUBMIT):
            raise AccessDeniedError(f"principal {principal.name!r} no longer has 'jobs:submit'")
        return principal

    @staticmethod
    def _check(record: JobRecord, principal: Principal) -> str:
        request = record.request
        try:
            source = principal.sources.authorise(request.source_table)
        except (SourceNotAllowedError, InvalidSourceError) as exc:
            raise AccessDeniedError(f"principal {principal.name!r}: {exc}") from None
        try:
            principal.authorise_target(request.target)
        except (TargetError, TargetNotAllowedError) as exc:
            raise AccessDeniedError(f"principal {principal.name!r}: {exc}") from None
        return source
