"""The console's pages: server-rendered shells; their data come from ``/v1`` in the browser.

The pages hold no job data and need no token: each page's script reads the token the user signed
in with from ``sessionStorage`` (this tab only, gone when it closes) and sends it as a bearer
header to ``/v1``, where the same principals, scopes and visibility rules apply as for any client.
A token therefore never travels in a URL or a cookie, and no cookie means no cross-site request
can act with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import jinja2
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from app.schemas import JobCreate
from mdsloader.mds.hashing import supported_hashes
from worker.jobs import JobState

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value rendered into a page is escaped
        undefined=jinja2.StrictUndefined,
    )
)
router = APIRouter(prefix="/ui", include_in_schema=False)
ConsoleJobId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


def _page(request: Request, name: str, title: str, **context: object) -> HTMLResponse:
    return templates.TemplateResponse(
        request, name, {"title": title, "states": [s.value for s in JobState], **context}
    )


@router.get("")
def console_root() -> RedirectResponse:
    return RedirectResponse("/ui/jobs", status_code=307)


@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request) -> HTMLResponse:
    return _page(request, "signin.html", "Sign in", script="signin.js")


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request) -> HTMLResponse:
    return _page(request, "jobs.html", "Jobs", script="jobs.js")


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: ConsoleJobId) -> HTMLResponse:
    return _page(request, "job.html", f"Job {job_id}", script="job.js", job_id=job_id)


@router.get("/submit", response_class=HTMLResponse)
def submit_page(request: Request) -> HTMLResponse:
    return _page(
        request,
        "submit.html",
        "New conversion",
        script="submit.js",
        compressions=["zstd", "zstd:3", "zstd:7", "gz", "bz2", "br", "snappy"],
        hashes=sorted(supported_hashes()),
        modes=_choices("mode"),
        null_policies=_choices("null_policy"),
    )


def _choices(field: str) -> list[str]:
    """The values the API accepts for a ``Literal`` field of the request (the form offers them)."""
    return [str(value) for value in get_args(JobCreate.model_fields[field].annotation)]
