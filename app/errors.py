"""The API's error tree and the one ``application/problem+json`` body every error is rendered as."""

from __future__ import annotations

import logging
from typing import ClassVar

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("app.errors")


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details plus a stable machine ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None


class AppError(Exception):
    """Base of errors the API renders; subclasses fix the status and code."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, *, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors

    def problem(self) -> Problem:
        return Problem(
            type=f"urn:mds-convert:problem:{self.code}",
            title=self.title,
            status=self.status_code,
            detail=self.detail,
            code=self.code,
            errors=self.errors,
        )


class MalformedRequest(AppError):
    status_code, code, title = 400, "malformed_request", "Malformed request"


class Unauthorized(AppError):
    status_code, code, title = 401, "unauthorized", "Unauthorized"


class TargetNotAllowed(AppError):
    status_code, code, title = 403, "target_not_allowed", "Target not allowed"


class JobNotFound(AppError):
    status_code, code, title = 404, "job_not_found", "Job not found"


class NotFound(AppError):
    status_code, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(AppError):
    status_code, code, title = 405, "method_not_allowed", "Method not allowed"


class JobNotCancellable(AppError):
    status_code, code, title = 409, "job_not_cancellable", "Job not cancellable"


class InvalidRequest(AppError):
    status_code, code, title = 422, "invalid_request", "Invalid request"


class IdempotencyConflict(AppError):
    status_code, code, title = 422, "idempotency_conflict", "Idempotency key reused"


class StoreUnavailable(AppError):
    status_code, code, title = 503, "store_unavailable", "Job store unavailable"


# Declared on routes via `responses=` so the OpenAPI document shows the one error model.
def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, object]]:
    return {
        e.status_code: {"model": Problem, "description": e.title, "content": {PROBLEM_JSON: {}}}
        for e in errors
    }


def render(error: AppError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = error.problem().model_dump(exclude_none=True)
    return JSONResponse(
        body, status_code=error.status_code, media_type=PROBLEM_JSON, headers=headers
    )


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors():
        # loc is ("body", "field", ...) or ("query", "name"); drop the part of the request.
        loc = [str(p) for p in err.get("loc", ())[1:]] or [str(err.get("loc", ("body",))[0])]
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        errors.append(FieldError(field=".".join(loc), message=message, type=str(err["type"])))
    return errors


async def _on_app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return render(exc, headers)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = _field_errors(exc)
    if any(f.type == "json_invalid" for f in fields):
        return render(MalformedRequest("the request body is not valid JSON", errors=fields))
    summary = "; ".join(f"{f.field}: {f.message}" for f in fields)
    return render(InvalidRequest(summary, errors=fields))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        return render(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
    if exc.status_code == 404:
        return render(NotFound(f"no route {request.url.path}"))
    error = AppError(str(exc.detail))
    body = error.problem().model_copy(update={"status": exc.status_code, "code": "http_error"})
    return JSONResponse(
        body.model_dump(exclude_none=True), exc.status_code, media_type=PROBLEM_JSON
    )


async def _on_redis(request: Request, exc: Exception) -> JSONResponse:
    log.warning("store.unavailable", extra={"error": repr(exc), "path": request.url.path})
    return render(StoreUnavailable(f"the job store (Redis) is not reachable: {exc}"))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(redis.ConnectionError, _on_redis)
    app.add_exception_handler(redis.TimeoutError, _on_redis)
