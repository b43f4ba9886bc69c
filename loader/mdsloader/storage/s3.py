"""An S3 (or S3-compatible: MinIO, Ceph, R2, moto) bucket prefix as a storage.

This is the only module that imports boto3 or botocore, and it does so lazily, when the first
client is created. Every remote operation goes through :meth:`S3Storage._call`: our own retry loop
(with botocore's retries turned off so the two never multiply) and then :func:`map_s3_error`, the
one place where botocore and boto3 errors become the loader's :mod:`~mdsloader.errors`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from mdsloader.errors import (
    AccessDeniedError,
    MDSError,
    MissingExtraError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from mdsloader.storage.base import STREAM_CHUNK, ByteSink, clean_prefix
from mdsloader.storage.bucket import BucketStorage
from mdsloader.storage.local import atomic_write, map_os_errors
from mdsloader.storage.remote import FileSink, ProcessClient, retry_then_map
from mdsloader.storage.retry import RetrySettings, with_overrides

T = TypeVar("T")
log = logging.getLogger(__name__)

MIB = 1 << 20
DELETE_BATCH = 1000  # the most keys one DeleteObjects call accepts

# fmt: off
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NoSuchBucket", "NotFound"})
_DENIED_CODES = frozenset({
    "403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
    "InvalidToken", "ExpiredToken", "AccountProblem",
})
# Throttling and server-side hiccups that S3 and the S3-compatible stores report.
_TRANSIENT_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
    "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "ServiceUnavailable", "InternalError", "RequestTimeout", "RequestTimeoutException",
    "PriorRequestNotComplete", "OperationAborted",
})
# fmt: on


@dataclass(frozen=True, slots=True)
class S3Options(RetrySettings):
    """Connection, retry and transfer settings of an :class:`S3Storage`.

    Attributes:
        endpoint_url: The S3 endpoint (MinIO, moto, Ceph...); ``None`` for AWS.
        region: The signing region; ``None`` lets boto3 decide.
        retries: Retries after the first attempt of each operation (throttling, 5xx, network).
        timeout: Connect and read timeout of each HTTP request, in seconds.
        max_concurrency: Threads per multipart transfer.
        multipart_threshold: Objects at least this large are transferred in parts.
        multipart_chunksize: The size of each part (S3 needs >= 5 MiB except for the last).
        backoff_base: Upper bound of the first retry's sleep, in seconds (full jitter).
        backoff_cap: Largest upper bound of any retry's sleep, in seconds.
        page_size: Keys per ListObjectsV2 page (S3 caps it at 1000).
        addressing_style: ``"path"``, ``"virtual"`` or ``None`` (boto3's choice).
        access_key_id: An explicit access key (the GCS HMAC route); ``None`` uses boto3's chain.
        secret_access_key: The secret of ``access_key_id``; never shown in ``repr``.
    """

    endpoint_url: str | None = None
    region: str | None = None
    retries: int = 5
    timeout: float = 60.0
    max_concurrency: int = 8
    multipart_threshold: int = 64 * MIB
    multipart_chunksize: int = 16 * MIB
    backoff_base: float = 0.25
    backoff_cap: float = 20.0
    page_size: int = 1000
    addressing_style: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, **overrides: Any) -> S3Options:
        """Options from the environment, then ``overrides`` (``None`` values are ignored).

        The endpoint comes from ``S3_ENDPOINT_URL`` (the reference's variable), then the standard
        ``AWS_ENDPOINT_URL_S3`` and ``AWS_ENDPOINT_URL``; the region from ``AWS_REGION`` or
        ``AWS_DEFAULT_REGION``. Credentials are left to boto3's standard chain.
        """
        env = os.environ
        names = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        endpoint = next((env[name] for name in names if env.get(name)), None)
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        base = cls(endpoint_url=endpoint or None, region=region or None)
        return with_overrides(base, overrides)


class S3Storage(BucketStorage[S3Options]):
    """A :class:`~mdsloader.storage.base.Storage` rooted at ``s3://bucket/prefix``.

    Safe to share between threads. Pickling drops the boto3 client, so the storage travels into
    DataLoader workers and Spark executors and builds a fresh client there on first use; a client
    inherited through ``fork`` is likewise replaced.

    Args:
        bucket: The bucket name.
        prefix: The key prefix every relpath is joined to (no leading or trailing ``/``).
        options: Connection and transfer settings; default :meth:`S3Options.from_env`.

    Raises:
        MissingExtraError: If boto3 is not installed (the ``s3`` extra).
    """

    scheme = "s3"
    service = "S3"
    sdk_module = "boto3"
    missing = "s3:// storage needs boto3, which is not installed: pip install 'mds-loader[s3]'"

    def read_bytes(self, relpath: str) -> bytes:
        """The whole object (one GET)."""
        key = self._key(relpath)
        return self._call("read", key, lambda c: _read_body(c.get_object(**self._loc(key))))

    def read_range(self, relpath: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` with one ranged GET; shorter (like a slice) past the end."""
        if self._is_empty_range(relpath, start, end):
            return b""
        key = self._key(relpath)

        def get(client: Any) -> bytes:
            try:
                resp = client.get_object(**self._loc(key), Range=f"bytes={start}-{end - 1}")
            except Exception as exc:
                if _error_code(exc) == "InvalidRange":  # start is at or past the end
                    return b""
                raise
            return _read_body(resp)

        return self._call("read_range", key, get)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """One PUT (multipart above the threshold); S3 replaces objects atomically."""
        key = self._key(relpath)
        if len(data) < self.options.multipart_threshold:
            self._call("write", key, lambda c: c.put_object(**self._loc(key), Body=data))
            return
        config = self._clients.transfer_config()
        self._call(
            "write",
            key,
            lambda c: c.upload_fileobj(io.BytesIO(data), self.bucket, key, Config=config),
        )

    def upload_file(self, local_path: str, relpath: str) -> None:
        """Upload a local file, in concurrent parts when it reaches the multipart threshold."""
        key = self._key(relpath)
        path = os.fspath(local_path)
        config = self._clients.transfer_config()

        def upload(client: Any) -> None:
            client.upload_file(path, self.bucket, key, Config=config)

        with map_os_errors(path):  # a missing *local* file is reported as such
            self._call("upload", key, upload)

    def download_file(self, relpath: str, local_path: str) -> None:
        """Download to a temporary sibling of ``local_path``, then rename it into place.

        An object below the multipart threshold arrives through one streamed GET (no HEAD, no
        transfer threads). A larger one, whose size that GET's headers reveal, is abandoned
        before its body is read and fetched again in concurrent ranged GETs.
        """
        key = self._key(relpath)
        dest = os.path.abspath(os.fspath(local_path))
        limit = self.options.multipart_threshold

        def fill(f: Any) -> None:
            sink = FileSink(f)

            def stream(client: Any) -> int:
                return self._stream_once(client, key, sink, STREAM_CHUNK, limit=limit)

            try:
                self._call("download", key, stream)
                return
            except _TooLargeToStream:
                pass
            config = self._clients.transfer_config()

            def ranged(client: Any) -> None:
                sink.restart()
                client.download_fileobj(self.bucket, key, f, Config=config)

            self._call("download", key, ranged)

        with map_os_errors(dest):
            atomic_write(dest, fill)

    def stream_to(self, relpath: str, sink: ByteSink, *, chunk_size: int = STREAM_CHUNK) -> int:
        """Feed the object to ``sink`` from one plain GET per attempt (no HEAD, no s3transfer).

        The response body is read straight off the socket in ``chunk_size`` pieces, so memory
        stays at about one piece per stream whatever the object's size. A failure mid-body
        (reset connection, read timeout, short body) is retried from the start, after
        ``sink.restart()``; the sink's own errors are not retried.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        key = self._key(relpath)
        return self._call(
            "stream", key, lambda client: self._stream_once(client, key, sink, chunk_size)
        )

    def size(self, relpath: str) -> int:
        """The object's size in bytes (one HEAD)."""
        return int(self._head(self._key(relpath))["ContentLength"])

    def delete(self, relpath: str) -> None:
        """Delete an object; S3 does not mind a missing one."""
        key = self._key(relpath)
        self._call("delete", key, lambda c: c.delete_object(**self._loc(key)))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object ``list(prefix)`` returns, 1000 keys per DeleteObjects call."""
        keys = self._list_names(prefix)
        for i in range(0, len(keys), DELETE_BATCH):
            self._delete_batch(keys[i : i + DELETE_BATCH])
        return len(keys)

    # -- internals ---------------------------------------------------------------------------

    def _default_options(self) -> S3Options:
        return S3Options.from_env()

    def _new_clients(self) -> _ClientCache:
        return _ClientCache(self.options)

    def _loc(self, key: str) -> dict[str, str]:
        return {"Bucket": self.bucket, "Key": key}

    def _stream_once(
        self, client: Any, key: str, sink: ByteSink, chunk_size: int, *, limit: int | None = None
    ) -> int:
        """One attempt of :meth:`stream_to`: restart the sink, GET, feed it the body.

        Returns:
            The bytes delivered.

        Raises:
            _TooLargeToStream: The object is at least ``limit`` bytes long (nothing delivered).
        """
        sink.restart()
        resp = client.get_object(**self._loc(key))
        # Closing a body that was not read to the end drops its connection instead of returning
        # a half-read socket to the pool.
        with contextlib.closing(resp["Body"]) as body:
            if limit is not None and int(resp.get("ContentLength") or 0) >= limit:
                raise _TooLargeToStream(key)
            delivered = 0
            for chunk in body.iter_chunks(chunk_size):
                sink.write(chunk)
                delivered += len(chunk)
        return delivered

    def _head(self, key: str) -> dict[str, Any]:
        return self._call("head", key, lambda c: c.head_object(**self._loc(key)))

    def _list_names(self, prefix: str) -> list[str]:
        full = self._root() + clean_prefix(prefix)
        page_config = {"PageSize": self.options.page_size}

        def list_all(client: Any) -> list[str]:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig=page_config
            )
            return [obj["Key"] for page in pages for obj in page.get("Contents", ())]

        return sorted(self._call("list", full, list_all))

    def _delete_batch(self, keys: list[str]) -> None:
        # DeleteObjects answers 200 even when some keys failed; retry just those keys.
        pending = keys

        def attempt(client: Any) -> None:
            nonlocal pending
            body = {"Objects": [{"Key": key} for key in pending], "Quiet": True}
            errors = client.delete_objects(Bucket=self.bucket, Delete=body).get("Errors") or []
            pending = [error["Key"] for error in errors]
            if errors:
                raise _DeleteErrors(errors)

        self._call("delete", keys[0], attempt)

    def _call(self, op: str, key: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` with retries; map whatever it finally raises to our errors."""

        def map_error(exc: BaseException, attempts: int) -> StorageError | None:
            endpoint = self._endpoint()
            return map_s3_error(
                exc, op=op, bucket=self.bucket, key=key, endpoint=endpoint, attempts=attempts
            )

        def on_retry(retry: int, exc: BaseException, delay: float) -> None:
            log.debug("s3.retry %s %s: retry %d in %.3fs: %s", op, key, retry + 1, delay, exc)

        return retry_then_map(
            lambda: fn(self._clients.get()),
            policy=self.options.retry_policy,
            is_retryable=is_retryable_s3_error,
            map_error=map_error,
            on_retry=on_retry,
        )

    def _endpoint(self) -> str:
        return self.options.endpoint_url or "the default AWS S3 endpoint"


class _ClientCache(ProcessClient):
    """One boto3 client per process (see :class:`ProcessClient`) and the transfer settings."""

    def __init__(self, options: S3Options) -> None:
        super().__init__(partial(_make_client, options))
        self._options = options
        self._transfer: Any = None

    def transfer_config(self) -> Any:
        if self._transfer is None:
            self._transfer = _make_transfer_config(self._options)
        return self._transfer


class _TooLargeToStream(Exception):
    """An object above the multipart threshold: download it in ranged parts instead.

    Not a botocore error, so our retry loop neither retries nor maps it.
    """


class _DeleteErrors(Exception):
    """Per-key failures reported inside a successful DeleteObjects response."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        first = errors[0]
        super().__init__(
            f"{len(errors)} key(s) not deleted, e.g. {first.get('Key')!r}: "
            f"{first.get('Code')} {first.get('Message')}"
        )
        self.transient = all(error.get("Code") in _TRANSIENT_CODES for error in errors)


def _import_boto3() -> Any:
    try:
        import boto3
    except ImportError as exc:
        raise MissingExtraError(S3Storage.missing) from exc
    return boto3


def _make_client(options: S3Options) -> Any:
    boto3 = _import_boto3()
    from botocore import UNSIGNED
    from botocore.config import Config

    # A private session (the default one is not thread-safe); explicit keys win over the chain.
    session = boto3.session.Session(
        aws_access_key_id=options.access_key_id, aws_secret_access_key=options.secret_access_key
    )
    region = options.region or session.region_name
    if region is None and options.endpoint_url:
        region = "us-east-1"  # MinIO and friends need some signing region
    config = Config(
        connect_timeout=options.timeout,
        read_timeout=options.timeout,
        # Our retry loop owns retries; botocore's would multiply with it.
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max(10, 2 * options.max_concurrency),
        # The newer default checksums are rejected by several S3-compatible stores.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": options.addressing_style} if options.addressing_style else None,
        # Like the reference: without credentials, read public buckets anonymously.
        signature_version=UNSIGNED if session.get_credentials() is None else None,
    )
    return session.client(
        "s3", endpoint_url=options.endpoint_url, region_name=region, config=config
    )


def _make_transfer_config(options: S3Options) -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=options.multipart_threshold,
        multipart_chunksize=options.multipart_chunksize,
        max_concurrency=options.max_concurrency,
        use_threads=True,
        num_download_attempts=1,  # our retry loop owns retries
        preferred_transfer_client="classic",  # deterministic: never switch to the CRT client
    )


def _read_body(resp: dict[str, Any]) -> bytes:
    with contextlib.closing(resp["Body"]) as body:
        return bytes(body.read())


# -- error classification and mapping: the one place that knows botocore's exceptions -----------


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: boto3's upload/download wrappers hide the real ClientError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        inner = getattr(current, "last_exception", None)  # s3transfer's RetriesExceededError
        current = (
            inner
            if isinstance(inner, BaseException)
            else (current.__cause__ or current.__context__)
        )


def _botocore_error(exc: BaseException) -> BaseException | None:
    from botocore.exceptions import BotoCoreError, ClientError

    return next((e for e in _causes(exc) if isinstance(e, ClientError | BotoCoreError)), None)


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))


def _http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return 0
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _classify(exc: BaseException) -> tuple[str, BaseException | None]:
    """One of ``not_found``, ``denied``, ``transient`` or ``other``, and the botocore error."""
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )
    from botocore.exceptions import (
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
    )

    if isinstance(exc, MDSError):
        return "other", None
    if isinstance(exc, _DeleteErrors):
        return ("transient" if exc.transient else "other"), exc
    err = _botocore_error(exc)
    if err is None:
        return "other", None
    code, status = _error_code(err), _http_status(err)
    if code in _NOT_FOUND_CODES or status == 404:
        return "not_found", err
    if isinstance(err, NoCredentialsError) or code in _DENIED_CODES or status == 403:
        return "denied", err
    transient_types = (BotoConnectionError, HTTPClientError, IncompleteReadError)
    if isinstance(err, transient_types) or code in _TRANSIENT_CODES:
        return "transient", err
    if status == 429 or status >= 500:
        return "transient", err
    return "other", err


def is_retryable_s3_error(exc: BaseException) -> bool:
    """Whether another attempt may succeed: throttling, 429, 5xx, connection errors, timeouts."""
    return _classify(exc)[0] == "transient"


def map_s3_error(
    exc: BaseException, *, op: str, bucket: str, key: str, endpoint: str, attempts: int
) -> StorageError | None:
    """Translate a botocore/boto3 error into the loader's storage errors.

    Args:
        exc: What the operation raised (possibly a boto3 wrapper around the real error).
        op: The operation, for the message (``"read"``, ``"upload"``...).
        bucket: The bucket, named in the message.
        key: The key, named in the message.
        endpoint: The endpoint, named in the message of unavailability errors.
        attempts: How many attempts were made.

    Returns:
        ``ObjectNotFoundError`` (404, NoSuchKey, NoSuchBucket), ``AccessDeniedError`` (403, no
        credentials), ``StorageUnavailableError`` (throttling, 5xx, network, timeouts) or
        ``StorageError``; ``None`` when ``exc`` is not a botocore/boto3 error at all.
    """
    kind, err = _classify(exc)
    if err is None:
        return None
    where = f"s3://{bucket}/{key}"
    detail = str(err)
    if kind == "not_found":
        if _error_code(err) == "NoSuchBucket":
            return ObjectNotFoundError(f"bucket {bucket!r} does not exist (at {endpoint})")
        return ObjectNotFoundError(f"{where} does not exist (or bucket {bucket!r} is missing)")
    if kind == "denied":
        return AccessDeniedError(f"access denied: {op} {where}: {detail}")
    if kind == "transient":
        return StorageUnavailableError(
            f"{op} {where} failed: S3 at {endpoint} kept failing after {attempts} attempt"
            f"{'s' if attempts != 1 else ''}: {detail}"
        )
    return StorageError(f"{op} {where} failed: {detail}")
