"""S3Storage under failure: throttling, 5xx, stalls, torn bodies and denials injected by a real
proxy on loopback; an endpoint where nothing listens; and a missing boto3."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from storage_helpers import Fault, FaultProxy, RecordingSink, fast_options

from mdsloader.errors import (
    AccessDeniedError,
    MissingExtraError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from mdsloader.storage import S3Storage

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _through(proxy: FaultProxy, bucket: str, **overrides: object) -> S3Storage:
    options = fast_options(proxy.url, **overrides)
    return S3Storage(bucket.removeprefix("s3://"), "p", options=options)


def test_throttling_is_retried_until_it_succeeds(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    store = _through(fault_proxy, s3_bucket, retries=3)
    fault_proxy.inject(Fault("status", 503, "SlowDown"), Fault("status", 503, "SlowDown"))
    store.write_bytes("a.bin", b"payload")
    assert [m for m, _ in fault_proxy.requests] == ["PUT", "PUT", "PUT"]

    fault_proxy.inject(Fault("status", 429, "TooManyRequests"), Fault("status", 500, "Internal"))
    assert store.read_bytes("a.bin") == b"payload"
    assert len(fault_proxy.requests) == 6


def test_retries_are_bounded_and_the_error_names_endpoint_and_attempts(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    store = _through(fault_proxy, s3_bucket, retries=2)
    fault_proxy.always = Fault("status", 503, "ServiceUnavailable")
    with pytest.raises(StorageUnavailableError, match="after 3 attempts") as info:
        store.read_bytes("a.bin")
    assert fault_proxy.url in str(info.value)
    assert "s3://" in str(info.value)
    assert len(fault_proxy.requests) == 3


def test_zero_retries_means_one_attempt(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    store = _through(fault_proxy, s3_bucket, retries=0)
    fault_proxy.always = Fault("status", 502, "BadGateway")
    with pytest.raises(StorageUnavailableError, match="after 1 attempt:"):
        store.size("a.bin")
    assert len(fault_proxy.requests) == 1


def test_access_denied_is_not_retried(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    store = _through(fault_proxy, s3_bucket, retries=4)
    fault_proxy.inject(Fault("status", 403, "AccessDenied"))
    with pytest.raises(AccessDeniedError, match="AccessDenied"):
        store.read_bytes("secret.bin")
    assert len(fault_proxy.requests) == 1


def test_missing_object_is_not_retried(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    store = _through(fault_proxy, s3_bucket, retries=4)
    with pytest.raises(ObjectNotFoundError):
        store.read_bytes("nope.bin")
    assert len(fault_proxy.requests) == 1


def test_a_stalled_response_times_out_and_is_retried(fault_proxy: FaultProxy, s3_bucket: str):
    store = _through(fault_proxy, s3_bucket, retries=2, timeout=0.3)
    store.write_bytes("a.bin", b"slow")
    fault_proxy.inject(Fault("delay", seconds=1.0))
    started = time.monotonic()
    assert store.read_bytes("a.bin") == b"slow"
    assert time.monotonic() - started < 1.0  # the stalled request was abandoned, not awaited
    assert len(fault_proxy.requests) == 3  # PUT, stalled GET, GET


def test_a_torn_response_body_is_read_again(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    store = _through(fault_proxy, s3_bucket, retries=2)
    store.write_bytes("a.bin", bytes(range(200)) * 50)
    fault_proxy.inject(Fault("truncate"))
    assert store.read_bytes("a.bin") == bytes(range(200)) * 50
    assert [m for m, _ in fault_proxy.requests] == ["PUT", "GET", "GET"]


def test_a_failed_part_of_a_multipart_upload_is_retried(
    fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    store = _through(
        fault_proxy, s3_bucket, retries=2, multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB
    )
    data = bytes(i % 253 for i in range(11 * MIB))
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    # boto3 wraps the failed part's error in S3UploadFailedError; it must still count as transient.
    fault_proxy.inject(
        Fault("status", 503, "SlowDown", match=lambda _method, path: "partNumber=2" in path)
    )
    store.upload_file(str(src), "big.bin")
    assert store.read_bytes("big.bin") == data
    assert fault_proxy.faults == []  # the fault was hit
    assert sum("partNumber=2" in path for _, path in fault_proxy.requests) >= 2


def test_unreachable_endpoint_raises_unavailable_after_the_retries(
    closed_port_endpoint: str,
) -> None:
    store = S3Storage("bucket", "p", options=fast_options(closed_port_endpoint, retries=2))
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="after 3 attempts") as info:
        store.read_bytes("index.json")
    assert closed_port_endpoint in str(info.value)
    assert time.monotonic() - started < 5
    with pytest.raises(StorageUnavailableError):
        store.exists("index.json")  # an outage is not "missing"


def test_boto3_lost_after_construction_also_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, s3_endpoint: str
) -> None:
    store = S3Storage("bucket", options=fast_options(s3_endpoint))
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(MissingExtraError, match=r"mds-loader\[s3\]"):
        store.read_bytes("x")


def _delete_result(key: str, code: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<DeleteResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Error><Key>{key}</Key><Code>{code}</Code><Message>injected</Message></Error>"
        "</DeleteResult>"
    ).encode()


def _is_delete(method: str, path: str) -> bool:
    return method == "POST" and "?delete" in path


def test_keys_that_failed_inside_a_delete_batch_are_retried(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    store = _through(fault_proxy, s3_bucket, retries=2)
    for i in range(5):
        store.write_bytes(f"job/{i}.bin", b"x")
    # The batch is really deleted, but the answer claims one key hit a transient error.
    body = _delete_result("p/job/3.bin", "InternalError")
    fault_proxy.inject(Fault("replace", body=body, match=_is_delete))
    assert store.delete_prefix("job/") == 5
    deletes = [b for (m, p), b in zip(fault_proxy.requests, fault_proxy.bodies) if _is_delete(m, p)]
    assert len(deletes) == 2
    assert deletes[1].count(b"<Key>") == 1  # only the failed key was sent again
    assert b"p/job/3.bin" in deletes[1]
    assert store.list() == []


def test_a_permanent_per_key_delete_failure_is_reported(
    fault_proxy: FaultProxy, s3_bucket: str
) -> None:
    store = _through(fault_proxy, s3_bucket, retries=2)
    store.write_bytes("job/0.bin", b"x")
    body = _delete_result("p/job/0.bin", "AccessDenied")
    fault_proxy.inject(Fault("replace", body=body, match=_is_delete))
    with pytest.raises(StorageError, match=r"AccessDenied") as info:
        store.delete_prefix("job/")
    assert not isinstance(info.value, StorageUnavailableError)
    assert sum(_is_delete(m, p) for m, p in fault_proxy.requests) == 1


def test_a_body_torn_mid_stream_restarts_the_sink(fault_proxy: FaultProxy, s3_bucket: str):
    store = _through(fault_proxy, s3_bucket, retries=2)
    data = bytes(range(256)) * 4096  # 1 MiB: the cut lands after several pieces
    store.write_bytes("a.bin", data)
    fault_proxy.inject(Fault("truncate"))
    sink = RecordingSink()
    assert store.stream_to("a.bin", sink, chunk_size=64 << 10) == len(data)
    assert sink.data == data  # nothing of the torn attempt survives the restart
    assert sink.restarts == 2
    assert [m for m, _ in fault_proxy.requests] == ["PUT", "GET", "GET"]  # no HEAD either


def test_a_failing_sink_is_not_retried(fault_proxy: FaultProxy, s3_bucket: str) -> None:
    store = _through(fault_proxy, s3_bucket, retries=3)
    store.write_bytes("a.bin", bytes(300_000))
    with pytest.raises(OSError, match="No space left"):
        store.stream_to("a.bin", RecordingSink(fail_after=100_000), chunk_size=64 << 10)
    assert [m for m, _ in fault_proxy.requests] == ["PUT", "GET"]


def test_a_stream_that_keeps_failing_is_unavailable(fault_proxy: FaultProxy, s3_bucket: str):
    store = _through(fault_proxy, s3_bucket, retries=1)
    store.write_bytes("a.bin", bytes(300_000))
    fault_proxy.inject(Fault("truncate"), Fault("truncate"))
    sink = RecordingSink()
    with pytest.raises(StorageUnavailableError, match="after 2 attempts"):
        store.stream_to("a.bin", sink)
    assert sink.restarts == 2


def test_a_small_download_is_one_get_and_a_torn_one_is_redone(
    fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    store = _through(fault_proxy, s3_bucket, retries=2)
    data = bytes(range(256)) * 4096
    store.write_bytes("a.bin", data)
    dest = tmp_path / "a.bin"
    store.download_file("a.bin", str(dest))
    assert dest.read_bytes() == data
    assert [m for m, _ in fault_proxy.requests] == ["PUT", "GET"]  # no HEAD, no ranges
    fault_proxy.inject(Fault("truncate"))
    store.download_file("a.bin", str(dest))
    assert dest.read_bytes() == data  # the torn attempt's bytes were truncated away
    assert [m for m, _ in fault_proxy.requests] == ["PUT", "GET", "GET", "GET"]


def test_a_download_above_the_threshold_switches_to_ranged_gets(
    fault_proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    store = _through(
        fault_proxy, s3_bucket, multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB
    )
    data = bytes(i % 251 for i in range(11 * MIB))
    store.write_bytes("big.bin", data)
    fault_proxy.requests.clear()
    dest = tmp_path / "big.bin"
    store.download_file("big.bin", str(dest))
    assert dest.read_bytes() == data
    # The first GET only revealed the size (its body was dropped); then s3transfer fetched one
    # ranged GET per 5 MiB part. A single streamed download would have been one GET.
    assert [m for m, _ in fault_proxy.requests] == ["GET"] * (1 + 3)
