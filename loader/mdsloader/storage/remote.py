"""What the object-store backends share: retry-then-map, client caches, byte sinks, deletes.

Each SDK-backed backend (GCS, Azure Blob) classifies its SDK's exceptions into one of four kinds
(``not_found``, ``denied``, ``transient``, ``other``) in one function of its own module;
:func:`call_with_retries` retries the transient kind with backoff and turns the final failure into
the loader's :mod:`~mdsloader.errors` here, so the two backends word their errors alike.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO, ClassVar, Literal, TypeVar

from mdsloader.errors import (
    AccessDeniedError,
    MDSError,
    ObjectNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from mdsloader.storage.base import ByteSink, clean_prefix
from mdsloader.storage.bucket import PrefixStorage
from mdsloader.storage.retry import RetryPolicy, retry_call

T = TypeVar("T")
OptionsT = TypeVar("OptionsT")
Kind = Literal["not_found", "denied", "transient", "other"]
log = logging.getLogger(__name__)

# Module-level rather than per cache, so that a fork can replace it: a child must not inherit a
# lock that another thread of the parent held at the moment of the fork.
_CREATE_LOCK = threading.Lock()


def _reset_lock_after_fork() -> None:
    global _CREATE_LOCK
    _CREATE_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_after_fork)


def call_with_retries(
    fn: Callable[[], T],
    *,
    op: str,
    where: str,
    service: str,
    policy: RetryPolicy,
    classify: Callable[[BaseException], Kind | None],
) -> T:
    """Run ``fn`` with retries of its transient failures; map what it finally raises.

    Args:
        fn: One attempt of the operation.
        op: The operation, for messages (``"read"``, ``"upload"``...).
        where: The object's URL, for messages.
        service: The store and its endpoint, for messages of unavailability.
        policy: Retries and backoff.
        classify: The backend's classifier; ``None`` for an exception it does not know (such an
            exception, like any :class:`~mdsloader.errors.MDSError`, propagates unchanged).

    Raises:
        StorageError: The mapped failure, chained to the SDK's exception.
    """

    def retryable(exc: BaseException) -> bool:
        return not isinstance(exc, MDSError) and classify(exc) == "transient"

    def map_error(exc: BaseException, attempts: int) -> StorageError | None:
        kind = classify(exc)
        if kind is None:
            return None
        return storage_error(kind, op=op, where=where, service=service, attempts=attempts, exc=exc)

    def on_retry(retry: int, exc: BaseException, delay: float) -> None:
        log.debug("%s retry %s %s: %d in %.3fs: %s", service, op, where, retry + 1, delay, exc)

    return retry_then_map(
        fn, policy=policy, is_retryable=retryable, map_error=map_error, on_retry=on_retry
    )


def retry_then_map(
    fn: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_retryable: Callable[[BaseException], bool],
    map_error: Callable[[BaseException, int], StorageError | None],
    on_retry: Callable[[int, BaseException, float], None],
) -> T:
    """:func:`~mdsloader.storage.retry.retry_call`, then the final failure mapped (every backend).

    Args:
        fn: One attempt of the operation.
        policy: Retries and backoff.
        is_retryable: Whether a failure is worth another attempt.
        map_error: The loader's error for the final failure and the number of attempts made, or
            ``None`` to let the failure propagate unchanged (as every ``MDSError`` does).
        on_retry: Called before each retry's sleep (for logging).

    Raises:
        StorageError: What ``map_error`` made, chained to the original exception.
    """
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        return fn()

    try:
        return retry_call(attempt, policy=policy, is_retryable=is_retryable, on_retry=on_retry)
    except MDSError:
        raise
    except Exception as exc:
        mapped = map_error(exc, attempts)
        if mapped is None:
            raise
        raise mapped from exc


def storage_error(
    kind: Kind, *, op: str, where: str, service: str, attempts: int, exc: BaseException
) -> StorageError:
    """The loader's error for a classified failure (see :func:`call_with_retries`)."""
    detail = _first_line(exc)
    if kind == "not_found":
        return ObjectNotFoundError(f"{where} does not exist (or its bucket/container is missing)")
    if kind == "denied":
        return AccessDeniedError(f"access denied: {op} {where}: {detail}")
    if kind == "transient":
        plural = "s" if attempts != 1 else ""
        return StorageUnavailableError(
            f"{op} {where} failed: {service} kept failing after {attempts} attempt{plural}: "
            f"{detail}"
        )
    return StorageError(f"{op} {where} failed: {detail}")


def _first_line(exc: BaseException) -> str:
    # Azure's messages carry the whole response (headers, XML body) after the first line.
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


