"""GCSStorage against the GCS emulator on loopback: the storage contract, credentials from
GOOGLE_APPLICATION_CREDENTIALS, faults (5xx, torn bodies, refused tokens, a stopped or silent
server) within the configured retries and timeout, and the GCS_KEY/GCS_SECRET HMAC route."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from emulators import TokenServer, start_gcs_emulator, write_service_account
from remote_contract import *  # noqa: F403 - the shared contract tests run against this backend
from remote_faults import *  # noqa: F403 - and the shared fault tests
from storage_helpers import Fault, fast_options

from mdsloader.errors import (
    AccessDeniedError,
    ObjectNotFoundError,
    StorageUnavailableError,
)
from mdsloader.storage import (
    GCSHmacStorage,
    GCSOptions,
    GCSStorage,
    S3Storage,
    Storage,
    open_storage,
)

pytestmark = pytest.mark.integration

FAST = {"backoff_base": 0.001, "backoff_cap": 0.005, "timeout": 5.0}


def gcs_at(bucket_url: str, endpoint: str, **overrides: object) -> GCSStorage:
    """A storage at ``<bucket_url>/root`` on ``endpoint`` with tiny backoffs."""
    options = GCSOptions(endpoint_url=endpoint, **{**FAST, **overrides})  # type: ignore[arg-type]
    return GCSStorage(bucket_url.removeprefix("gs://"), "root", options=options)


@pytest.fixture
def store(gcs_env: str, gcs_emulator: str) -> GCSStorage:
    """The contract's storage: ``gs://<fresh bucket>/root`` on the emulator."""
    return gcs_at(gcs_env, gcs_emulator)


@pytest.fixture
def origin(gcs_emulator: str) -> str:
    """Where the shared fault tests' proxy forwards to."""
    return gcs_emulator


@pytest.fixture
def store_via(gcs_env: str) -> Callable[..., GCSStorage]:
    """The shared fault tests' storages: the fresh bucket reached through another endpoint."""
    return lambda endpoint, **overrides: gcs_at(gcs_env, endpoint, **overrides)


@pytest.fixture
def store_in_a_missing_bucket(gcs_env: str, gcs_emulator: str) -> GCSStorage:
    return gcs_at("gs://no-such-bucket-5e1f", gcs_emulator)


@pytest.fixture
def token_server() -> Iterator[TokenServer]:
    server = TokenServer()
    yield server
    server.close()


def test_open_storage_reads_the_emulator_from_the_environment(gcs_env: str) -> None:
    storage = open_storage(f"{gcs_env}/ds", retries=2, timeout=7.0)
    assert isinstance(storage, GCSStorage)
    assert storage.options.endpoint_url.startswith("http://127.0.0.1:")
    assert (storage.options.retries, storage.options.timeout) == (2, 7.0)
    storage.write_bytes("index.json", b"{}")
    assert open_storage(f"{gcs_env}/ds/index.json").url == f"{gcs_env}/ds/index.json"
    assert storage.read_bytes("index.json") == b"{}"


def test_credentials_file_is_honoured(
    gcs_env: str, gcs_emulator: str, token_server: TokenServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    key_file = write_service_account(tmp_path / "sa.json", token_server.url)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    storage = open_storage(f"{gcs_env}/ds", retries=0)
    assert storage.options.credentials_file == str(key_file)
    storage.write_bytes("a.txt", b"signed")
    assert storage.read_bytes("a.txt") == b"signed"
    assert token_server.grants >= 1  # tokens came from the file's token_uri with its key


def test_refused_credentials_are_access_denied_at_once(
    gcs_env: str, gcs_emulator: str, token_server: TokenServer, tmp_path: Path
) -> None:
    # The emulator accepts any token; Google's token endpoint refusing the key is the real case.
    token_server.refuse = True
    key_file = write_service_account(tmp_path / "sa.json", token_server.url)
    storage = gcs_at(gcs_env, gcs_emulator, credentials_file=str(key_file), retries=3)
    started = time.monotonic()
    with pytest.raises(AccessDeniedError, match="invalid_grant"):
        storage.read_bytes("index.json")
    assert time.monotonic() - started < 5
    assert token_server.refusals == 1  # a refused key is final: not retried


def test_a_stopped_server_fails_fast_instead_of_retrying_for_minutes(
    gcs_env: str, tmp_path: Path
) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    server = start_gcs_emulator(tmp_path)
    endpoint = f"http://127.0.0.1:{server.port}"
    gcs.Client(project="t", credentials=AnonymousCredentials(),
               client_options={"api_endpoint": endpoint}).create_bucket("doomed")  # fmt: skip
    storage = gcs_at("gs://doomed", endpoint, retries=2, timeout=2.0)
    storage.write_bytes("index.json", b"{}")
    server.stop()
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="after 3 attempts"):
        storage.read_bytes("index.json")
    assert time.monotonic() - started < 10


def test_hmac_keys_select_the_s3_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GCS_KEY", "GOOG1EXAMPLE")
    monkeypatch.setenv("GCS_SECRET", "s3cr3t")
    storage = open_storage("gs://bkt/ds", retries=1, timeout=3.0)
    assert isinstance(storage, GCSHmacStorage)
    assert storage.url == "gs://bkt/ds" and storage.child_url("a") == "gs://bkt/ds/a"
    assert storage.options.endpoint_url == "https://storage.googleapis.com"
    assert storage.options.region == "auto"
    assert storage.options.access_key_id == "GOOG1EXAMPLE"
    assert "s3cr3t" not in repr(storage.options)


def test_hmac_route_round_trips_through_an_s3_api(s3_endpoint: str, s3_bucket: str) -> None:
    # GCS's XML API speaks S3; the loopback S3 server stands in for storage.googleapis.com.
    options = fast_options(s3_endpoint, access_key_id="testing", secret_access_key="testing")
    storage = GCSHmacStorage(s3_bucket.removeprefix("s3://"), "ds", options=options)
    assert isinstance(storage, Storage) and not isinstance(storage, S3Storage)
    storage.write_bytes("index.json", b"{}")
    sub = storage.sub("x")
    sub.write_bytes("a.bin", b"aa")
    assert isinstance(sub, GCSHmacStorage) and sub.child_url("a.bin") == f"{storage.url}/x/a.bin"
    assert storage.list() == ["index.json", "x/a.bin"] and storage.read_bytes("index.json") == b"{}"
    assert pickle.loads(pickle.dumps(storage)) == storage
    with pytest.raises(ObjectNotFoundError, match=r"gs://.*/ds/gone\.bin"):
        storage.read_bytes("gone.bin")


def test_conditional_writes_send_the_generation_and_report_412(proxied) -> None:
    # The emulator ignores generation preconditions, so this checks our half: the precondition
    # is on the request (0 for "absent", else the generation read) and a 412 reads as a conflict.
    storage, proxy = proxied
    assert storage.write_bytes_if("index.json", b"v1", version=None)
    data, generation = storage.read_versioned("index.json")
    assert data == b"v1" and int(generation) > 0
    assert storage.write_bytes_if("index.json", b"v2", version=generation)
    uploads = [path for method, path in proxy.requests if method == "POST" and "/upload/" in path]
    assert "ifGenerationMatch=0" in uploads[0]
    assert f"ifGenerationMatch={generation}" in uploads[1]
    proxy.inject(Fault("status", status=412, code="conditionNotMet"))
    assert not storage.write_bytes_if("index.json", b"v3", version=generation)
