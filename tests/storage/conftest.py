"""Fixtures for the storage tests: an S3 storage on a fresh bucket, a fault-injecting proxy in front
of the loopback S3 server, and an endpoint where nothing listens."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

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
