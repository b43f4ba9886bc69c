"""Storage backends: a local directory, an S3 prefix, a GCS prefix or an Azure Blob container
prefix, behind one small ``Storage`` protocol.

``open_storage(url)`` picks the backend from the URL scheme through an explicit table. Importing
this package imports no SDK; each remote backend imports its own (boto3, google-cloud-storage,
azure-storage-blob) when its first client is created.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mdsloader.storage.azure import AzureOptions, AzureStorage, parse_azure_url
from mdsloader.storage.base import (
    ConditionalStorage,
    Storage,
    clean_prefix,
    clean_relpath,
    join_relpath,
    upload_many,
)
from mdsloader.storage.gcs import GCSHmacStorage, GCSOptions, GCSStorage, hmac_keys_in_env
from mdsloader.storage.local import LocalStorage
from mdsloader.storage.retry import RetryPolicy, retry_call
from mdsloader.storage.s3 import S3Options, S3Storage

__all__ = [
    "AzureOptions",
    "AzureStorage",
    "ConditionalStorage",
    "GCSHmacStorage",
    "GCSOptions",
    "GCSStorage",
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

SUPPORTED = (
    "local paths, file:// URIs, s3://bucket/prefix, gs://bucket/prefix and "
    "azure://container/prefix (or azure://account.blob.core.windows.net/container/prefix)"
)
NOT_SUPPORTED = "azure-dl://, oci://, hf://, dbfs:/, dbfs:/Volumes and sftp:// are not supported"


@dataclass(frozen=True, slots=True)
class _Settings:
    """What ``open_storage`` passes every opener; each remote backend takes what it uses."""

    retries: int
    timeout: float
    max_concurrency: int
    endpoint_url: str | None


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
        url: A local path, a ``file://`` URI, ``s3://bucket/prefix``, ``gs://bucket/prefix`` or an
            ``azure://`` URL (see :mod:`mdsloader.storage.azure` for its two forms).
        retries: Retries after the first attempt of each remote operation.
        timeout: Connect and read timeout of each remote request, in seconds.
        max_concurrency: Threads per multipart/block transfer.
        endpoint_url: The S3 endpoint; default from ``S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL``
            (S3 only: GCS reads ``STORAGE_EMULATOR_HOST``, Azure its connection string).

    Returns:
        A :class:`LocalStorage`, :class:`S3Storage`, :class:`GCSStorage` (or
        :class:`GCSHmacStorage` when ``GCS_KEY`` / ``GCS_SECRET`` are set) or
        :class:`AzureStorage`.

    Raises:
        ValueError: For an unsupported scheme or a malformed URL.
        MissingExtraError: When the scheme's SDK (extra ``s3``, ``gcs`` or ``azure``) is missing.
    """
    text = os.fspath(url)
    scheme = urlsplit(text).scheme.lower()
    # A one-letter "scheme" is a Windows drive ("C:\\data"), i.e. a local path.
    opener = _OPENERS.get("" if len(scheme) == 1 else scheme)
    if opener is None:
        raise ValueError(
            f"unsupported storage URL {text!r}: the scheme {scheme + '://'!r} is not supported; "
            f"use {SUPPORTED} ({NOT_SUPPORTED})"
        )
    return opener(text, _Settings(retries, timeout, max_concurrency, endpoint_url))


def _open_local(text: str, _settings: _Settings) -> Storage:
    if not text:
        raise ValueError("empty storage path")
    return LocalStorage(text)


def _open_file_uri(text: str, _settings: _Settings) -> Storage:
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"a file:// URI must name a local path, not a host: {text!r}")
    if not parts.path:
        raise ValueError(f"file:// URI without a path: {text!r}")
    return LocalStorage(unquote(parts.path))


def _bucket_and_prefix(text: str, example: str) -> tuple[str, str]:
    # Split by hand rather than with urlsplit: '?' and '#' are legal in object names.
    rest = text.split("://", 1)[1] if "://" in text else ""
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"storage URL without a bucket: {text!r} (expected {example})")
    return bucket, prefix.strip("/")


def _open_s3(text: str, settings: _Settings) -> Storage:
    bucket, prefix = _bucket_and_prefix(text, "s3://bucket/prefix")
    options = S3Options.from_env(
        retries=settings.retries,
        timeout=settings.timeout,
        max_concurrency=settings.max_concurrency,
        endpoint_url=settings.endpoint_url,
    )
    return S3Storage(bucket, prefix, options=options)


def _open_gs(text: str, settings: _Settings) -> Storage:
    bucket, prefix = _bucket_and_prefix(text, "gs://bucket/prefix")
    common = {
        "retries": settings.retries,
        "timeout": settings.timeout,
        "max_concurrency": settings.max_concurrency,
    }
    if hmac_keys_in_env():  # the reference's HMAC route, through GCS's S3 API
        return GCSHmacStorage(bucket, prefix, options=GCSHmacStorage.options_from_env(**common))
    return GCSStorage(bucket, prefix, options=GCSOptions.from_env(**common))


def _open_azure(text: str, settings: _Settings) -> Storage:
    parse_azure_url(text)  # a malformed URL is refused before the SDK is looked for
    options = AzureOptions.from_env(
        retries=settings.retries,
        timeout=settings.timeout,
        max_concurrency=settings.max_concurrency,
    )
    return AzureStorage(text, options=options)


_OPENERS: dict[str, Callable[[str, _Settings], Storage]] = {
    "": _open_local,
    "file": _open_file_uri,
    "s3": _open_s3,
    "gs": _open_gs,
    "azure": _open_azure,
}
