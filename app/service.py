"""Job use cases (submit, get, list, cancel) for a principal, with domain errors mapped to API
errors; no FastAPI.

Every use case takes the calling :class:`Principal`. A principal sees and cancels only its own
jobs (``admin`` sees all); another principal's job is reported as not found, so its existence is
not disclosed. Submissions, cancellations and refusals are written to the audit trail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from app.errors import (
    AppError,
    CallbackNotAllowed,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    JobNotCancellable,
    JobNotFound,
    QueueFull,
    QuotaExceeded,
    SourceNotAllowed,
    TargetNotAllowed,
)
from app.schemas import JobCreate
from worker.access.audit import audit
from worker.access.principals import Principal, Scope
from worker.access.sources import SourceNotAllowedError
from worker.access.targets import Target, TargetError, TargetNotAllowedError
from worker.callbacks import CallbackNotAllowedError, CallbackPolicy
from worker.errors import InvalidSourceError
from worker.jobs import (
    FINAL_STATES,
    IdempotencyConflictError,
    InvalidTransitionError,
    JobNotFoundError,
    JobRecord,
    JobState,
    JobStore,
    QuotaExceededError,
)

log = logging.getLogger("app.service")
TASK_NAME = "conversion.run"


class Enqueuer(Protocol):
    """Hands a job id to the broker (by task name: the API never imports the conversion)."""

    def __call__(self, job_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Admission:
    """Limits on what may wait: per principal (overridable per principal) and in the queue."""

    max_active_jobs: int = 50
    max_queue_depth: int = 1000
    retry_after: int = 10
    # Which callback URLs jobs may name; None: callbacks are not configured (no secret).
    callbacks: CallbackPolicy | None = None


class JobService:
    def __init__(
        self, store: JobStore, enqueue: Enqueuer, admission: Admission | None = None
    ) -> None:
        self.store = store
        self.enqueue = enqueue
        self.admission = admission or Admission()

    def submit(
        self, body: JobCreate, principal: Principal, idempotency_key: str | None = None
    ) -> tuple[JobRecord, bool]:
        """Check the principal's grants, store a new job, then enqueue it.

        Returns ``(job, created)``. The record is stored together with an outbox entry, so a job
        whose enqueue fails here is enqueued later by the outbox sweeper: once stored, a job is
        never lost. A refused submission stores nothing.
        """
        fields = {"source": body.source_table, "target": body.target}
        self.require(principal, Scope.SUBMIT, **fields)
        try:
            source, target = self._authorise(body, principal)
            self._check_callback(body.callback_url)
            record = JobRecord.new(body.to_request(str(target), source), principal.name)
            self._check_queue_depth(principal)
            limit = (
                principal.max_active_jobs
                if principal.max_active_jobs is not None
                else self.admission.max_active_jobs
            )
            try:
                record, created = self.store.create(
                    record, idempotency_key=idempotency_key, active_limit=limit
                )
            except IdempotencyConflictError as exc:
                raise IdempotencyConflict(
                    f"Idempotency-Key {exc.key!r} was used for job {exc.job_id} with a "
                    "different body"
                ) from None
            except QuotaExceededError as exc:
                raise QuotaExceeded(
                    f"principal {exc.principal!r} already has {exc.active} queued or running "
                    f"jobs (limit {exc.limit}); submit again when one has finished",
                    headers={"Retry-After": str(self.admission.retry_after)},
                ) from None
        except AppError as exc:
            audit("job.refused", principal=principal.name, reason=exc.code, detail=exc.detail,
                  **fields)
            raise
        if created:
            audit("job.submitted", principal=principal.name, job_id=record.id, **fields)
            log.info("job.created", extra={"job_id": record.id, "target": str(target)})
            self.dispatch(record.id)
        return record, created

    @staticmethod
    def require(principal: Principal, scope: Scope, **fields: object) -> None:
        """Raises Forbidden (audited) unless the principal holds ``scope`` (admin holds all)."""
        if not principal.has(scope):
            audit("request.refused", principal=principal.name, reason=Forbidden.code,
                  scope=scope.value, **fields)
            raise Forbidden(f"principal {principal.name!r} lacks the scope {scope.value!r}")

    @staticmethod
    def _authorise(body: JobCreate, principal: Principal) -> tuple[str, Target]:
        try:
            source = principal.sources.authorise(body.source_table)
        except SourceNotAllowedError as exc:
            raise SourceNotAllowed(str(exc)) from None
        except InvalidSourceError as exc:
            raise InvalidRequest(f"source_table: {exc.message}") from None
        try:
            target = principal.authorise_target(body.target)
        except TargetNotAllowedError as exc:
            raise TargetNotAllowed(str(exc)) from None
        except TargetError as exc:
            raise InvalidRequest(f"target: {exc}") from None
        return source, target

    def _check_callback(self, url: str | None) -> None:
        if url is None:
            return
        policy = self.admission.callbacks
        if policy is None:
            raise InvalidRequest(
                "callback_url: callbacks are not configured on this service (APP_CALLBACK_SECRET)"
            )
        try:
            policy.check(url)
        except CallbackNotAllowedError as exc:
            raise CallbackNotAllowed(str(exc)) from None

    def _check_queue_depth(self, principal: Principal) -> None:
        # Not transactional with the write (every submission would contend on one key): the
        # bound may be passed by the few submissions racing at the edge, which is harmless.
        queued = self.store.count_by_state()[JobState.QUEUED]
        if queued >= self.admission.max_queue_depth:
            raise QueueFull(
                f"{queued} jobs are waiting in the queue (limit "
                f"{self.admission.max_queue_depth}); submit again later",
                headers={"Retry-After": str(self.admission.retry_after)},
            )

    def dispatch(self, job_id: str) -> bool:
        """Enqueue and clear the outbox entry; False (logged) if the broker refused it."""
        try:
            self.enqueue(job_id)
        except Exception as exc:  # any broker failure: the outbox sweeper retries it
            log.warning("job.enqueue_failed", extra={"job_id": job_id, "error": repr(exc)})
            return False
        self.store.mark_enqueued(job_id)
        return True

    def get(self, job_id: str, principal: Principal) -> JobRecord:
        """The job, if ``principal`` may read it; JobNotFound otherwise (not 403: a job of
        another principal must not be distinguishable from one that does not exist)."""
        self.require(principal, Scope.READ)
        return self._visible(job_id, principal)

    def _visible(self, job_id: str, principal: Principal) -> JobRecord:
        try:
            record = self.store.get(job_id)
        except JobNotFoundError:
            record = None
        if record is not None and not (principal.is_admin or record.principal == principal.name):
            audit("job.refused", principal=principal.name, job_id=job_id, reason="not_owner")
            record = None
        if record is None:
            raise JobNotFound(f"no job with id {job_id!r}")
        return record

    def list(
        self,
        principal: Principal,
        state: JobState | None,
        limit: int,
        cursor: str | None,
        owner: str | None = None,
    ) -> tuple[list[JobRecord], str | None]:
        """The principal's own jobs; an admin sees every job, or ``owner``'s when given."""
        self.require(principal, Scope.READ)
        if owner is not None and not principal.is_admin and owner != principal.name:
            audit("request.refused", principal=principal.name, reason=Forbidden.code,
                  listing=owner)
            raise Forbidden("only an admin may list another principal's jobs")
        if not principal.is_admin:
            owner = principal.name
        return self.store.list(state=state, limit=limit, cursor=cursor, principal=owner)

    def cancel(self, job_id: str, principal: Principal) -> JobRecord:
        """Ask for cancellation. A queued job is cancelled at once; a running one is flagged."""
        self.require(principal, Scope.CANCEL)
        record = self._visible(job_id, principal)
        if record.state in FINAL_STATES:
            raise JobNotCancellable(f"job {job_id} is already {record.state}")
        if record.state is JobState.CANCELLING:
            return record
        try:
            record = self.store.transition(
                job_id,
                JobState.CANCELLING,
                expected={JobState.QUEUED, JobState.RUNNING},
                actor=principal.name,
            )
        except InvalidTransitionError:
            return self.cancel(job_id, principal)  # it moved meanwhile: decide again
        audit("job.cancel_requested", principal=principal.name, job_id=job_id,
              source=record.request.source_table, target=record.request.target)
        if record.transitions[-1].source is JobState.QUEUED:
            record = self._finish_queued_cancel(job_id, principal.name) or record
        return record

    def _finish_queued_cancel(self, job_id: str, actor: str) -> JobRecord | None:
        # No worker holds a job that was still queued, so nobody else will finish the cancel
        # until its message is consumed; do it now (a worker that picks it up later drops it).
        try:
            return self.store.transition(
                job_id, JobState.CANCELLED, expected={JobState.CANCELLING}, actor=actor
            )
        except InvalidTransitionError:
            return None
