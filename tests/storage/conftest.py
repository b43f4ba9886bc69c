"""Fixtures for the storage tests: an S3 storage on a fresh bucket, a fault-injecting proxy in front
of the loopback S3 server, and an endpoint where nothing listens."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from storage_helpers import FaultProxy, QuietServer, fast_options, make_handler

from mdsloader.storage import S3Storage


@pytest.fixture
def s3(s3_endpoint: str, s3_bucket: str) -> S3Storage:
    """A storage at ``s3://<fresh bucket>/root`` on the loopback S3 server."""
    return S3Storage(s3_bucket.removeprefix("s3://"), "root", options=fast_options(s3_endpoint))


@pytest.fixture
def fault_proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    """A proxy on a loopback port in front of the S3 server, with injectable faults."""
    proxy = FaultProxy(upstream=s3_endpoint)
    server = QuietServer(("127.0.0.1", 0), make_handler(proxy))
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield proxy
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def closed_port_endpoint() -> str:
    """An endpoint on a loopback port where nothing listens (connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- gs:// and azure:// emulators (one of each per test session; see emulators.py) -------------


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A GCS emulator on loopback; returns its endpoint (``http://127.0.0.1:P``)."""
    import importlib.util

    from tests.conftest import require

    needs = {
        "gcp_storage_emulator": "gcp-storage-emulator (requirements/test.txt)",
        "google.cloud.storage": "google-cloud-storage (the gcs extra)",
    }
    for module, why in needs.items():
        require(importlib.util.find_spec(module) is not None, f"{why} is not installed")
    from emulators import start_gcs_emulator

    server = start_gcs_emulator(tmp_path_factory.mktemp("gcs"))
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture
def gcs_env(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The environment pointed at the emulator, without other Google settings; a fresh bucket.

    Returns ``gs://<bucket>``.
    """
    import uuid

    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "GCS_KEY", "GCS_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    client = storage.Client(project="test", credentials=AnonymousCredentials(),
                            client_options={"api_endpoint": gcs_emulator})  # fmt: skip
    client.create_bucket(bucket)
    return f"gs://{bucket}"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Azurite's blob service on loopback; returns its connection string."""
    import importlib.util

    from emulators import azurite_binary, azurite_connection_string, start_azurite

    from tests.conftest import require

    require(importlib.util.find_spec("azure.storage.blob") is not None,
            "azure-storage-blob (the azure extra) is not installed")  # fmt: skip
    binary = azurite_binary()
    require(binary is not None, "azurite is not installed (scripts/bootstrap npm-installs it)")
    server = start_azurite(str(binary), tmp_path_factory.mktemp("azurite"))
    yield azurite_connection_string(server.port)
    server.stop()


@pytest.fixture
def azure_env(azurite: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The environment pointed at Azurite (connection string only); a fresh container.

    Returns ``azure://<container>``.
    """
    import uuid

    from azure.storage.blob import BlobServiceClient

    for name in ("AZURE_ACCOUNT_NAME", "AZURE_ACCOUNT_ACCESS_KEY", "AZURE_STORAGE_ACCOUNT",
                 "AZURE_STORAGE_KEY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    container = f"c-{uuid.uuid4().hex[:12]}"
    BlobServiceClient.from_connection_string(azurite).create_container(container)
    return f"azure://{container}"


@pytest.fixture
def stalled_endpoint() -> Iterator[str]:
    """A loopback port that accepts connections and never answers (reads time out)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # the kernel completes handshakes; nobody ever reads or replies
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def proxy_to() -> Iterator[Callable[[str], FaultProxy]]:
    """Starts fault-injecting proxies in front of any loopback HTTP endpoint (an emulator)."""
    started: list[tuple[QuietServer, threading.Thread]] = []

    def start(upstream: str) -> FaultProxy:
        proxy = FaultProxy(upstream=upstream)
        server = QuietServer(("127.0.0.1", 0), make_handler(proxy))
        proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        started.append((server, thread))
        return proxy

    yield start
    for server, thread in started:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
