"""``Annotated`` dependency aliases used by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.service import JobService
from app.settings import AppSettings
from worker.access.principals import Principal
from worker.jobs import RedisJobStore


def _settings(request: Request) -> AppSettings:
    return request.app.state.settings


def _service(request: Request) -> JobService:
    return request.app.state.service


def _store(request: Request) -> RedisJobStore:
    return request.app.state.store


def _principal(request: Request) -> Principal:
    # Set by BearerAuthMiddleware before the route runs (every /v1 path is protected).
    return request.state.principal


SettingsDep = Annotated[AppSettings, Depends(_settings)]
ServiceDep = Annotated[JobService, Depends(_service)]
StoreDep = Annotated[RedisJobStore, Depends(_store)]
PrincipalDep = Annotated[Principal, Depends(_principal)]
