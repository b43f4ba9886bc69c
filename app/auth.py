"""Bearer-token authentication against the configured tokens."""

from __future__ import annotations

import hashlib
import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import Unauthorized, render
from app.settings import AppSettings

ANONYMOUS = "anonymous"


def check_bearer(authorization: str | None, settings: AppSettings) -> str:
    """Return a principal name for a valid ``Authorization`` header.

    Raises:
        Unauthorized: no header, not a bearer token, or not one of the configured tokens.
    """
    if settings.auth_disabled:
        return ANONYMOUS
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    presented = token.strip().encode()
    # Compare against every token in constant time, so timing says nothing about which matched.
    matches = [
        hmac.compare_digest(presented, t.get_secret_value().encode()) for t in settings.api_tokens
    ]
    if not any(matches):
        raise Unauthorized("the bearer token is not valid")
    # Named by a digest of the token, so it stays the same when the token list is reordered.
    return "token:" + hashlib.sha256(presented).hexdigest()[:12]


class BearerAuthMiddleware:
    """Checks the token before anything else (body parsing included) on protected paths.

    A middleware rather than a dependency: FastAPI parses the body before running dependencies,
    so a dependency would answer malformed JSON from an anonymous caller with 400 instead of 401.
    """

    def __init__(self, app: ASGIApp, settings: AppSettings, protected: str = "/v1/") -> None:
        self.app = app
        self.settings = settings
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.protected):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        try:
            scope.setdefault("state", {})["principal"] = check_bearer(header, self.settings)
        except Unauthorized as exc:
            await render(exc, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)
