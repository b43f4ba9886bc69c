"""Emulators for the gs:// and azure:// tests, run as real servers on loopback.

- GCS: ``gcp-storage-emulator`` (pip), reached through ``STORAGE_EMULATOR_HOST``. It accepts any
  credentials, so :class:`TokenServer` stands in for Google's OAuth token endpoint: a service
  account file whose ``token_uri`` points at it proves that ``GOOGLE_APPLICATION_CREDENTIALS`` is
  honoured, and a refusing token server is the bad-credentials case.
- Azure: Azurite (npm, installed into ``.tools/`` by ``scripts/bootstrap``) with the well-known
  development account, reached through a connection string.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent.parent

AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's published development key (not a secret: it is in Microsoft's documentation).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class ServerProcess:
    """A child process serving on a loopback port; stopped (and reaped) by :meth:`stop`."""

    def __init__(self, argv: list[str], port: int, log: Path, cwd: Path | None = None) -> None:
        self.port = port
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        # Its own process group, so that stop() also ends what a launcher script started.
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
        )
        try:
            wait_for_port(port, timeout=30)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


def start_gcs_emulator(workdir: Path) -> ServerProcess:
    """``python -m gcp_storage_emulator start --in-memory`` on a free loopback port."""
    port = free_port()
    argv = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
            "--port", str(port), "--in-memory"]  # fmt: skip
    return ServerProcess(argv, port, workdir / "gcs-emulator.log")


def azurite_binary() -> str | None:
    """The ``azurite-blob`` launcher: ``.tools/`` (scripts/bootstrap), else on ``PATH``."""
    local = ROOT / ".tools" / "node_modules" / ".bin" / "azurite-blob"
    return str(local) if local.exists() else shutil.which("azurite-blob")


def start_azurite(binary: str, workdir: Path) -> ServerProcess:
    """Azurite's blob service, in memory, on a free loopback port."""
    port = free_port()
    argv = [
        binary,
        "--silent",
        "--inMemoryPersistence",
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--loose",
    ]
    # No --location with --inMemoryPersistence (Azurite refuses both); run it in workdir instead,
    # so that nothing it writes lands in the repository.
    return ServerProcess(argv, port, workdir / "azurite.log", cwd=workdir)


def azurite_connection_string(port: int, key: str = AZURITE_KEY) -> str:
    """A connection string for Azurite on ``port`` (``UseDevelopmentStorage`` fixes 10000)."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


class TokenServer:
    """An OAuth2 token endpoint on loopback: grants a bearer token, or refuses when told to."""

    def __init__(self) -> None:
        self.refuse = False
        self.grants = 0
        self.refusals = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if server.refuse:
                    server.refusals += 1
                    status = 400
                    body = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
                else:
                    server.grants += 1
                    status = 200
                    body = {"access_token": f"tok-{server.grants}", "expires_in": 3600,
                            "token_type": "Bearer"}  # fmt: skip
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/token"
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)


def write_service_account(path: Path, token_uri: str) -> Path:
    """A service-account credentials file (fresh RSA key) whose tokens come from ``token_uri``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "mds-tests",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "loader@mds-tests.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))
    return path


def azurite_origin(connection_string: str) -> str:
    """``http://127.0.0.1:P`` of the BlobEndpoint in an Azurite connection string."""
    fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    scheme, _, rest = fields["BlobEndpoint"].partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
