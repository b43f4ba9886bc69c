"""An Azure Blob Storage container prefix (``azure://...``) as a storage.

URLs (one URL never means two places, because container names cannot contain dots):

* ``azure://<account>.blob.core.windows.net/<container>/<path>`` -- the reference's reader form:
  the host names the account (any host with a dot is an account host, so sovereign clouds work),
  the first path segment is the container;
* ``azure://<container>/<path>`` -- the reference's writer form: the account comes from
  ``AZURE_STORAGE_CONNECTION_STRING`` or ``AZURE_ACCOUNT_NAME`` (``AZURE_STORAGE_ACCOUNT``).

Endpoint and credentials: ``AZURE_STORAGE_CONNECTION_STRING`` (the SDK's standard variable, and
how Azurite is reached) wins; otherwise ``https://<account>.blob.core.windows.net`` with the key in
``AZURE_ACCOUNT_ACCESS_KEY`` (``AZURE_STORAGE_KEY``), else azure-identity's default chain when it
is installed, else anonymous (public containers). An account named by the URL that differs from
the one the environment names is refused rather than guessed.

This is the only module that imports ``azure.*``, lazily. The SDK's retries are off
(``retry_total=0``); ours are bounded by ``retries`` and ``timeout``. Errors are mapped by HTTP
status in :func:`classify_azure_error` (a wrong key answers a plain 403, not an auth error).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from mdsloader.errors import MissingExtraError
from mdsloader.storage.base import STREAM_CHUNK, ByteSink, clean_prefix
from mdsloader.storage.local import atomic_write, map_os_errors
from mdsloader.storage.remote import FileSink, Kind, ProcessClient, SdkStorage
from mdsloader.storage.retry import RetrySettings, with_overrides

T = TypeVar("T")
log = logging.getLogger(__name__)

MIB = 1 << 20
_MISSING = "azure:// storage needs azure-storage-blob, which is not installed: " + (
    "pip install 'mds-loader[azure]'"
)
_PUBLIC_SUFFIX = "blob.core.windows.net"


@dataclass(frozen=True, slots=True)
class AzureLocation:
    """Where an ``azure://`` URL points: an account (or ``None`` = from the environment), a
    container and a prefix."""

    account: str | None
    host: str | None
    container: str
    prefix: str


def parse_azure_url(url: str) -> AzureLocation:
    """Split an ``azure://`` URL by the rule in the module docstring.

    Raises:
        ValueError: No container, or an invalid container name.
    """
    rest = url.split("://", 1)[1] if "://" in url else url
    netloc, _, path = rest.partition("/")
    if "." in netloc:  # an account host: container names cannot contain dots
        account = netloc.split(".", 1)[0]
        container, _, prefix = path.partition("/")
        host: str | None = netloc
    else:
        account, host, container, prefix = None, None, netloc, path
    if not container:
        raise ValueError(
            f"azure URL without a container: {url!r} (expected azure://<container>/<path> or "
            f"azure://<account>.{_PUBLIC_SUFFIX}/<container>/<path>)"
        )
    if not _valid_container(container):
        raise ValueError(f"invalid Azure container name {container!r} in {url!r}")
    return AzureLocation(account or None, host, container, prefix.strip("/"))


def _valid_container(name: str) -> bool:
    # 3-63 lowercase letters, digits and single hyphens; "$root" and "$web" are special.
    if name in ("$root", "$web", "$logs"):
        return True
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
    return (
        3 <= len(name) <= 63
        and set(name) <= allowed
        and "--" not in name
        and (name[0] != "-" and name[-1] != "-")
    )


@dataclass(frozen=True, slots=True)
class AzureOptions(RetrySettings):
    """Account, credentials, and retry and transfer settings of an :class:`AzureStorage`.

    Attributes:
        connection_string: An Azure Storage connection string (wins over the rest); default
            ``AZURE_STORAGE_CONNECTION_STRING``. Never shown in ``repr``.
        account_name: The account for ``azure://<container>/...`` URLs; default
            ``AZURE_ACCOUNT_NAME`` or ``AZURE_STORAGE_ACCOUNT``.
        account_key: The shared key; default ``AZURE_ACCOUNT_ACCESS_KEY`` or
            ``AZURE_STORAGE_KEY``. Never shown in ``repr``.
        retries: Retries after the first attempt of each operation (429, 5xx, network).
        timeout: Connect and read timeout of each HTTP request, in seconds.
        max_concurrency: Parallel block transfers per upload or download, and deletes in flight.
        backoff_base: Upper bound of the first retry's sleep, in seconds (full jitter).
        backoff_cap: Largest upper bound of any retry's sleep, in seconds.
        block_size: Size of each block of a staged upload and of each ranged GET.
        single_put_size: Objects up to this size are uploaded with one PUT.
    """

    connection_string: str | None = field(default=None, repr=False)
    account_name: str | None = None
    account_key: str | None = field(default=None, repr=False)
    retries: int = 5
    timeout: float = 60.0
    max_concurrency: int = 8
    backoff_base: float = 0.25
    backoff_cap: float = 20.0
    block_size: int = 8 * MIB
    single_put_size: int = 64 * MIB

    @classmethod
    def from_env(cls, **overrides: Any) -> AzureOptions:
        """Options from the environment, then ``overrides`` (``None`` values are ignored)."""
        env = os.environ
        base = cls(
            connection_string=env.get("AZURE_STORAGE_CONNECTION_STRING") or None,
            account_name=env.get("AZURE_ACCOUNT_NAME") or env.get("AZURE_STORAGE_ACCOUNT") or None,
            account_key=env.get("AZURE_ACCOUNT_ACCESS_KEY") or env.get("AZURE_STORAGE_KEY") or None,
        )
        return with_overrides(base, overrides)


@dataclass(frozen=True, slots=True)
class _Endpoint:
    """The resolved account and how to reach it."""

    account: str
    url: str  # the blob service endpoint, e.g. https://acct.blob.core.windows.net


def resolve_endpoint(location: AzureLocation, options: AzureOptions) -> _Endpoint:
    """The account and blob endpoint for ``location`` (module docstring), checked for conflicts.

    Raises:
        ValueError: No account anywhere, or the URL and the environment name different accounts.
    """
    if options.connection_string:
        fields = _parse_connection_string(options.connection_string)
        account = fields.get("accountname", "")
        endpoint = fields.get("blobendpoint") or (
            f"{fields.get('defaultendpointsprotocol', 'https')}://{account}.blob."
            f"{fields.get('endpointsuffix', 'core.windows.net')}"
        )
        env_account = account or None
    else:
        env_account = options.account_name
        account = location.account or env_account or ""
        endpoint = f"https://{location.host or f'{account}.{_PUBLIC_SUFFIX}'}"
    if location.account and env_account and location.account != env_account:
        raise ValueError(
            f"the azure URL names account {location.account!r} but the environment names "
            f"{env_account!r}; refusing to guess which is meant"
        )
    if not account:
        raise ValueError(
            "azure://<container>/... needs an account: set AZURE_STORAGE_CONNECTION_STRING or "
            f"AZURE_ACCOUNT_NAME, or use azure://<account>.{_PUBLIC_SUFFIX}/<container>/..."
        )
    return _Endpoint(account, endpoint.rstrip("/"))


def _parse_connection_string(text: str) -> dict[str, str]:
    pairs = (part.split("=", 1) for part in text.split(";") if "=" in part)
    return {key.strip().lower(): value.strip() for key, value in pairs}


class AzureStorage(SdkStorage[AzureOptions]):
    """A :class:`~mdsloader.storage.base.Storage` rooted at a container prefix in Azure Blob.

    Safe to share between threads (the SDK's clients are). Pickling keeps the settings only; a
    fresh client is made on first use in the new process, and one inherited through ``fork`` is
    replaced.

    Args:
        url: ``azure://<container>/<prefix>`` or
            ``azure://<account>.blob.core.windows.net/<container>/<prefix>``.
        options: Account, credentials and transfer settings; default
            :meth:`AzureOptions.from_env`.

    Raises:
        MissingExtraError: If azure-storage-blob is not installed (the ``azure`` extra).
        ValueError: A malformed URL, no account, or conflicting accounts.
    """

    scheme = "azure"
    _delete_threads = "mds-az-del"

    def __init__(self, url: str, *, options: AzureOptions | None = None) -> None:
        """Root the storage at ``url`` (see the class docstring)."""
        if importlib.util.find_spec("azure.storage.blob") is None:
            raise MissingExtraError(_MISSING)
        self.location = parse_azure_url(url)
        self.options = options if options is not None else AzureOptions.from_env()
        self.endpoint = resolve_endpoint(self.location, self.options)
        self.prefix = clean_prefix(self.location.prefix).rstrip("/")
        self._clients = ProcessClient(partial(_make_client, self.options, self.endpoint))

    @property
    def container(self) -> str:
        """The container name."""
        return self.location.container

    def __repr__(self) -> str:
        """``AzureStorage('azure://...', endpoint=...)``."""
        return f"AzureStorage({self.url!r}, endpoint={self.endpoint.url!r})"

    def __getstate__(self) -> dict[str, object]:
        """Pickle the settings only: the client is rebuilt on first use after unpickling."""
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the settings with an empty client cache."""
        self.__init__(state["url"], options=state["options"])  # type: ignore[misc]

    def read_bytes(self, relpath: str) -> bytes:
        """The whole object."""
        return self._call("read", relpath, lambda blob: blob.download_blob().readall())

    def read_range(self, relpath: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` with one ranged GET; shorter (like a slice) past the end."""
        if self._is_empty_range(relpath, start, end):
            return b""

        def get(blob: Any) -> bytes:
            try:
                return bytes(blob.download_blob(offset=start, length=end - start).readall())
            except Exception as exc:
                if _status(exc) == 416:  # start at or past the end
                    return b""
                raise

        return self._call("read_range", relpath, get)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """One PUT up to ``single_put_size``, else staged blocks committed at once: atomic."""
        self._call("write", relpath, lambda blob: blob.upload_blob(data, **self._ul()))

    def read_versioned(self, relpath: str) -> tuple[bytes, str]:
        """The blob's bytes and its ETag, from one download."""

        def get(blob: Any) -> tuple[bytes, str]:
            stream = blob.download_blob()
            return bytes(stream.readall()), str(stream.properties.etag)

        return self._call("read", relpath, get)

    def write_bytes_if(self, relpath: str, data: bytes, *, version: str | None) -> bool:
        """Upload only if the blob's ETag is ``version`` (``None``: only if it is absent).

        Returns:
            ``False`` on ``412`` (changed) or ``409`` (already exists).
        """
        from azure.core import MatchConditions

        if version is None:
            condition: dict[str, Any] = {"overwrite": False}  # If-None-Match: *
        else:
            condition = {"etag": version, "match_condition": MatchConditions.IfNotModified}

        def put(blob: Any) -> bool:
            try:
                blob.upload_blob(data, **{**self._ul(), **condition})
            except Exception as exc:
                if _status(exc) in (409, 412):
                    return False
                raise
            return True

        return self._call("write", relpath, put)

    def upload_file(self, local_path: str, relpath: str) -> None:
        """Upload a local file; large ones as concurrent blocks, committed in one request."""
        path = os.fspath(local_path)

        def upload(blob: Any) -> None:
            with open(path, "rb") as f:
                blob.upload_blob(f, length=os.fstat(f.fileno()).st_size, **self._ul())

        with map_os_errors(path):  # a missing *local* file is reported as such
            self._call("upload", relpath, upload)

    def download_file(self, relpath: str, local_path: str) -> None:
        """Download (ranged GETs in parallel) to a temporary sibling, then rename into place."""
        dest = os.path.abspath(os.fspath(local_path))

        def fill(f: Any) -> None:
            sink = FileSink(f)

            def download(blob: Any) -> None:
                sink.restart()
                stream = blob.download_blob(max_concurrency=self.options.max_concurrency)
                stream.readinto(f)

            self._call("download", relpath, download)

        with map_os_errors(dest):
            atomic_write(dest, fill)

    def stream_to(self, relpath: str, sink: ByteSink, *, chunk_size: int = STREAM_CHUNK) -> int:
        """Feed the object to ``sink`` in ``chunk_size`` pieces, one ranged GET per block.

        At most one block (``block_size``) is held at a time. A failure mid-object is retried
        from the start after ``sink.restart()``; the sink's own errors are not retried.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")

        def stream(blob: Any) -> int:
            sink.restart()
            delivered = 0
            for block in blob.download_blob().chunks():
                view = memoryview(block)
                for i in range(0, len(view), chunk_size):
                    piece = bytes(view[i : i + chunk_size])
                    sink.write(piece)
                    delivered += len(piece)
            return delivered

        return self._call("stream", relpath, stream)

    def size(self, relpath: str) -> int:
        """The object's size in bytes (one HEAD)."""
        return self._call("stat", relpath, lambda blob: int(blob.get_blob_properties().size))

    # -- internals ---------------------------------------------------------------------------

    def _origin(self) -> str:
        # The URL's own form: with the account host when it was given one.
        head = self.location.host + "/" if self.location.host else ""
        return f"azure://{head}{self.container}"

    def _identity(self) -> tuple[object, ...]:
        return ("azure", self.endpoint, self.container, self.prefix, self.options)

    def _rooted_at(self, prefix: str) -> AzureStorage:
        return AzureStorage(f"{self._origin()}/{prefix}", options=self.options)

    def _ul(self) -> dict[str, Any]:
        return {"overwrite": True, "max_concurrency": self.options.max_concurrency}

    def _container(self) -> Any:
        return self._clients.get().get_container_client(self.container)

    def _call(self, op: str, relpath: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(blob_client)`` for ``relpath`` with retries; map what it finally raises."""
        key = self._key(relpath)
        return self._retrying(op, key, lambda: fn(self._container().get_blob_client(key)))

    def _classify(self, exc: BaseException) -> Kind | None:
        return classify_azure_error(exc)

    def _service(self) -> str:
        return f"Azure Blob at {self.endpoint.url}"

    def _list_all(self, full_prefix: str) -> list[str]:
        blobs = self._container().list_blobs(name_starts_with=full_prefix or None)
        return [blob.name for blob in blobs]

    def _delete_one(self, name: str) -> None:
        self._container().delete_blob(name)


def _make_client(options: AzureOptions, endpoint: _Endpoint) -> Any:
    try:
        from azure.storage.blob import BlobServiceClient
    except ImportError as exc:
        raise MissingExtraError(_MISSING) from exc
    settings = {
        "retry_total": 0,  # our retry loop owns retries
        "connection_timeout": options.timeout,
        "read_timeout": options.timeout,
        "max_single_put_size": options.single_put_size,
        "max_block_size": options.block_size,
        "max_single_get_size": options.block_size,
        "max_chunk_get_size": options.block_size,
    }
    if options.connection_string:
        return BlobServiceClient.from_connection_string(options.connection_string, **settings)
    return BlobServiceClient(endpoint.url, credential=_credential(options), **settings)


def _credential(options: AzureOptions) -> Any:
    if options.account_key:
        return options.account_key
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        log.info("no Azure key and no azure-identity; reading Azure Blob anonymously")
        return None
    return DefaultAzureCredential()


# -- error classification: the one place that knows azure-core's exceptions ---------------------


def _status(exc: BaseException) -> int:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else 0


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in seen):
        seen.append(current)
        inner = getattr(current, "inner_exception", None) or getattr(current, "error", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__
    return seen


def classify_azure_error(exc: BaseException) -> Kind | None:
    """The kind of an azure-core failure, or ``None`` for an exception it is not.

    By HTTP status first: 404 is ``not_found``; 401 and 403 (a wrong key answers a plain 403)
    ``denied``; 408, 429 and 5xx ``transient``. Without a status: connection and read failures are
    ``transient``, authentication failures (no usable credential) ``denied``.
    """
    from azure.core import exceptions as az

    status = _status(exc)
    if status == 404:
        return "not_found"
    if status in (401, 403):
        return "denied"
    if status in (408, 429) or status >= 500:
        return "transient"
    network = (az.ServiceRequestError, az.ServiceResponseError, az.IncompleteReadError,
               az.DecodeError, ConnectionError, TimeoutError)  # fmt: skip
    # The download stream wraps a body that kept tearing in a status-less HttpResponseError.
    if any(isinstance(cause, network) for cause in _causes(exc)):
        return "transient"
    if isinstance(exc, az.ClientAuthenticationError):
        return "denied"
    if isinstance(exc, az.AzureError) or status:
        return "other"
    return None
