"""Storage backends: a local directory or an S3 prefix behind one small ``Storage`` protocol.

``open_storage(url)`` picks the backend from the URL scheme through an explicit table. Importing
this package does not import boto3; the S3 backend imports it when its first client is created.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from mdsloader.storage.base import Storage, clean_prefix, clean_relpath, join_relpath, upload_many
from mdsloader.storage.local import LocalStorage
from mdsloader.storage.retry import RetryPolicy, retry_call
from mdsloader.storage.s3 import S3Options, S3Storage

__all__ = [
    "LocalStorage",
    "RetryPolicy",
    "S3Options",
    "S3Storage",
    "Storage",
    "clean_prefix",
    "clean_relpath",
    "join_relpath",
    "open_storage",
    "retry_call",
    "upload_many",
]

SUPPORTED = "local paths, file:// URIs and s3://bucket/prefix"
NOT_YET = "gs://, azure://, azure-dl://, oci://, hf://, dbfs:/ and sftp:// are not supported yet"


def open_storage(
    url: str | os.PathLike[str],
    *,
    retries: int = 5,
    timeout: float = 60.0,
    max_concurrency: int = 8,
    endpoint_url: str | None = None,
) -> Storage:
    """Open the storage that ``url`` names.

    Args:
        url: A local path, a ``file://`` URI, or ``s3://bucket/prefix``.
        retries: Retries after the first attempt of each remote operation (S3 only).
        timeout: Connect and read timeout of each remote request, in seconds (S3 only).
        max_concurrency: Threads per multipart transfer (S3 only).
        endpoint_url: The S3 endpoint; default from ``S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL``.

    Returns:
        A :class:`LocalStorage` or an :class:`S3Storage`.

    Raises:
        ValueError: For an unsupported scheme or a malformed URL.
        MissingExtraError: For ``s3://`` when boto3 (the ``s3`` extra) is not installed.
    """
    text = os.fspath(url)
    scheme = urlsplit(text).scheme.lower()
    # A one-letter "scheme" is a Windows drive ("C:\\data"), i.e. a local path.
    opener = _OPENERS.get("" if len(scheme) == 1 else scheme)
    if opener is None:
        raise ValueError(
            f"unsupported storage URL {text!r}: the scheme {scheme + '://'!r} is not supported; "
            f"use {SUPPORTED} ({NOT_YET})"
        )
    options = S3Options.from_env(
        retries=retries, timeout=timeout, max_concurrency=max_concurrency, endpoint_url=endpoint_url
    )
    return opener(text, options)


def _open_local(text: str, _options: S3Options) -> Storage:
    if not text:
        raise ValueError("empty storage path")
    return LocalStorage(text)


def _open_file_uri(text: str, _options: S3Options) -> Storage:
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"a file:// URI must name a local path, not a host: {text!r}")
    if not parts.path:
        raise ValueError(f"file:// URI without a path: {text!r}")
    return LocalStorage(unquote(parts.path))


def _open_s3(text: str, options: S3Options) -> Storage:
    # Split by hand rather than with urlsplit: '?' and '#' are legal in S3 keys.
    rest = text.split("://", 1)[1] if "://" in text else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"s3 URL without a bucket: {text!r} (expected s3://bucket/prefix)")
    return S3Storage(bucket, prefix.strip("/"), options=options)


_OPENERS: dict[str, Callable[[str, S3Options], Storage]] = {
    "": _open_local,
    "file": _open_file_uri,
    "s3": _open_s3,
}