class FileSink:
    """A :class:`~mdsloader.storage.base.ByteSink` writing to an open binary file."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle

    def restart(self) -> None:
        """Empty the file: a retry starts from scratch."""
        self._handle.seek(0)
        self._handle.truncate()

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        self._handle.write(data)


class ChunkingWriter:
    """A file-like ``write`` that hands a sink pieces of exactly ``chunk_size`` (the last shorter).

    SDKs write downloads in their own piece sizes (8 KiB for google-resumable-media); this turns
    them into the sink's pieces. Call :meth:`flush` after the last write.
    """

    def __init__(self, sink: ByteSink, chunk_size: int) -> None:
        self._sink = sink
        self._size = chunk_size
        self._pending = bytearray()
        self.delivered = 0

    def write(self, data: Any) -> int:
        """Buffer ``data`` and hand over every full piece."""
        self._pending += data
        while len(self._pending) >= self._size:
            self._emit(bytes(self._pending[: self._size]))
            del self._pending[: self._size]
        return len(data)

    def flush(self) -> None:
        """Hand over what is left."""
        if self._pending:
            self._emit(bytes(self._pending))
            self._pending.clear()

    def _emit(self, piece: bytes) -> None:
        self._sink.write(piece)
        self.delivered += len(piece)


class ProcessClient:
    """One SDK client per process, made by ``make`` on first use (S3, Azure Blob).

    A client inherited through ``fork`` shares its connection pool with the parent, so a child
    makes its own. Making a client is not always thread-safe (boto3's is not; using one is),
    hence the creation lock.
    """

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._client: Any = None
        self._pid = -1

    def get(self) -> Any:
        """This process's client."""
        if self._pid != os.getpid():
            with _CREATE_LOCK:
                if self._pid != os.getpid():
                    self._client = self._make()
                    self._pid = os.getpid()
        return self._client


def delete_concurrently(
    delete: Callable[[str], None], names: list[str], *, max_workers: int, thread_name_prefix: str
) -> int:
    """Call ``delete`` on each of ``names``, ``max_workers`` at a time; returns ``len(names)``.

    Raises:
        Exception: The error of the first failing name (in order), once every delete has run.
    """
    workers = max(1, min(max_workers, len(names)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_name_prefix) as pool:
        for _ in pool.map(delete, names):
            pass
    return len(names)


class SdkStorage(PrefixStorage[OptionsT]):
    """What the SDK-backed stores (GCS, Azure Blob) do alike around their SDK's calls.

    Every remote call goes through :meth:`_retrying` (:func:`call_with_retries` with the
    backend's classifier); listing and deleting by full object name are built on two hooks,
    :meth:`_list_all` and :meth:`_delete_one`. Subclasses set ``_delete_threads`` (the delete
    pool's thread-name prefix) and define :meth:`_classify` and :meth:`_service`. The options
    need ``retry_policy`` and ``max_concurrency``.
    """

    _delete_threads: ClassVar[str]

    def delete(self, relpath: str) -> None:
        """Delete an object; a missing one is fine."""
        self._delete_name(self._key(relpath))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object ``list(prefix)`` returns, several at a time."""
        return delete_concurrently(
            self._delete_name,
            self._list_names(prefix),
            max_workers=self.options.max_concurrency,  # type: ignore[attr-defined]
            thread_name_prefix=self._delete_threads,
        )

    # -- hooks -------------------------------------------------------------------------------

    def _classify(self, exc: BaseException) -> Kind | None:
        """The backend's classifier of its SDK's exceptions (see :func:`call_with_retries`)."""
        raise NotImplementedError

    def _service(self) -> str:
        """The store and its endpoint, for messages of unavailability."""
        raise NotImplementedError

    def _list_all(self, full_prefix: str) -> list[str]:
        """One attempt at the names of all objects starting with ``full_prefix``."""
        raise NotImplementedError

    def _delete_one(self, name: str) -> None:
        """One attempt at deleting the object ``name`` (a missing one may raise)."""
        raise NotImplementedError

    # -- shared internals --------------------------------------------------------------------

    def _list_names(self, prefix: str) -> list[str]:
        full = self._root() + clean_prefix(prefix)
        return sorted(self._retrying("list", full, lambda: self._list_all(full)))

    def _delete_name(self, name: str) -> None:
        def delete() -> None:
            try:
                self._delete_one(name)
            except Exception as exc:
                if self._classify(exc) != "not_found":  # already gone is fine
                    raise

        self._retrying("delete", name, delete)

    def _retrying(self, op: str, key: str, attempt: Callable[[], T]) -> T:
        return call_with_retries(
            attempt,
            op=op,
            where=f"{self._origin()}/{key}",
            service=self._service(),
            policy=self.options.retry_policy,  # type: ignore[attr-defined]
            classify=self._classify,
        )
