"""The OpenAPI document, made to describe what the service really sends.

FastAPI documents every error response as ``application/json`` and adds its own 422 model; the
service answers every error as ``application/problem+json`` with the one :class:`Problem` body.
This rewrites each 4xx/5xx response of the document to that, and documents the headers that go
with some of them (``Retry-After`` on 429, ``WWW-Authenticate`` on 401).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.errors import PROBLEM_JSON

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_HEADERS = {
    "401": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    "429": {
        "Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}
    },
}


def _fix_errors(document: dict[str, Any]) -> None:
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if status[:1] not in {"4", "5"}:
                    continue
                response["content"] = {PROBLEM_JSON: {"schema": _PROBLEM_REF}}
                if status in _HEADERS:
                    response["headers"] = _HEADERS[status]
    schemas = document.get("components", {}).get("schemas", {})
    # Referenced by nothing once FastAPI's 422 models are replaced.
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)


def install_openapi(app: FastAPI) -> None:
    """Serve the corrected document at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            _fix_errors(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
