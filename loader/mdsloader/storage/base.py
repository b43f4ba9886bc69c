"""The ``Storage`` protocol that every backend implements, and helpers shared by the backends.

Paths handed to a storage are *relative* to its root and always use ``/`` separators
(``"index.json"``, ``"00003/shard.00000.mds.zstd"``), whatever the backend or the operating system.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

# Pieces in which stream_to hands an object over: large enough that per-piece overhead (one
# Python call, one write syscall) is noise, small enough that several streams in flight hold
# only a few MiB between them.
STREAM_CHUNK = 1 << 20


class ByteSink(Protocol):
    """Where :meth:`Storage.stream_to` delivers an object's bytes."""

    def restart(self) -> None:
        """Forget everything written so far: called before each attempt (retries start over)."""
        ...

    def write(self, data: bytes, /) -> object:
        """Take the next piece of the object, in order."""
        ...


@runtime_checkable
class Storage(Protocol):
    """A directory-like root on a local disk or an object store.

    Every method may raise :class:`~mdsloader.errors.StorageError` subclasses:
    ``ObjectNotFoundError`` for a missing object (or bucket), ``AccessDeniedError`` when the
    credentials do not allow the operation, ``StorageUnavailableError`` when the backend kept
    failing (network, throttling, 5xx) after the configured retries.

    Attributes:
        url: The root URL, e.g. ``"s3://bucket/prefix"`` or ``"/abs/dir"``.
    """

    url: str

    def child_url(self, relpath: str) -> str:
        """The full URL (or absolute path) of ``relpath``."""
        ...

    def read_bytes(self, relpath: str) -> bytes:
        """The whole content of an object."""
        ...

    def read_range(self, relpath: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of an object; shorter (like a slice) past the end."""
        ...

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Create or atomically replace an object: readers see the old or the new bytes."""
        ...

    def upload_file(self, local_path: str, relpath: str) -> None:
        """Copy a local file to ``relpath``, atomically replacing it."""
        ...

    def download_file(self, relpath: str, local_path: str) -> None:
        """Copy an object to a local file via a temporary file and a rename."""
        ...

    def stream_to(self, relpath: str, sink: ByteSink, *, chunk_size: int = STREAM_CHUNK) -> int:
        """Feed an object's bytes to ``sink.write`` in order, in pieces of at most ``chunk_size``.

        The whole object is never held in memory. ``sink.restart()`` is called before every
        attempt, so a retry after a failure mid-object starts the sink over. Errors raised by the
        sink propagate unchanged and are not retried.

        Returns:
            The number of bytes delivered by the attempt that succeeded.
        """
        ...

    def exists(self, relpath: str) -> bool:
        """Whether the object exists."""
        ...

    def size(self, relpath: str) -> int:
        """The object's size in bytes."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Relative paths of all objects whose relpath starts with ``prefix``; sorted, recursive."""
        ...

    def delete(self, relpath: str) -> None:
        """Delete an object; a missing object is not an error."""
        ...

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object listed by ``list(prefix)``; returns how many were deleted."""
        ...

    def sub(self, relpath: str) -> Storage:
        """A storage of the same kind rooted at ``relpath`` below this one."""
        ...


def clean_relpath(relpath: str) -> str:
    """Normalise a relative object path and refuse paths that could escape the root.

    Empty segments and ``.`` are dropped (``"./a//b"`` -> ``"a/b"``).

    Args:
        relpath: A ``/``-separated path relative to a storage root.

    Returns:
        The normalised path, never empty.

    Raises:
        ValueError: If the path is absolute, empty, or contains a ``..`` segment or a backslash.
    """
    parts = _clean_parts(relpath)
    if not parts:
        raise ValueError(f"empty object path: {relpath!r}")
    return "/".join(parts)


def clean_prefix(prefix: str) -> str:
    """Normalise a listing prefix like :func:`clean_relpath`, keeping a trailing ``/``.

    ``""`` (everything) is allowed; ``"a/"`` lists below directory ``a`` while ``"a"`` also
    matches ``"ab"``, as with S3 prefixes.
    """
    parts = _clean_parts(prefix)
    if not parts:
        return ""
    cleaned = "/".join(parts)
    return cleaned + "/" if prefix.endswith("/") else cleaned


def join_relpath(root: str, relpath: str) -> str:
    """Join two ``/``-separated relative paths, either of which may be empty."""
    if not root:
        return relpath
    if not relpath:
        return root
    return f"{root.rstrip('/')}/{relpath}"


def _clean_parts(path: str) -> list[str]:
    if path.startswith("/"):
        raise ValueError(f"object paths are relative to the storage root, got {path!r}")
    # A backslash is a separator on Windows and a legal key byte on S3: refuse the ambiguity.
    if "\\" in path:
        raise ValueError(f"object paths use '/' separators, got {path!r}")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"'..' is not allowed in an object path: {path!r}")
    return parts


def upload_many(
    storage: Storage, items: Iterable[tuple[str, str]], *, max_workers: int = 8
) -> None:
    """Upload several local files concurrently, each with ``storage.upload_file``.

    Args:
        storage: Where to upload; must be safe to use from several threads (all ours are).
        items: ``(local_path, relpath)`` pairs.
        max_workers: Number of uploads in flight at once.

    Raises:
        StorageError: The first failure, after the uploads already started have finished.
    """
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="mds-upload") as pool:
        futures = [pool.submit(storage.upload_file, local, rel) for local, rel in items]
    for future in futures:
        future.result()


@runtime_checkable
class ConditionalStorage(Protocol):
    """A storage that can make a write conditional on the version it read (GCS, Azure Blob).

    Versions are opaque tokens: a GCS object's generation, an Azure blob's ETag. Callers use this
    to publish ``index.json`` only over the index they saw (or only where none exists).
    """

    def read_versioned(self, relpath: str) -> tuple[bytes, str]:
        """The object's bytes and the version they belong to (one request, so they agree)."""
        ...

    def write_bytes_if(self, relpath: str, data: bytes, *, version: str | None) -> bool:
        """Write ``data`` only if the object is at ``version`` (``None``: only if it is absent).

        Returns:
            ``False`` when the precondition failed (someone else wrote in between), else ``True``.
        """
        ...
