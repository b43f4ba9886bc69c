"""Helpers for the storage tests: fast S3 options, and a fault-injecting HTTP proxy for the loopback
S3 server (a real socket server that answers errors, stalls or truncates before forwarding).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from mdsloader.storage import S3Options

# Backoff in milliseconds keeps the retry tests fast while still going through real sleeps.
FAST = {"backoff_base": 0.001, "backoff_cap": 0.005, "timeout": 5.0}


def fast_options(endpoint: str, **overrides: object) -> S3Options:
    """S3 options against ``endpoint`` with tiny backoffs (and any overrides)."""
    return S3Options(endpoint_url=endpoint, region="us-east-1", **{**FAST, **overrides})  # type: ignore[arg-type]


@dataclass
class Fault:
    """What the proxy does to one request instead of (or before) forwarding it.

    kind: ``"status"`` (answer ``status`` with an S3 error body of ``code``), ``"delay"`` (sleep
    ``seconds``, then forward), ``"truncate"`` (forward, but cut the response body in half) or
    ``"replace"`` (forward, but answer 200 with ``body`` instead of the real response).
    """

    kind: str
    status: int = 503
    code: str = "SlowDown"
    seconds: float = 0.0
    body: bytes = b""
    match: Callable[[str, str], bool] = lambda _method, _path: True


@dataclass
class FaultProxy:
    """State shared with the proxy's handler threads."""

    upstream: str
    url: str = ""
    faults: list[Fault] = field(default_factory=list)
    always: Fault | None = None
    requests: list[tuple[str, str]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, *faults: Fault) -> None:
        """Apply ``faults``, in order, to the next matching requests."""
        with self.lock:
            self.faults.extend(faults)

    def take(self, method: str, path: str, body: bytes) -> Fault | None:
        with self.lock:
            self.requests.append((method, path))
            self.bodies.append(body)
            for i, fault in enumerate(self.faults):
                if fault.match(method, path):
                    return self.faults.pop(i)
            return self.always


def make_handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    upstream = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            fault = proxy.take(self.command, self.path, body)
            if fault is not None and fault.kind == "status":
                self._send_error(fault)
                return
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.seconds)
            self._forward(body, fault)

        def _send_error(self, fault: Fault) -> None:
            xml = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{fault.code}</Code>"
                f"<Message>injected</Message></Error>"
            ).encode()
            self._send(fault.status, xml)

        def _send(self, status: int, xml: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)

        def _forward(self, body: bytes, fault: Fault | None) -> None:
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            hop = ("connection", "expect")  # the proxy already answered any 100-continue
            headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if fault is not None and fault.kind == "replace":
                self._send(200, fault.body)
                return
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            declared = resp.getheader("Content-Length") if self.command == "HEAD" else len(data)
            self.send_header("Content-Length", str(declared))
            if fault is not None and fault.kind == "truncate":
                self.send_header("Connection", "close")
                self.close_connection = True
                data = data[: len(data) // 2]
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that timed out and hung up is expected in these tests


class RecordingSink:
    """A ``ByteSink`` that keeps what the current attempt delivered and counts restarts.

    Args:
        fail_after: Raise ``OSError`` (as a full disk would) once this many bytes have arrived.
    """

    def __init__(self, fail_after: int | None = None) -> None:
        self.pieces: list[bytes] = []
        self.restarts = 0
        self.fail_after = fail_after

    def restart(self) -> None:
        self.pieces = []
        self.restarts += 1

    def write(self, data: bytes) -> None:
        self.pieces.append(bytes(data))
        if self.fail_after is not None and len(self.data) >= self.fail_after:
            raise OSError(28, "No space left on device (injected)")

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)
