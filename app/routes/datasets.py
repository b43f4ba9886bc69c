"""``/v1/jobs/{id}/dataset``: a succeeded job's published dataset, summary and preview."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.datasets import DATASET_ERRORS, MAX_PREVIEW, DatasetView, describe_dataset
from app.deps import PrincipalDep, ServiceDep
from app.errors import JobNotFound, problem_responses
from app.routes.jobs import _COMMON, JobId

router = APIRouter(prefix="/v1/jobs", tags=["datasets"])


@router.get(
    "/{job_id}/dataset",
    response_model=DatasetView,
    responses=problem_responses(JobNotFound, *DATASET_ERRORS, *_COMMON),
)
def get_dataset(
    job_id: JobId,
    principal: PrincipalDep,
    service: ServiceDep,
    preview: Annotated[
        int,
        Query(ge=0, le=MAX_PREVIEW, description="also decode the first N samples (0: none)"),
    ] = 0,
) -> DatasetView:
    """The dataset a job published, read from its ``index.json`` (scope ``jobs:read``; own jobs
    unless admin): samples, shards, bytes, columns and encodings, compression, hashes and where
    it is, and with ``preview=N`` its first N samples. 409 while the job has not succeeded, 410
    when its index was removed or another job published over it."""
    return describe_dataset(service.get(job_id, principal), preview)
