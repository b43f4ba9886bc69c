"""Pure logic of the storage package: backoff, retry loop, error mapping, URL dispatch, paths."""

from __future__ import annotations

import subprocess
import sys

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from hypothesis import given
from hypothesis import strategies as st
from s3transfer.exceptions import RetriesExceededError

from mdsloader.errors import (
    AccessDeniedError,
    MissingExtraError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from mdsloader.storage import (
    LocalStorage,
    RetryPolicy,
    S3Options,
    S3Storage,
    clean_prefix,
    clean_relpath,
    join_relpath,
    open_storage,
    retry_call,
)
from mdsloader.storage.s3 import is_retryable_s3_error, map_s3_error


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns ``"ok"``."""

    def __init__(self, failures: int, exc: Exception) -> None:
        self.failures, self.exc, self.calls = failures, exc, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


# -- backoff and retry loop ------------------------------------------------------------------------


def test_backoff_is_full_jitter_under_a_doubling_capped_ceiling() -> None:
    policy = RetryPolicy(retries=10, base=0.5, cap=3.0)
    assert [policy.delay(i, rand=lambda: 1.0) for i in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(2, rand=lambda: 0.0) == 0.0
    assert policy.delay(2, rand=lambda: 0.25) == 0.5
    assert policy.delay(10_000, rand=lambda: 1.0) == 3.0  # no overflow for absurd counts
    delays = [policy.delay(3) for _ in range(200)]
    assert all(0 <= d <= 3.0 for d in delays)
    assert len(set(delays)) > 150  # jittered, not a fixed schedule
    assert policy.attempts == 11


def test_policy_rejects_negative_settings() -> None:
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError, match="backoff"):
        RetryPolicy(base=-0.1)


def test_retry_call_retries_transient_failures_then_returns() -> None:
    fn, sleeps, seen = Flaky(2, TimeoutError("slow")), [], []
    result = retry_call(
        fn,
        policy=RetryPolicy(retries=3, base=1.0, cap=8.0),
        is_retryable=lambda exc: isinstance(exc, TimeoutError),
        sleep=sleeps.append,
        on_retry=lambda n, exc, _delay: seen.append((n, str(exc))),
    )
    assert result == "ok"
    assert fn.calls == 3
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 1.0
    assert 0 <= sleeps[1] <= 2.0
    assert seen == [(0, "slow"), (1, "slow")]


def test_retry_call_gives_up_after_the_retries_with_the_last_error() -> None:
    fn, sleeps = Flaky(10, TimeoutError("slow")), []
    with pytest.raises(TimeoutError, match="slow"):
        retry_call(
            fn, policy=RetryPolicy(retries=2), is_retryable=lambda _: True, sleep=sleeps.append
        )
    assert fn.calls == 3
    assert len(sleeps) == 2


def test_retry_call_does_not_retry_permanent_errors() -> None:
    fn, sleeps = Flaky(1, KeyError("gone")), []
    with pytest.raises(KeyError):
        retry_call(
            fn,
            policy=RetryPolicy(retries=5),
            is_retryable=lambda exc: isinstance(exc, TimeoutError),
            sleep=sleeps.append,
        )
    assert (fn.calls, sleeps) == (1, [])


# -- mapping botocore errors -----------------------------------------------------------------------


def _client_error(code: str, status: int, op: str = "GetObject") -> ClientError:
    response = {
        "Error": {"Code": code, "Message": f"{code} message"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, op)  # type: ignore[arg-type]


def _map(exc: BaseException, attempts: int = 1) -> StorageError | None:
    return map_s3_error(
        exc, op="read", bucket="bkt", key="p/k.bin", endpoint="http://s3.test", attempts=attempts
    )


@pytest.mark.parametrize(
    ("code", "status", "expected", "retryable"),
    [
        ("NoSuchKey", 404, ObjectNotFoundError, False),
        ("404", 404, ObjectNotFoundError, False),
        ("NoSuchBucket", 404, ObjectNotFoundError, False),
        ("AccessDenied", 403, AccessDeniedError, False),
        ("InvalidAccessKeyId", 403, AccessDeniedError, False),
        ("SlowDown", 503, StorageUnavailableError, True),
        ("Throttling", 400, StorageUnavailableError, True),
        ("RequestTimeout", 400, StorageUnavailableError, True),
        ("TooManyRequests", 429, StorageUnavailableError, True),
        ("InternalError", 500, StorageUnavailableError, True),
        ("Whatever", 502, StorageUnavailableError, True),
        ("InvalidArgument", 400, StorageError, False),
    ],
)
def test_client_errors_map_to_the_loader_tree(
    code: str, status: int, expected: type[StorageError], retryable: bool
) -> None:
    exc = _client_error(code, status)
    mapped = _map(exc, attempts=4)
    assert type(mapped) is expected
    assert is_retryable_s3_error(exc) is retryable
    assert "bkt" in str(mapped)
    if expected is StorageUnavailableError:
        assert "http://s3.test" in str(mapped)
        assert "after 4 attempts" in str(mapped)


def test_missing_bucket_message_names_the_bucket() -> None:
    mapped = _map(_client_error("NoSuchBucket", 404))
    assert str(mapped) == "bucket 'bkt' does not exist (at http://s3.test)"


def test_connection_errors_and_missing_credentials_map() -> None:
    refused = EndpointConnectionError(endpoint_url="http://s3.test")
    assert is_retryable_s3_error(refused)
    assert isinstance(_map(refused, attempts=6), StorageUnavailableError)
    assert isinstance(_map(NoCredentialsError()), AccessDeniedError)
    assert not is_retryable_s3_error(NoCredentialsError())


def test_errors_wrapped_by_boto3_transfers_are_unwrapped() -> None:
    # How boto3's upload_file reports a failed part: a new exception, the ClientError as context.
    inner = _client_error("SlowDown", 503, "UploadPart")
    wrapped = S3UploadFailedError(f"Failed to upload: {inner}")
    wrapped.__context__ = inner
    assert is_retryable_s3_error(wrapped)
    assert isinstance(_map(wrapped), StorageUnavailableError)
    exhausted = RetriesExceededError(_client_error("NoSuchKey", 404))
    assert isinstance(_map(exhausted), ObjectNotFoundError)


def test_foreign_errors_are_left_alone() -> None:
    assert _map(ValueError("not ours")) is None
    assert not is_retryable_s3_error(ValueError("not ours"))
    assert not is_retryable_s3_error(StorageUnavailableError("already mapped"))


# -- open_storage, options, paths ------------------------------------------------------------------


@pytest.mark.parametrize("url", ["oci://b/p", "sftp://h/p", "http://host/x", "hf://datasets/a/b"])
def test_open_storage_refuses_other_schemes_naming_the_supported_ones(url: str) -> None:
    with pytest.raises(ValueError, match="s3://bucket/prefix") as info:
        open_storage(url)
    assert "gs://bucket/prefix" in str(info.value) and "azure://" in str(info.value)
    assert "not supported" in str(info.value)


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "file://remote-host/x", "", "file://"])
def test_open_storage_refuses_malformed_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"bucket|host|path"):
        open_storage(url)


def test_open_storage_parses_s3_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://minio:9000")
    store = open_storage("s3://bkt/a/b#c?d/", retries=2, timeout=3.0, max_concurrency=4)
    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix, store.url) == ("bkt", "a/b#c?d", "s3://bkt/a/b#c?d")
    assert store.child_url("x/y") == "s3://bkt/a/b#c?d/x/y"
    assert store.sub("x").url == "s3://bkt/a/b#c?d/x"
    assert store.options == S3Options(
        endpoint_url="http://minio:9000",
        region=store.options.region,
        retries=2,
        timeout=3.0,
        max_concurrency=4,
    )
    assert open_storage("s3://bkt").url == "s3://bkt"
    assert open_storage("s3://bkt", endpoint_url="http://other").options.endpoint_url == (
        "http://other"
    )


def test_options_read_the_endpoint_variables_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    assert S3Options.from_env().endpoint_url is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic")
    assert S3Options.from_env().endpoint_url == "http://generic"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific")
    assert S3Options.from_env().endpoint_url == "http://s3-specific"
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://mosaic-style")
    options = S3Options.from_env(retries=1, timeout=None)
    assert (options.endpoint_url, options.region) == ("http://mosaic-style", "eu-west-1")
    assert (options.retries, options.timeout) == (1, 60.0)
    assert options.retry_policy == RetryPolicy(retries=1, base=0.25, cap=20.0)


@pytest.mark.parametrize(
    ("url", "sdk", "extra"),
    [
        ("s3://bkt/ds", "boto3", "s3"),
        ("gs://bkt/ds", "google.cloud.storage", "gcs"),
        ("azure://data/ds", "azure.storage.blob", "azure"),
    ],
)
def test_a_missing_sdk_names_its_extra(
    url: str, sdk: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, sdk, None)  # find_spec and import both see it missing
    for name in ("GCS_KEY", "GCS_SECRET"):  # the gs:// HMAC route would need boto3 instead
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingExtraError, match=rf"mds-loader\[{extra}\]"):
        open_storage(url)


def test_s3_storage_refuses_bad_buckets() -> None:
    with pytest.raises(ValueError, match="bucket"):
        S3Storage("a/b")


def test_relpath_helpers() -> None:
    assert clean_relpath("a//./b/") == "a/b"
    assert clean_prefix("") == ""
    assert clean_prefix("a/") == "a/"
    assert clean_prefix("./a//b") == "a/b"
    assert join_relpath("", "x") == "x"
    assert join_relpath("r/", "x") == "r/x"
    assert join_relpath("r", "") == "r"
    with pytest.raises(ValueError, match=r"\.\."):
        clean_prefix("a/../..")


def test_importing_the_package_does_not_import_boto3() -> None:
    code = (
        "import sys, mdsloader.storage as s; s.open_storage('s3://b/p'); s.open_storage('/tmp'); "
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'eager import'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_local_storage_is_the_backend_for_bare_paths(tmp_path) -> None:
    assert open_storage(str(tmp_path / "rel")) == LocalStorage(tmp_path / "rel")


_SEGMENT = st.sampled_from(["", ".", "..", "a", "b.bin", "00001", "x y", "é"])


@given(st.lists(_SEGMENT, max_size=6), st.booleans())
def test_cleaned_paths_stay_below_the_root_and_are_stable(segments: list[str], slash: bool) -> None:
    path = "/".join(segments) + ("/" if slash else "")
    try:
        cleaned = clean_relpath(path)
    except ValueError:
        meaningful = [s for s in segments if s not in ("", ".")]
        assert ".." in segments or path.startswith("/") or not meaningful
        return
    parts = cleaned.split("/")
    assert ".." not in parts and "." not in parts and "" not in parts
    assert clean_relpath(cleaned) == cleaned
    assert clean_prefix(path) == cleaned + ("/" if path.endswith("/") else "")
