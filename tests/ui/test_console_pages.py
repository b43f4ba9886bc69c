"""The console's pages without a worker: security headers, no inline script or handler anywhere,
escaping, and development use with auth disabled (in the browser)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.settings import AppSettings
from app.ui.routes import STATIC_DIR
from tests.conftest import free_port
from tests.service.conftest import LiveServer, RecordingEnqueuer
from tests.ui.conftest import screenshot

pytestmark = pytest.mark.integration

PAGES = ["/ui/signin", "/ui/jobs", "/ui/submit", "/ui/jobs/0123abcd"]


@pytest.fixture
def open_server(redis_server, prefix: str, tmp_path: Path) -> LiveServer:
    settings = AppSettings(
        redis_url=redis_server.url, redis_prefix=prefix, celery_queue=f"{prefix}-q",
        auth_disabled=True, log_json=False, allowed_targets=[str(tmp_path)],
    )
    with LiveServer(create_app(settings, enqueue=RecordingEnqueuer()), free_port()) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    import uuid

    return f"uip{uuid.uuid4().hex[:8]}"


def test_pages_send_security_headers(open_server: LiveServer) -> None:
    with httpx.Client(base_url=open_server.url) as client:
        for path in [*PAGES, "/ui/static/console.js", "/ui/static/console.css"]:
            response = client.get(path)
            assert response.status_code == 200, path
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
            assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
            if not path.startswith("/ui/static/"):
                assert response.headers["cache-control"] == "no-store"
                assert response.headers["content-type"].startswith("text/html")
        # /v1 is untouched (a JSON API, not a page).
        assert "content-security-policy" not in client.get("/v1/whoami").headers
        assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/jobs"


def test_no_inline_script_style_or_event_handler(open_server: LiveServer) -> None:
    inline_handler = re.compile(r"\son[a-z]+\s*=", re.IGNORECASE)
    with httpx.Client(base_url=open_server.url) as client:
        for path in PAGES:
            html = client.get(path).text
            assert not inline_handler.search(html), path
            assert "style=" not in html and "<style" not in html, path
            for script in re.findall(r"<script[^>]*>(.*?)</script>", html, re.DOTALL):
                assert script.strip() == "", f"inline script in {path}"
    for source in STATIC_DIR.glob("*.js"):
        text = source.read_text()
        assert "innerHTML" not in text and "eval(" not in text, source.name
        assert "insertAdjacentHTML" not in text and "document.write" not in text, source.name


def test_the_token_field_can_never_go_into_a_url(open_server: LiveServer) -> None:
    # Were the page's script not to run, a GET form would put the token in the URL (and so in
    # access logs and history); a POST form puts it in a body that nothing logs.
    with httpx.Client(base_url=open_server.url) as client:
        html = client.get("/ui/signin").text
    form = re.search(r"<form[^>]*id=\"signin-form\"[^>]*>", html).group(0)
    assert 'method="post"' in form
    assert re.search(r'<input[^>]*type="password"[^>]*autocomplete="off"', html)


def test_the_job_id_in_a_page_url_is_escaped_or_refused(open_server: LiveServer) -> None:
    with httpx.Client(base_url=open_server.url) as client:
        assert client.get("/ui/jobs/%3Cb%3Ex").status_code == 422  # not an id: no page
        page = client.get("/ui/jobs/abc_DEF-123").text
        assert 'data-job-id="abc_DEF-123"' in page


def test_the_jobs_list_pages_newest_first(open_server: LiveServer, browser, tmp_path: Path):
    target = str(tmp_path / "datasets")
    with httpx.Client(base_url=open_server.url) as client:
        ids = []
        for n in range(23):
            response = client.post("/v1/jobs", json={"source_table": f"db.t{n}", "target": target})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    from playwright.sync_api import expect  # (the browser fixture requires playwright)

    context = browser.new_context(viewport={"width": 1360, "height": 700})
    page = context.new_page()
    try:
        page.goto(f"{open_server.url}/ui/jobs")
        rows = page.locator("#jobs-body tr")
        page.wait_for_selector("#jobs-body tr >> nth=19")
        assert rows.first.get_attribute("data-job-id") == ids[-1]  # newest first
        page.click("#older")
        page.wait_for_selector("#page-label:has-text('page 2')")
        expect(rows).to_have_count(3)  # (wait_for_function would need 'unsafe-eval': refused)
        assert [rows.nth(i).get_attribute("data-job-id") for i in range(3)] == ids[2::-1]
        assert page.is_disabled("#older")
        page.click("#newer")
        expect(rows).to_have_count(20)
    finally:
        context.close()


def test_the_console_works_with_auth_disabled(open_server: LiveServer, browser, tmp_path: Path):
    context = browser.new_context(viewport={"width": 1360, "height": 700})
    page = context.new_page()
    try:
        page.goto(f"{open_server.url}/ui/signin")  # no token needed: straight to the jobs
        page.wait_for_url(f"{open_server.url}/ui/jobs")
        page.wait_for_selector("#whoami:has-text('anonymous (auth disabled)')")
        assert page.is_hidden("#signout")
        page.wait_for_selector("#jobs-empty:visible")
        screenshot(page, tmp_path, "auth-disabled")
    finally:
        context.close()
