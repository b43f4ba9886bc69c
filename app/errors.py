"""The API's error tree and the one ``application/problem+json`` body every error is rendered as."""

from __future__ import annotations

import logging
import re
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

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers

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


class Forbidden(AppError):
    status_code, code, title = 403, "forbidden", "Forbidden"


class TargetNotAllowed(AppError):
    status_code, code, title = 403, "target_not_allowed", "Target not allowed"


class CallbackNotAllowed(AppError):
    status_code, code, title = 403, "callback_not_allowed", "Callback URL not allowed"


class SourceNotAllowed(AppError):
    status_code, code, title = 403, "source_not_allowed", "Source not allowed"


class JobNotFound(AppError):
    status_code, code, title = 404, "job_not_found", "Job not found"


class NotFound(AppError):
    status_code, code, title = 404, "not_found", "Not found"


class MethodNotAllowed(AppError):
    status_code, code, title = 405, "method_not_allowed", "Method not allowed"


class JobNotCancellable(AppError):
    status_code, code, title = 409, "job_not_cancellable", "Job not cancellable"


class RequestTooLarge(AppError):
    status_code, code, title = 413, "request_too_large", "Request body too large"


class InvalidRequest(AppError):
    status_code, code, title = 422, "invalid_request", "Invalid request"


class IdempotencyConflict(AppError):
    status_code, code, title = 422, "idempotency_conflict", "Idempotency key reused"


class QuotaExceeded(AppError):
    status_code, code, title = 429, "quota_exceeded", "Too many active jobs"


class QueueFull(AppError):
    status_code, code, title = 429, "queue_full", "Queue full"


class StoreUnavailable(AppError):
    status_code, code, title = 503, "store_unavailable", "Job store unavailable"


class AuthUnavailable(AppError):
    status_code, code, title = 503, "auth_unavailable", "Access configuration unavailable"


class Internal(AppError):
    status_code, code, title = 500, "internal_error", "Internal error"


# Declared on routes via `responses=` so the OpenAPI document shows the one error model (the
# content type is fixed to problem+json by app.openapi). Errors sharing a status are listed
# together in its description.
def problem_responses(*errors: type[AppError]) -> dict[int | str, dict[str, object]]:
    by_status: dict[int, list[type[AppError]]] = {}
    for error in errors:
        by_status.setdefault(error.status_code, []).append(error)
    return {
        status: {
            "model": Problem,
            "description": "; ".join(f"{e.title} (`{e.code}`)" for e in group),
        }
        for status, group in sorted(by_status.items())
    }


def render(error: AppError, headers: dict[str, str] | None = None) -> JSONResponse:
    body = error.problem().model_dump(exclude_none=True)
    merged = {**(error.headers or {}), **(headers or {})}
    return JSONResponse(
        body, status_code=error.status_code, media_type=PROBLEM_JSON, headers=merged or None
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
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        error: AppError = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}"
        )
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
    elif exc.status_code == 404:
        error = NotFound(f"no route {request.url.path}")
    elif exc.status_code == 400:
        # FastAPI's answer to a body it could not decode at all (for example JSON nested deeper
        # than the parser's recursion limit): malformed, like any other undecodable body.
        error = MalformedRequest(f"the request body could not be parsed: {exc.detail}")
    else:
        error = _BY_STATUS.get(exc.status_code, Internal)(str(exc.detail))
    return render(error, headers)


def _allowed_methods(request: Request) -> str:
    """Every method the API documents at this path. Starlette's own 405 names only the first
    route whose path matched, so ``/v1/jobs`` would claim to allow POST alone."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods.update(method.upper() for method in operations)
    return ", ".join(sorted(methods))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("request.crashed", extra={"path": request.url.path})
    return render(Internal("the server failed to handle the request; it is logged"))


async def _on_redis(request: Request, exc: Exception) -> JSONResponse:
    log.warning("store.unavailable", extra={"error": repr(exc), "path": request.url.path})
    return render(StoreUnavailable(f"the job store (Redis) is not reachable: {exc}"))


_BY_STATUS: dict[int, type[AppError]] = {
    cls.status_code: cls
    for cls in (
        MalformedRequest, Unauthorized, Forbidden, MethodNotAllowed, RequestTooLarge,
        InvalidRequest, QueueFull, StoreUnavailable,
    )
}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _on_app_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(redis.ConnectionError, _on_redis)
    app.add_exception_handler(redis.TimeoutError, _on_redis)
    app.add_exception_handler(Exception, _on_unexpected)
