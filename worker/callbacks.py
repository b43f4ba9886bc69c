"""Completion callbacks: a signed POST of the job to its ``callback_url`` when it reaches a final
state, retried with backoff for a bounded time, each attempt recorded on the job.

Delivery is driven by an outbox in Redis: the store adds the job to ``<prefix>:callbacks`` in the
same transaction that moves it to a final state (so no final state is ever missed, whichever
process made it), and a :class:`CallbackDispatcher` thread in each worker claims due entries,
posts, and schedules the next attempt. A claim is a lease (the entry's score moves past the
attempt's timeout), so a worker that dies mid-delivery only delays it.

No server-side request forgery: the URL's host must be on ``APP_CALLBACK_ALLOWED_HOSTS``, and every
address it resolves to must be public unless it lies in ``APP_CALLBACK_ALLOWED_NETWORKS``; checked
at submission and again before each attempt (DNS may have changed), and redirects are not
followed.

The body is the job as ``GET /v1/jobs/{id}`` returns it, without its ``callbacks`` attempts (a
receiver must not depend on their count). Headers::

    X-MDS-Convert-Timestamp: 1733140800
    X-MDS-Convert-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import redis

from worker.jobs import (
    FINAL_STATES,
    CallbackAttempt,
    JobNotFoundError,
    JobRecord,
    RedisJobStore,
    utcnow,
)
from worker.settings import SharedSettings

log = logging.getLogger("worker.callbacks")
SIGNATURE_HEADER = "X-MDS-Convert-Signature"
TIMESTAMP_HEADER = "X-MDS-Convert-Timestamp"
Resolver = Callable[[str, int], list[str]]


class CallbackNotAllowedError(ValueError):
    """The callback URL is malformed, its host is not allowed, or it resolves to an address in a
    private, loopback, link-local or otherwise non-public range that is not explicitly allowed."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class CallbackPolicy:
    """Which callback URLs may be called (see the module docstring)."""

    allowed_hosts: tuple[str, ...] = ()
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def from_settings(cls, settings: SharedSettings) -> CallbackPolicy:
        networks = []
        for text in settings.callback_allowed_networks:
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError as exc:
                raise ValueError(f"APP_CALLBACK_ALLOWED_NETWORKS: {exc}") from None
        hosts = tuple(h.lower() for h in settings.callback_allowed_hosts)
        return cls(hosts, tuple(networks))

    def check(self, url: str) -> list[str]:
        """The addresses ``url`` may be called at; CallbackNotAllowedError otherwise."""
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise CallbackNotAllowedError("callback_url must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise CallbackNotAllowedError("callback_url must not carry credentials")
        host = parts.hostname.lower()
        if not any(_host_matches(host, pattern) for pattern in self.allowed_hosts):
            raise CallbackNotAllowedError(
                f"callback host {host!r} is not in the allowed callback hosts"
                + ("" if self.allowed_hosts else " (none is configured)")
            )
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = self.resolver(host, port)
        except OSError as exc:
            raise CallbackNotAllowedError(
                f"callback host {host!r} does not resolve: {exc}"
            ) from None
        if not addresses:
            raise CallbackNotAllowedError(f"callback host {host!r} does not resolve")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if address.is_global and not address.is_multicast:
                continue
            if any(address in network for network in self.allowed_networks):
                continue
            raise CallbackNotAllowedError(
                f"callback host {host!r} resolves to {address}, a non-public address "
                "(allow its network explicitly with APP_CALLBACK_ALLOWED_NETWORKS)"
            )
        return addresses


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and host != pattern[2:]
    return host == pattern


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 over ``b"<timestamp>." + body``."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(
    secret: bytes, timestamp: str, body: bytes, signature: str, *, tolerance: int = 300
) -> bool:
    """What a receiver does: check the signature and that the timestamp is recent."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - stamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


@dataclass(frozen=True)
class DeliverySettings:
    secret: bytes
    timeout: float = 10.0
    max_attempts: int = 8
    max_seconds: float = 600.0
    backoff_cap: float = 60.0


_CLAIM_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], id) end
return due
"""


