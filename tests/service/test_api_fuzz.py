"""API fuzzing: schemathesis drives the live app from its own ``/openapi.json``.

Every operation is called with generated valid and invalid input, once with a valid token and
once with none, and every response is checked by all of schemathesis's checks (no server error,
status codes, content types, headers and bodies as documented, invalid data refused, valid data
accepted, unsupported methods answered with 405 and ``Allow``, ...).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, is_check_class

from app.main import create_app
from app.settings import AppSettings
from tests.conftest import free_port
from tests.service.conftest import TOKEN, LiveServer, RecordingEnqueuer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ALL_CHECKS = [check for check in CHECKS.get_all() if not is_check_class(check)]


@pytest.fixture(scope="module")
def fuzz_server(redis_server, tmp_path_factory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("fuzz")
    fuzz_settings = AppSettings(
        redis_url=redis_server.url,
        redis_prefix="fuzz",
        celery_queue="fuzz-q",
        api_tokens=[TOKEN],
        allowed_targets=["s3://datasets/ok", str(root)],
        outbox_delay=60,
        log_json=False,
        max_active_jobs=10_000,
    )
    with LiveServer(create_app(fuzz_settings, enqueue=RecordingEnqueuer()), free_port()) as server:
        yield server


def _document() -> dict:
    # The document the live app serves (test_the_fuzzed_document_is_the_served_one), built here
    # at collection: schemathesis makes one test per operation before any fixture runs (its
    # fixture-based loader does not work with this pytest).
    return create_app(AppSettings(api_tokens=[TOKEN]), enqueue=RecordingEnqueuer()).openapi()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_fuzzed_document_is_the_served_one(fuzz_server: LiveServer) -> None:
    with fuzz_server.client() as client:
        assert client.get("/openapi.json").json() == DOCUMENT
FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same examples on every run: a failure reproduces
)


@schema.parametrize()
@FUZZ
def test_with_a_valid_token(case, fuzz_server: LiveServer) -> None:
    case.call_and_validate(
        base_url=fuzz_server.url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=ALL_CHECKS,
    )


@schema.parametrize()
@FUZZ
def test_without_a_token(case, fuzz_server: LiveServer) -> None:
    case.call_and_validate(base_url=fuzz_server.url, checks=ALL_CHECKS)
