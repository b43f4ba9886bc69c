"""``/v1/jobs``: submit, read, list and cancel conversion jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response, status

from app.deps import ServiceDep, SettingsDep
from app.errors import (
    IdempotencyConflict,
    InvalidRequest,
    JobNotCancellable,
    JobNotFound,
    MalformedRequest,
    StoreUnavailable,
    TargetNotAllowed,
    Unauthorized,
    problem_responses,
)
from app.schemas import JobCreate, JobList
from worker.jobs import JobRecord, JobState

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=64, description="a job id")]
_COMMON = (Unauthorized, StoreUnavailable)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRecord,
    responses={
        200: {"model": JobRecord, "description": "Idempotent replay: the existing job"},
        **problem_responses(
            MalformedRequest, InvalidRequest, TargetNotAllowed, IdempotencyConflict, *_COMMON
        ),
    },
)
def submit_job(
    body: JobCreate,
    request: Request,
    response: Response,
    service: ServiceDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JobRecord:
    """Create a conversion job; it is queued at once and converted by a worker."""
    # Keys are scoped to the caller: two clients cannot collide on (or probe) each other's keys.
    scoped = f"{request.state.principal}:{idempotency_key}" if idempotency_key else None
    record, created = service.submit(body, scoped)
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return record


@router.get(
    "/{job_id}", response_model=JobRecord, responses=problem_responses(JobNotFound, *_COMMON)
)
def get_job(job_id: JobId, service: ServiceDep) -> JobRecord:
    """One job, with its progress, result or error."""
    return service.get(job_id)


@router.get("", response_model=JobList, responses=problem_responses(InvalidRequest, *_COMMON))
def list_jobs(
    service: ServiceDep,
    settings: SettingsDep,
    state: JobState | None = None,
    limit: Annotated[int, Query(ge=1)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9a-f]{28}$")] = None,
) -> JobList:
    """Jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    jobs, next_cursor = service.list(state, min(limit, settings.max_page_size), cursor)
    return JobList(jobs=jobs, next_cursor=next_cursor)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRecord,
    responses=problem_responses(JobNotFound, JobNotCancellable, *_COMMON),
)
def cancel_job(job_id: JobId, service: ServiceDep) -> JobRecord:
    """Ask for cancellation; 409 if the job already finished."""
    return service.cancel(job_id)
