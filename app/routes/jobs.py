"""``/v1/jobs``: submit, read, list and cancel conversion jobs (each route needs a scope)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response, status

from app.deps import PrincipalDep, ServiceDep, SettingsDep
from app.errors import (
    AuthUnavailable,
    CallbackNotAllowed,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    JobNotCancellable,
    JobNotFound,
    MalformedRequest,
    QueueFull,
    QuotaExceeded,
    RequestTooLarge,
    SourceNotAllowed,
    StoreUnavailable,
    TargetNotAllowed,
    Unauthorized,
    problem_responses,
)
from app.schemas import JobCreate, JobList
from worker.jobs import JobRecord, JobState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=64, description="a job id")]
# What every /v1 route may answer besides its own errors.
_COMMON = (Unauthorized, Forbidden, InvalidRequest, StoreUnavailable, AuthUnavailable)
_WITH_BODY = (MalformedRequest, RequestTooLarge)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRecord,
    responses={
        200: {"model": JobRecord, "description": "Idempotent replay: the existing job"},
        **problem_responses(
            *_WITH_BODY,
            SourceNotAllowed,
            TargetNotAllowed,
            CallbackNotAllowed,
            IdempotencyConflict,
            QuotaExceeded,
            QueueFull,
            *_COMMON,
        ),
    },
)
def submit_job(
    body: JobCreate,
    principal: PrincipalDep,
    response: Response,
    service: ServiceDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JobRecord:
    """Create a conversion job (scope ``jobs:submit``); it is queued at once and converted by a
    worker. The source must be in the caller's allowed sources and the target under its allowed
    targets."""
    # Keys are scoped to the caller: two clients cannot collide on (or probe) each other's keys.
    scoped = f"{principal.name}:{idempotency_key}" if idempotency_key else None
    record, created = service.submit(body, principal, scoped)
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return record


@router.get(
    "/{job_id}", response_model=JobRecord, responses=problem_responses(JobNotFound, *_COMMON)
)
def get_job(job_id: JobId, principal: PrincipalDep, service: ServiceDep) -> JobRecord:
    """One job, with its progress, result or error (scope ``jobs:read``; own jobs unless admin)."""
    return service.get(job_id, principal)


@router.get("", response_model=JobList, responses=problem_responses(*_COMMON))
def list_jobs(
    principal: PrincipalDep,
    service: ServiceDep,
    settings: SettingsDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9a-f]{28}$")] = None,
    owner: Annotated[
        str | None,
        Query(
            alias="principal",
            min_length=1,
            max_length=128,
            description="admin only: the jobs of this principal",
        ),
    ] = None,
) -> JobList:
    """Jobs, newest first (scope ``jobs:read``): the caller's own, or every job for an admin.
    Pass ``next_cursor`` back as ``cursor`` for the next page."""
    jobs, next_cursor = service.list(
        principal, state, min(limit, settings.max_page_size), cursor, owner
    )
    return JobList(jobs=jobs, next_cursor=next_cursor)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRecord,
    responses=problem_responses(JobNotFound, JobNotCancellable, RequestTooLarge, *_COMMON),
)
def cancel_job(job_id: JobId, principal: PrincipalDep, service: ServiceDep) -> JobRecord:
    """Ask for cancellation (scope ``jobs:cancel``; own jobs unless admin); 409 if the job
    already finished."""
    return service.cancel(job_id, principal)