class CallbackDispatcher(threading.Thread):
    """Delivers due callbacks from the store's outbox, until stopped."""

    def __init__(
        self,
        store: RedisJobStore,
        policy: CallbackPolicy,
        delivery: DeliverySettings,
        *,
        interval: float = 0.5,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(name="callback-dispatcher", daemon=True)
        self.store, self.policy, self.delivery, self.interval = store, policy, delivery, interval
        self.client = client or httpx.Client(timeout=delivery.timeout, follow_redirects=False)
        self.stopped = threading.Event()
        self._claim = store.client.register_script(_CLAIM_LUA)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.run_once()
            except redis.RedisError as exc:  # Redis is down: the outbox waits
                log.debug("callbacks.poll_failed", extra={"error": repr(exc)})

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=self.delivery.timeout + 5)

    def run_once(self) -> int:
        """Deliver every due callback once; returns how many were attempted."""
        now = time.time()
        lease = now + self.delivery.timeout + 5
        due = self._claim(keys=[self.store.callbacks_key], args=[now, lease, 10])
        for raw in due:
            self.attempt(raw.decode() if isinstance(raw, bytes) else str(raw))
        return len(due)

    def attempt(self, job_id: str) -> None:
        try:
            record = self.store.get(job_id)
        except JobNotFoundError:
            self.store.client.zrem(self.store.callbacks_key, job_id)
            return
        url = record.request.callback_url
        if url is None or record.state not in FINAL_STATES:
            self.store.client.zrem(self.store.callbacks_key, job_id)
            return
        number = len(record.callbacks) + 1
        status, error = self._post(url, record)
        delivered = status is not None and 200 <= status < 300
        elapsed = (utcnow() - (record.finished_at or utcnow())).total_seconds()
        give_up = not delivered and (
            number >= self.delivery.max_attempts or elapsed >= self.delivery.max_seconds
        )
        entry = CallbackAttempt(
            attempt=number, at=utcnow(), status_code=status, error=error,
            delivered=delivered, gave_up=give_up,
        )  # fmt: skip
        self.store.update(job_id, lambda r: r.callbacks.append(entry), expected=FINAL_STATES)
        log.info(
            "callbacks.attempt",
            extra={"job_id": job_id, "attempt": number, "status": status, "error": error,
                   "delivered": delivered, "gave_up": give_up},
        )  # fmt: skip
        if delivered or give_up:
            self.store.client.zrem(self.store.callbacks_key, job_id)
        else:
            delay = min(self.delivery.backoff_cap, 2.0 ** (number - 1))
            self.store.client.zadd(self.store.callbacks_key, {job_id: time.time() + delay})

    def _post(self, url: str, record: JobRecord) -> tuple[int | None, str | None]:
        try:
            self.policy.check(url)  # again: DNS may have changed since the submission
        except CallbackNotAllowedError as exc:
            return None, f"refused: {exc}"
        body = record.model_dump_json(exclude={"callbacks"}).encode()
        stamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(stamp),
            SIGNATURE_HEADER: sign(self.delivery.secret, stamp, body),
            "User-Agent": "mds-convert-callback/1",
        }
        try:
            response = self.client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300]
        error = None if response.is_success else f"HTTP {response.status_code}"
        return response.status_code, error


def pending(store: RedisJobStore) -> Iterable[str]:
    """Job ids whose callback is not delivered (nor given up) yet."""
    return [i.decode() for i in store.client.zrange(store.callbacks_key, 0, -1)]


def start_dispatcher(settings: SharedSettings) -> CallbackDispatcher | None:
    """Start a dispatcher for these settings; None (logged) when callbacks are not configured."""
    secret = settings.callback_secret
    if secret is None:
        log.info("callbacks.disabled (no APP_CALLBACK_SECRET)")
        return None
    store = RedisJobStore.from_url(settings.redis_url, prefix=settings.redis_prefix)
    dispatcher = CallbackDispatcher(
        store,
        CallbackPolicy.from_settings(settings),
        DeliverySettings(
            secret=secret.get_secret_value().encode(),
            timeout=settings.callback_timeout,
            max_attempts=settings.callback_max_attempts,
            max_seconds=settings.callback_max_seconds,
        ),
    )
    dispatcher.start()
    return dispatcher
