"""The web console at ``/ui``: pages, static files and their security headers."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.ui.routes import STATIC_DIR, router
from app.ui.security import ConsoleHeaders

__all__ = ["install_console"]


def install_console(app: FastAPI) -> None:
    """Serve the console's pages and static files, each with the console's security headers."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    app.add_middleware(ConsoleHeaders)
