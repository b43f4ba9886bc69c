"""Authentication (bearer token -> principal) and the request-body size limit, as ASGI middleware.

Both run before FastAPI parses anything: a dependency would only run after the body was read and
decoded, so an anonymous caller's malformed JSON would get 400 instead of 401, and an oversized
body would be read into memory before being refused.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import AuthUnavailable, RequestTooLarge, Unauthorized, render
from worker.access.audit import audit
from worker.access.principals import AccessConfigError, Principal, PrincipalRegistry

log = logging.getLogger("app.auth")


def authenticate(authorization: str | None, registry: PrincipalRegistry) -> Principal:
    """The principal of a valid ``Authorization`` header.

    Raises:
        Unauthorized: no header, not a bearer token, or no principal holds the token.
        AuthUnavailable: the principals file is invalid (every request is refused until fixed).
    """
    if registry.auth_disabled:
        return registry.anonymous
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send 'Authorization: Bearer <token>'")
    try:
        principal = registry.authenticate(token.strip())
    except AccessConfigError as exc:
        log.error("auth.config_invalid", extra={"error": str(exc)})
        raise AuthUnavailable(
            "the service's access configuration is invalid; an operator must fix it"
        ) from None
    if principal is None:
        raise Unauthorized("the bearer token is not valid")
    return principal


class BearerAuthMiddleware:
    """Puts the caller's :class:`Principal` in ``request.state.principal`` on protected paths."""

    def __init__(self, app: ASGIApp, registry: PrincipalRegistry, protected: str = "/v1/") -> None:
        self.app = app
        self.registry = registry
        self.protected = protected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.protected):
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization")
        try:
            scope.setdefault("state", {})["principal"] = authenticate(header, self.registry)
        except (Unauthorized, AuthUnavailable) as exc:
            audit(
                "request.refused",
                principal=None,
                reason=exc.code,
                method=scope["method"],
                path=scope["path"],
            )
            extra = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
            await render(exc, extra)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses request bodies over ``limit`` bytes with 413 before the app reads any of them.

    A declared ``Content-Length`` over the limit is refused at once; a body without one (chunked)
    is read up to the limit and refused as soon as it passes it. An accepted body is handed on
    from memory (it is at most ``limit`` bytes).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # after the body: disconnect notifications
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get("state", {}).get("principal")
        audit(
            "request.refused",
            principal=getattr(principal, "name", None),
            reason=RequestTooLarge.code,
            method=scope["method"],
            path=scope["path"],
        )
        error = RequestTooLarge(f"the request body is larger than {self.limit} bytes")
        # Close the connection: the rest of the body is not read.
        await render(error, {"Connection": "close"})(scope, receive, send)
