"""Where worker processes publish whether their Spark is ready (read by ``worker-ping``).

Each worker process keeps ``<prefix>:worker:<host>:<pid>`` in Redis, a JSON object with
``state`` (``starting``, ``ready`` or ``failed``), ``since`` and, once ready, ``seconds`` (how
long the warm start took); it expires unless refreshed (``worker.warm``). No Spark import here.
"""

from __future__ import annotations

import json
import os
import socket

STATE_TTL = 60  # seconds a published state lives without being refreshed


def worker_key(prefix: str, host: str | None = None, pid: int | None = None) -> str:
    """The Redis key of one worker process's published state."""
    return f"{prefix}:worker:{host or socket.gethostname()}:{pid or os.getpid()}"


def read_states(redis_url: str, prefix: str, host: str | None = None) -> dict[str, dict]:
    """Process id -> published state of the worker processes on ``host`` (default: this one)."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        pattern = worker_key(prefix, host, 1).rsplit(":", 1)[0] + ":*"
        states = {}
        for key in client.scan_iter(pattern, count=100):
            value = client.get(key)
            if value:
                states[key.decode().rsplit(":", 1)[1]] = json.loads(value)
        return states
    finally:
        client.close()
