"""Use the Redis at ``REDIS_URL`` when it answers; otherwise start a private one on loopback."""

from __future__ import annotations

from pathlib import Path

import redis

from quickstart_lib.processes import Supervisor, free_port, require_binary, wait_until


def redis_answers(url: str) -> bool:
    """Whether a Redis server answers PING at ``url`` within a second."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def ensure_redis(url: str, data_dir: Path, supervisor: Supervisor) -> tuple[str, bool]:
    """Return a reachable Redis URL and whether this call started the server.

    The private server keeps an append-only file under ``data_dir`` so job records survive a
    restart of the quick start (a new free port each time, the same data).
    """
    if redis_answers(url):
        return url, False
    binary = require_binary(
        "redis-server",
        "install it (apt-get install redis-server) or set REDIS_URL to a reachable server",
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    child = supervisor.spawn("redis", [
        binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
        "--appendonly", "yes", "--save", "", "--protected-mode", "yes",
    ], env={})  # fmt: skip
    started = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_answers(started), timeout=20, what="redis-server", child=child)
    return started, True
