"""Micro-benchmark of the storage backends (not collected by pytest).

Run: ``.venv/bin/python tests/storage/bench_storage.py``. The S3 numbers are against moto on
loopback, so they measure our client-side overhead and the transfer path, not real S3 latency.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import boto3
from moto.server import ThreadedMotoServer

from mdsloader.storage import LocalStorage, S3Options, S3Storage, Storage

MIB = 1 << 20
BIG = 32 * MIB


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def small_ops(store: Storage, label: str, n: int = 200, threads: int = 1) -> None:
    data = os.urandom(1024)
    keys = [f"small/{i:05d}" for i in range(n)]
    with ThreadPoolExecutor(threads) as pool:
        put = timed(lambda: list(pool.map(lambda k: store.write_bytes(k, data), keys)))
        get = timed(lambda: list(pool.map(store.read_bytes, keys)))
    print(f"{label:8s} 1 KiB x{n}, {threads} thread(s): {n / put:7.0f} PUT/s  {n / get:7.0f} GET/s")


def big_file(store: Storage, label: str, path: str) -> None:
    up = timed(lambda: store.upload_file(path, "big.bin"))
    down = timed(lambda: store.download_file("big.bin", path + ".back"))
    mb = BIG / MIB
    print(f"{label:8s} {mb:.0f} MiB file: up {mb / up:6.0f} MiB/s  down {mb / down:6.0f} MiB/s")


def listing(store: Storage, label: str, n: int = 2000) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.write_bytes(f"many/{i:05d}", b"x"), range(n)))
    listed = timed(lambda: store.list("many/"))
    deleted = timed(lambda: store.delete_prefix("many/"))
    print(
        f"{label:8s} {n} keys: list {listed * 1000:6.0f} ms  delete_prefix {deleted * 1000:6.0f} ms"
    )


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1"
    )
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "big.bin")
            with open(path, "wb") as f:
                f.write(os.urandom(BIG))
            run(endpoint, tmp, path)
    finally:
        server.stop()


def run(endpoint: str, tmp: str, path: str) -> None:
    s3 = S3Storage("bench", "b", options=S3Options(endpoint_url=endpoint))
    single = S3Options(endpoint_url=endpoint, multipart_threshold=1 << 40)
    parts = S3Options(
        endpoint_url=endpoint, multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB
    )
    local = LocalStorage(os.path.join(tmp, "local"))
    small_ops(s3, "s3")
    small_ops(s3, "s3", threads=8)
    small_ops(local, "local")
    big_file(S3Storage("bench", "single", options=single), "s3 1-PUT", path)
    big_file(S3Storage("bench", "parts", options=parts), "s3 8MiBx", path)
    big_file(local, "local", path)
    listing(s3, "s3")
    listing(local, "local")


if __name__ == "__main__":
    main()
