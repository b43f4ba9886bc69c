"""Shared test fixtures: real services on loopback, started once per test session.

A fixture whose prerequisite is missing skips locally but fails under ``CI=true`` (see ``require``),
so CI can never go green by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Spark and the S3 server bind to loopback only; workers use this interpreter.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def require(ok: bool, reason: str) -> None:
    """Skip when a prerequisite is missing, but fail under CI where everything must be present."""
    if ok:
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"prerequisite missing under CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """A private redis-server on a free loopback port that a test may stop and restart."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                "--save", "", "--appendonly", "yes", "--dir", str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto) on loopback; boto3 reaches it through endpoint_url."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # pragma: no cover - depends on the environment
        require(False, "moto[server] is not installed")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        S3_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "S3_ENDPOINT_URL")


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the loopback S3 server; returns ``s3://<bucket>``."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """One local[2] SparkSession for the whole test session (a session costs ~6 s to start)."""
    require(shutil.which("java") is not None, "java is not installed (Spark needs it)")
    try:
        from pyspark.sql import SparkSession
    except ImportError:  # pragma: no cover
        require(False, "pyspark is not installed")
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("mds-convert-tests")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def reference():
    """The reference implementation (mosaicml-streaming), used only as a test oracle."""
    try:
        import streaming
    except ImportError as exc:  # pragma: no cover
        require(False, f"mosaicml-streaming is not importable: {exc}")
    return streaming


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary directory outside pytest's tmp tree (short paths for Spark and Redis)."""
    path = Path(tempfile.mkdtemp(prefix="mds-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


_reference_blocks: list = []


def _track_reference_shared_memory() -> bool:
    """Record every SharedMemory block the reference opens in this process (once per session)."""
    try:
        from streaming.base.shared import memory
    except ImportError:  # the oracle is not installed: nothing to track
        return False
    if not getattr(memory.SharedMemory, "_mds_tracked", False):
        original = memory.SharedMemory.__init__

        def tracked(self, *args, **kwargs) -> None:
            original(self, *args, **kwargs)
            _reference_blocks.append(self)

        memory.SharedMemory.__init__ = tracked
        memory.SharedMemory._mds_tracked = True
    return True


@pytest.fixture(scope="module", autouse=True)
def _release_reference_shared_memory() -> Iterator[None]:
    """Close (and unlink) the reference's shared memory when each test module ends.

    The reference registers every block it opens with ``atexit`` and keeps it open until the
    process exits: over the whole suite that is some 20,000 open file descriptors, the machine's
    limit, after which every test fails with "Too many open files".
    """
    import atexit

    tracking = _track_reference_shared_memory()
    yield
    if not tracking:
        return
    while _reference_blocks:
        block = _reference_blocks.pop()
        atexit.unregister(block.cleanup)
        try:
            block.cleanup()
        except (OSError, BufferError):  # already unlinked elsewhere, or still viewed: leave it
            pass
