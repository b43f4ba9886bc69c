"""Job use cases (submit, get, list, cancel) with domain errors mapped to API errors; no FastAPI."""

from __future__ import annotations

import logging
from typing import Protocol

from app.errors import (
    IdempotencyConflict,
    InvalidRequest,
    JobNotCancellable,
    JobNotFound,
    TargetNotAllowed,
)
from app.schemas import JobCreate
from worker.access.targets import Target, TargetError, TargetNotAllowedError, resolve_target
from worker.jobs import (
    FINAL_STATES,
    IdempotencyConflictError,
    InvalidTransitionError,
    JobNotFoundError,
    JobRecord,
    JobState,
    JobStore,
)

log = logging.getLogger("app.service")
TASK_NAME = "conversion.run"


class Enqueuer(Protocol):
    """Hands a job id to the broker (by task name: the API never imports the conversion)."""

    def __call__(self, job_id: str) -> None: ...


class JobService:
    def __init__(self, store: JobStore, enqueue: Enqueuer, allowed: list[Target]) -> None:
        self.store = store
        self.enqueue = enqueue
        self.allowed = allowed

    def submit(self, body: JobCreate, idempotency_key: str | None = None) -> tuple[JobRecord, bool]:
        """Store a new job, then enqueue it. Returns ``(job, created)``.

        The record is stored together with an outbox entry, so a job whose enqueue fails here is
        enqueued later by the outbox sweeper: once stored, a job is never lost.
        """
        try:
            target = resolve_target(body.target, self.allowed)
        except TargetNotAllowedError as exc:
            raise TargetNotAllowed(str(exc)) from None
        except TargetError as exc:
            raise InvalidRequest(f"target: {exc}") from None
        record = JobRecord.new(body.to_request(str(target)))
        try:
            record, created = self.store.create(record, idempotency_key=idempotency_key)
        except IdempotencyConflictError as exc:
            raise IdempotencyConflict(
                f"Idempotency-Key {exc.key!r} was used for job {exc.job_id} with a different body"
            ) from None
        if created:
            log.info("job.created", extra={"job_id": record.id, "target": str(target)})
            self.dispatch(record.id)
        return record, created

    def dispatch(self, job_id: str) -> bool:
        """Enqueue and clear the outbox entry; False (logged) if the broker refused it."""
        try:
            self.enqueue(job_id)
        except Exception as exc:  # any broker failure: the outbox sweeper retries it
            log.warning("job.enqueue_failed", extra={"job_id": job_id, "error": repr(exc)})
            return False
        self.store.mark_enqueued(job_id)
        return True

    def get(self, job_id: str) -> JobRecord:
        try:
            return self.store.get(job_id)
        except JobNotFoundError:
            raise JobNotFound(f"no job with id {job_id!r}") from None

    def list(
        self, state: JobState | None, limit: int, cursor: str | None
    ) -> tuple[list[JobRecord], str | None]:
        return self.store.list(state=state, limit=limit, cursor=cursor)

    def cancel(self, job_id: str) -> JobRecord:
        """Ask for cancellation. A queued job is cancelled at once; a running one is flagged."""
        record = self.get(job_id)
        if record.state in FINAL_STATES:
            raise JobNotCancellable(f"job {job_id} is already {record.state}")
        if record.state is JobState.CANCELLING:
            return record
        try:
            record = self.store.transition(
                job_id, JobState.CANCELLING, expected={JobState.QUEUED, JobState.RUNNING}
            )
        except InvalidTransitionError:
            return self.cancel(job_id)  # it moved meanwhile: decide again from the new state
        log.info("job.cancel_requested", extra={"job_id": job_id})
        if record.transitions[-1].source is JobState.QUEUED:
            record = self._finish_queued_cancel(job_id) or record
        return record

    def _finish_queued_cancel(self, job_id: str) -> JobRecord | None:
        # No worker holds a job that was still queued, so nobody else will finish the cancel
        # until its message is consumed; do it now (a worker that picks it up later drops it).
        try:
            return self.store.transition(job_id, JobState.CANCELLED, expected={JobState.CANCELLING})
        except InvalidTransitionError:
            return None
