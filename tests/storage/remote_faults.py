"""Faults within the configured retries and timeout, written once for the SDK-backed remotes (GCS
and Azure; S3's own, more detailed, are in test_storage_s3_faults.py).

A backend's test module imports these (``from remote_faults import *``) and defines three
fixtures: ``origin``, the emulator's ``http://host:port`` (what a fault proxy forwards to);
``store_via``, a factory ``store_via(endpoint, **option_overrides)`` of a storage on a fresh
prefix that reaches the emulator's data through ``endpoint`` (a proxy, a silent or a closed port);
and ``store_in_a_missing_bucket``, a storage on the emulator whose bucket (container) does not
exist.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from storage_helpers import Fault, FaultProxy

from mdsloader.errors import ObjectNotFoundError, StorageUnavailableError

__all__ = [
    "proxied",
    "test_faults_a_missing_bucket_is_not_found",
    "test_faults_a_server_that_does_not_answer_times_out_within_the_budget",
    "test_faults_a_torn_body_is_read_again",
    "test_faults_an_absent_server_fails_fast",
    "test_faults_retries_are_bounded_and_the_error_names_endpoint_and_attempts",
    "test_faults_throttling_and_5xx_are_retried_until_they_succeed",
]


@pytest.fixture
def proxied(
    origin: str, store_via: Callable[..., Any], proxy_to: Callable[[str], FaultProxy]
) -> tuple[Any, FaultProxy]:
    """A storage with three retries behind a fault-injecting proxy, and the proxy."""
    proxy = proxy_to(origin)
    return store_via(proxy.url, retries=3), proxy


def test_faults_throttling_and_5xx_are_retried_until_they_succeed(proxied) -> None:
    storage, proxy = proxied
    storage.write_bytes("t.bin", b"payload")
    proxy.inject(
        Fault("status", status=429),
        Fault("status", status=503, code="ServerBusy"),
        Fault("status", status=500),
    )
    assert storage.read_bytes("t.bin") == b"payload"
    assert [m for m, _ in proxy.requests].count("GET") == 4


def test_faults_retries_are_bounded_and_the_error_names_endpoint_and_attempts(proxied) -> None:
    storage, proxy = proxied
    proxy.always = Fault("status", status=503, code="ServerBusy")
    with pytest.raises(StorageUnavailableError, match=r"after 4 attempts") as info:
        storage.read_bytes("t.bin")
    assert proxy.url in str(info.value)
    assert len(proxy.requests) == 4


def test_faults_a_torn_body_is_read_again(proxied) -> None:
    storage, proxy = proxied
    data = bytes(range(256)) * 400
    storage.write_bytes("torn.bin", data)
    proxy.inject(Fault("truncate", match=lambda method, _path: method == "GET"))
    assert storage.read_bytes("torn.bin") == data


def test_faults_a_server_that_does_not_answer_times_out_within_the_budget(
    store_via: Callable[..., Any], stalled_endpoint: str
) -> None:
    storage = store_via(stalled_endpoint, timeout=1.0, retries=1)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="after 2 attempts"):
        storage.read_bytes("index.json")
    # Two attempts of one second each (plus millisecond backoffs), not the library's minutes.
    assert 1.9 < time.monotonic() - started < 10


def test_faults_an_absent_server_fails_fast(
    store_via: Callable[..., Any], closed_port_endpoint: str
) -> None:
    storage = store_via(closed_port_endpoint, retries=2)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="after 3 attempts"):
        storage.read_bytes("index.json")
    assert time.monotonic() - started < 5


def test_faults_a_missing_bucket_is_not_found(store_in_a_missing_bucket: Any) -> None:
    storage = store_in_a_missing_bucket
    with pytest.raises(ObjectNotFoundError, match=re.escape(storage.child_url("index.json"))):
        storage.read_bytes("index.json")
    with pytest.raises(ObjectNotFoundError):
        storage.list()
    assert not storage.exists("index.json")
