"""A Google Cloud Storage bucket prefix (``gs://bucket/prefix``) as a storage.

Two routes, as in the reference:

* the official ``google-cloud-storage`` client (the ``gcs`` extra), with credentials from
  ``GOOGLE_APPLICATION_CREDENTIALS`` or Application Default Credentials, and the endpoint from
  ``STORAGE_EMULATOR_HOST`` when it is set (anonymous there unless a credentials file is named);
* HMAC keys in ``GCS_KEY`` / ``GCS_SECRET``, through GCS's S3-compatible XML API with boto3
  (:class:`GCSHmacStorage`, the ``s3`` extra), exactly the reference's second route.

This is the only module that imports ``google.*``, lazily, when the first client is created. The
library's own retries are switched off (``retry=None`` on every call) so that ours, bounded by
``retries`` and ``timeout``, are the only ones: left to itself the client retries a stopped
server for about two minutes. :func:`classify_gcs_error` is the one place that knows its errors.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mdsloader.errors import MissingExtraError, StorageError
from mdsloader.storage.base import STREAM_CHUNK, ByteSink
from mdsloader.storage.bucket import BucketStorage
from mdsloader.storage.local import atomic_write, map_os_errors
from mdsloader.storage.remote import ChunkingWriter, FileSink, Kind, SdkStorage
from mdsloader.storage.retry import RetrySettings, with_overrides
from mdsloader.storage.s3 import S3Options, S3Storage

T = TypeVar("T")
log = logging.getLogger(__name__)

GCS_S3_ENDPOINT = "https://storage.googleapis.com"
_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
_MISSING = "gs:// storage needs google-cloud-storage, which is not installed: " + (
    "pip install 'mds-loader[gcs]'"
)


@dataclass(frozen=True, slots=True)
class GCSOptions(RetrySettings):
    """Connection and retry settings of a :class:`GCSStorage`.

    Attributes:
        endpoint_url: The JSON API endpoint; ``None`` for Google's. Default from
            ``STORAGE_EMULATOR_HOST`` (which must carry its scheme, ``http://host:port``).
        project: The project billed for requests; ``None`` lets the credentials decide.
        credentials_file: A service-account (or other) credentials JSON file; default from
            ``GOOGLE_APPLICATION_CREDENTIALS``.
        retries: Retries after the first attempt of each operation (429, 5xx, network).
        timeout: Connect and read timeout of each HTTP request, in seconds.
        max_concurrency: Deletes in flight at once in :meth:`GCSStorage.delete_prefix`.
        backoff_base: Upper bound of the first retry's sleep, in seconds (full jitter).
        backoff_cap: Largest upper bound of any retry's sleep, in seconds.
    """

    endpoint_url: str | None = None
    project: str | None = None
    credentials_file: str | None = None
    retries: int = 5
    timeout: float = 60.0
    max_concurrency: int = 8
    backoff_base: float = 0.25
    backoff_cap: float = 20.0

    @classmethod
    def from_env(cls, **overrides: Any) -> GCSOptions:
        """Options from the environment, then ``overrides`` (``None`` values are ignored)."""
        env = os.environ
        base = cls(
            endpoint_url=env.get("STORAGE_EMULATOR_HOST") or None,
            project=env.get("GOOGLE_CLOUD_PROJECT") or None,
            credentials_file=env.get("GOOGLE_APPLICATION_CREDENTIALS") or None,
        )
        return with_overrides(base, overrides)


class GCSStorage(SdkStorage[GCSOptions], BucketStorage[GCSOptions]):
    """A :class:`~mdsloader.storage.base.Storage` rooted at ``gs://bucket/prefix``.

    Safe to share between threads (each thread gets its own client over shared credentials).
    Pickling keeps the settings only; a fresh client is made on first use in the new process,
    and one inherited through ``fork`` is replaced.

    Args:
        bucket: The bucket name.
        prefix: The object-name prefix every relpath is joined to.
        options: Connection and retry settings; default :meth:`GCSOptions.from_env`.

    Raises:
        MissingExtraError: If google-cloud-storage is not installed (the ``gcs`` extra).
    """

    scheme = "gs"
    service = "GCS"
    sdk_module = "google.cloud.storage"
    missing = _MISSING
    _delete_threads = "mds-gcs-del"

    def read_bytes(self, relpath: str) -> bytes:
        """The whole object (one GET)."""
        key = self._key(relpath)
        return self._call("read", key, lambda blob: blob.download_as_bytes(**self._dl()))

    def read_range(self, relpath: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` with one ranged GET; shorter (like a slice) past the end."""
        if self._is_empty_range(relpath, start, end):
            return b""
        key = self._key(relpath)

        def get(blob: Any) -> bytes:
            try:
                # The JSON API's range end is inclusive.
                return bytes(blob.download_as_bytes(start=start, end=end - 1, **self._dl()))
            except Exception as exc:
                if _status(exc) == 416:  # start at or past the end
                    return b""
                raise

        return self._call("read_range", key, get)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """One upload; GCS replaces an object atomically when the upload completes."""
        key = self._key(relpath)
        self._call(
            "write",
            key,
            lambda blob: blob.upload_from_string(
                data, content_type="application/octet-stream", **self._ul()
            ),
        )

    def read_versioned(self, relpath: str) -> tuple[bytes, str]:
        """The object's bytes and its generation, from one GET."""
        key = self._key(relpath)

        def get(blob: Any) -> tuple[bytes, str]:
            data = bytes(blob.download_as_bytes(**self._dl()))
            if blob.generation is None:
                # GCS sends x-goog-generation with the body; a server that does not (the
                # emulator) is asked for the metadata instead: weaker, but never a wrong "absent".
                blob.reload(**self._meta())
            return data, str(blob.generation)

        return self._call("read", key, get)

    def write_bytes_if(self, relpath: str, data: bytes, *, version: str | None) -> bool:
        """Upload only at generation ``version`` (``None``: only if absent, generation 0).

        Returns:
            ``False`` on ``412 Precondition Failed``.
        """
        key = self._key(relpath)
        generation = 0 if version is None else int(version)

        def put(blob: Any) -> bool:
            try:
                blob.upload_from_string(
                    data, content_type="application/octet-stream",
                    if_generation_match=generation, **self._ul(),
                )  # fmt: skip
            except Exception as exc:
                if _status(exc) == 412:
                    return False
                raise
            return True

        return self._call("write", key, put)

    def upload_file(self, local_path: str, relpath: str) -> None:
        """Upload a local file (resumable above 8 MiB, which the library decides)."""
        key = self._key(relpath)
        path = os.fspath(local_path)

        def upload(blob: Any) -> None:
            blob.upload_from_filename(path, content_type="application/octet-stream", **self._ul())

        with map_os_errors(path):  # a missing *local* file is reported as such
            self._call("upload", key, upload)

    def download_file(self, relpath: str, local_path: str) -> None:
        """Download through a temporary sibling of ``local_path``, then rename it into place."""
        dest = os.path.abspath(os.fspath(local_path))

        def fill(f: Any) -> None:
            self.stream_to(relpath, FileSink(f))

        with map_os_errors(dest):
            atomic_write(dest, fill)

    def stream_to(self, relpath: str, sink: ByteSink, *, chunk_size: int = STREAM_CHUNK) -> int:
        """Feed the object to ``sink`` from one streamed GET per attempt.

        The library writes the body as it arrives; :class:`ChunkingWriter` regroups it into
        ``chunk_size`` pieces. A failure mid-body is retried from the start after
        ``sink.restart()``; the sink's own errors are not retried.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        key = self._key(relpath)

        def stream(blob: Any) -> int:
            sink.restart()
            writer = ChunkingWriter(sink, chunk_size)
            blob.download_to_file(writer, **self._dl())
            writer.flush()
            return writer.delivered

        return self._call("stream", key, stream)

    def size(self, relpath: str) -> int:
        """The object's size in bytes (one metadata GET)."""
        key = self._key(relpath)

        def stat(blob: Any) -> int:
            blob.reload(**self._meta())
            return int(blob.size)

        return self._call("stat", key, stat)

    # -- internals ---------------------------------------------------------------------------

    def _default_options(self) -> GCSOptions:
        return GCSOptions.from_env()

    def _new_clients(self) -> _ClientCache:
        return _ClientCache(self.options)

    def _timeout(self) -> tuple[float, float]:
        return (self.options.timeout, self.options.timeout)

    def _meta(self) -> dict[str, Any]:
        return {"timeout": self._timeout(), "retry": None}

    def _dl(self) -> dict[str, Any]:
        # raw_download: the stored bytes exactly, never a transcoded (gunzipped) body.
        return {"timeout": self._timeout(), "retry": None, "raw_download": True}

    def _ul(self) -> dict[str, Any]:
        return {"timeout": self._timeout(), "retry": None}

    def _blob(self, key: str) -> Any:
        return self._clients.get().bucket(self.bucket).blob(key)

    def _call(self, op: str, key: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(blob)`` for the object ``key`` with retries; map what it finally raises."""
        return self._retrying(op, key, lambda: fn(self._blob(key)))

    def _classify(self, exc: BaseException) -> Kind | None:
        return classify_gcs_error(exc)

    def _service(self) -> str:
        return f"GCS at {self.options.endpoint_url or 'storage.googleapis.com'}"

    def _list_all(self, full_prefix: str) -> list[str]:
        blobs = self._clients.get().list_blobs(self.bucket, prefix=full_prefix, **self._meta())
        return [blob.name for blob in blobs]

    def _delete_one(self, name: str) -> None:
        self._blob(name).delete(**self._meta())


class GCSHmacStorage:
    """``gs://bucket/prefix`` through GCS's S3-compatible XML API with HMAC keys (``GCS_KEY``).

    The reference's second route: boto3 against ``https://storage.googleapis.com``. It wraps an
    :class:`~mdsloader.storage.s3.S3Storage` (multipart, ranged GETs, retries, pickling) rather
    than subclassing it, so that nothing mistakes it for S3: GCS ignores S3's conditional-write
    headers, so code that would rely on them must not see an ``S3Storage`` here.

    Args:
        bucket: The bucket name.
        prefix: The object-name prefix every relpath is joined to.
        options: S3 settings; default :meth:`options_from_env`.
    """

    def __init__(self, bucket: str, prefix: str = "", *, options: S3Options | None = None) -> None:
        """Root the storage at ``gs://bucket/prefix`` (see the class docstring)."""
        self._s3 = S3Storage(bucket, prefix, options=options or self.options_from_env())

    @staticmethod
    def options_from_env(**overrides: Any) -> S3Options:
        """S3 options for GCS's XML API with the keys in ``GCS_KEY`` / ``GCS_SECRET``."""
        base = S3Options(
            endpoint_url=GCS_S3_ENDPOINT,
            region="auto",
            access_key_id=os.environ.get("GCS_KEY"),
            secret_access_key=os.environ.get("GCS_SECRET"),
        )
        return with_overrides(base, overrides)

    @property
    def options(self) -> S3Options:
        """The S3 settings (endpoint, keys, retries)."""
        return self._s3.options

    @property
    def url(self) -> str:
        """``gs://bucket/prefix``."""
        return "gs://" + self._s3.url.split("://", 1)[1]

    def __repr__(self) -> str:
        """``GCSHmacStorage('gs://bucket/prefix', endpoint_url=...)``."""
        return f"GCSHmacStorage({self.url!r}, endpoint_url={self.options.endpoint_url!r})"

    def __eq__(self, other: object) -> bool:
        """Equal when the wrapped S3 storages are."""
        return isinstance(other, GCSHmacStorage) and other._s3 == self._s3

    def __hash__(self) -> int:
        """Hash consistent with ``==``."""
        return hash(("gs-hmac", self._s3))

    def child_url(self, relpath: str) -> str:
        """``gs://bucket/prefix/relpath``."""
        return "gs://" + self._s3.child_url(relpath).split("://", 1)[1]

    def sub(self, relpath: str) -> GCSHmacStorage:
        """A storage rooted at ``prefix/relpath`` that shares this one's client."""
        child = GCSHmacStorage.__new__(GCSHmacStorage)
        child._s3 = self._s3.sub(relpath)
        return child

    def read_bytes(self, relpath: str) -> bytes:
        """See :meth:`S3Storage.read_bytes`."""
        return self._gs(self._s3.read_bytes, relpath)

    def read_range(self, relpath: str, start: int, end: int) -> bytes:
        """See :meth:`S3Storage.read_range`."""
        return self._gs(self._s3.read_range, relpath, start, end)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """See :meth:`S3Storage.write_bytes`."""
        self._gs(self._s3.write_bytes, relpath, data)

    def upload_file(self, local_path: str, relpath: str) -> None:
        """See :meth:`S3Storage.upload_file`."""
        self._gs(self._s3.upload_file, local_path, relpath)

    def download_file(self, relpath: str, local_path: str) -> None:
        """See :meth:`S3Storage.download_file`."""
        self._gs(self._s3.download_file, relpath, local_path)

    def stream_to(self, relpath: str, sink: ByteSink, *, chunk_size: int = STREAM_CHUNK) -> int:
        """See :meth:`S3Storage.stream_to`."""
        return self._gs(lambda: self._s3.stream_to(relpath, sink, chunk_size=chunk_size))

    def exists(self, relpath: str) -> bool:
        """See :meth:`S3Storage.exists`."""
        return self._gs(self._s3.exists, relpath)

    def size(self, relpath: str) -> int:
        """See :meth:`S3Storage.size`."""
        return self._gs(self._s3.size, relpath)

    def list(self, prefix: str = "") -> list[str]:
        """See :meth:`S3Storage.list`."""
        return self._gs(self._s3.list, prefix)

    def delete(self, relpath: str) -> None:
        """See :meth:`S3Storage.delete`."""
        self._gs(self._s3.delete, relpath)

    def delete_prefix(self, prefix: str) -> int:
        """See :meth:`S3Storage.delete_prefix`."""
        return self._gs(self._s3.delete_prefix, prefix)

    @staticmethod
    def _gs(fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn``; its storage errors name the object ``gs://`` (the URL the user gave)."""
        try:
            return fn(*args)
        except StorageError as exc:
            raise type(exc)(str(exc).replace("s3://", "gs://")) from exc


def hmac_keys_in_env() -> bool:
    """Whether ``GCS_KEY`` and ``GCS_SECRET`` are both set (the reference's HMAC route)."""
    return bool(os.environ.get("GCS_KEY")) and bool(os.environ.get("GCS_SECRET"))


class _ClientCache:
    """Credentials once per process, a client per thread (requests sessions are not shared)."""

    def __init__(self, options: GCSOptions) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._pid = -1
        self._credentials: Any = None
        self._project: str | None = None
        self._local = threading.local()

    def get(self) -> Any:
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    self._credentials, self._project = _credentials(self._options)
                    self._local = threading.local()  # clients made before a fork are dropped
                    self._pid = pid
        client = getattr(self._local, "client", None)
        if client is None:
            client = _make_client(self._options, self._credentials, self._project)
            self._local.client = client
        return client


def _import_storage() -> Any:
    try:
        from google.cloud import storage
    except ImportError as exc:
        raise MissingExtraError(_MISSING) from exc
    return storage


def _credentials(options: GCSOptions) -> tuple[Any, str | None]:
    """Credentials and project: the named file, anonymous on an emulator, else ADC or anonymous.

    Resolving them here, rather than in ``Client()``, keeps the client from probing the GCE
    metadata server (seconds of timeouts off Google Cloud) when an emulator or a file is given.
    """
    _import_storage()
    import google.auth
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError

    if options.credentials_file:
        with warnings.catch_warnings():
            # The file is the one the user configured, as google.auth.default() treats
            # GOOGLE_APPLICATION_CREDENTIALS (which silences the same warning).
            warnings.simplefilter("ignore", DeprecationWarning)
            credentials, project = google.auth.load_credentials_from_file(
                options.credentials_file, scopes=[_SCOPE]
            )
        return credentials, options.project or project
    if options.endpoint_url:
        return AnonymousCredentials(), options.project
    try:
        credentials, project = google.auth.default(scopes=[_SCOPE])
    except DefaultCredentialsError:
        # Like the S3 backend without credentials: public buckets stay readable.
        log.info("no Google credentials found; reading GCS anonymously")
        return AnonymousCredentials(), options.project
    return credentials, options.project or project


def _make_client(options: GCSOptions, credentials: Any, project: str | None) -> Any:
    storage = _import_storage()
    client_options = {"api_endpoint": options.endpoint_url} if options.endpoint_url else None
    # project=None makes the client use "<none>" instead of looking one up.
    client = storage.Client(project=project, credentials=credentials, client_options=client_options)
    if getattr(client, "_bucket_metadata_cache", None) is not None:
        # Newer clients fetch each bucket's metadata in a background thread, with the library's
        # own retries, to label telemetry; the library skips it when the cache is None. It would
        # be a request we do not bound (and keep retrying a stopped server long after we fail).
        client._bucket_metadata_cache = None
    return client


# -- error classification: the one place that knows google-cloud-storage's exceptions -----------


def _status(exc: BaseException) -> int:
    code = getattr(exc, "code", None)  # google.api_core.exceptions.GoogleAPICallError
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)  # google.resumable_media InvalidResponse
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else 0


def classify_gcs_error(exc: BaseException) -> Kind | None:
    """The kind of a google-cloud-storage failure, or ``None`` for an exception it is not.

    404 is ``not_found``; 401, 403, refused or missing credentials are ``denied``; 408, 429,
    5xx, connection errors, timeouts, torn bodies and checksum mismatches are ``transient``.
    """
    import requests
    import urllib3
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(exc, auth.RefreshError | auth.DefaultCredentialsError):
        # A refused token is a credentials problem, unless the token server was unreachable.
        return "transient" if isinstance(exc, auth.TransportError) else "denied"
    if isinstance(exc, auth.TransportError):
        return "transient"
    status = _status(exc)
    if status == 404:
        return "not_found"
    if status in (401, 403):
        return "denied"
    if status in (408, 429) or status >= 500:
        return "transient"
    # The media downloads read the raw urllib3 body, so its errors arrive unwrapped.
    network = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
               http.client.HTTPException, ConnectionError, TimeoutError)  # fmt: skip
    if isinstance(exc, network):
        return "transient"
    if type(exc).__name__ == "DataCorruption":  # a checksum mismatch: the body was torn
        return "transient"
    if isinstance(exc, api.GoogleAPIError) or status:
        return "other"
    return None
