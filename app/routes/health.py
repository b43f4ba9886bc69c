"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import StoreDep
from app.errors import StoreUnavailable, problem_responses
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is alive (no dependency is checked)."""
    return Health()


@router.get("/readyz", response_model=Health, responses=problem_responses(StoreUnavailable))
def readyz(store: StoreDep) -> Health:
    """Redis is reachable; 503 with a problem body otherwise."""
    store.ping()
    return Health()


@router.get("/metrics", response_class=Response, include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
