"""A directory on a local (or network) file system, used as an object store.

Every write goes to a temporary file in the destination's directory, is fsynced, and then replaces
the destination with ``os.replace``, so a reader sees either the old or the new file, never a torn
one. Temporary files carry a marker that :meth:`LocalStorage.list` skips.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from mdsloader.errors import AccessDeniedError, ObjectNotFoundError, StorageError
from mdsloader.storage.base import STREAM_CHUNK, ByteSink, clean_prefix, clean_relpath

_TMP_MARK = ".~mds-"
_TMP_NAME = re.compile(r"^\..*\.~mds-[0-9a-f]{32}\.tmp$")
_COPY_CHUNK = 8 << 20


class LocalStorage:
    """A :class:`~mdsloader.storage.base.Storage` rooted at a local directory.

    The directory need not exist: writes create it (and any parent directories) on demand, and
    listing a missing directory returns ``[]``, as listing an empty S3 prefix does.

    Args:
        root: The root directory; made absolute.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        """Root the storage at ``root`` (see the class docstring)."""
        self.url = os.path.abspath(os.fspath(root))

    def __repr__(self) -> str:
        """``LocalStorage('/abs/dir')``."""
        return f"LocalStorage({self.url!r})"

    def __eq__(self, other: object) -> bool:
        """Storages are equal when they have the same root."""
        if not isinstance(other, LocalStorage):
            return NotImplemented
        return other.url == self.url

    def __hash__(self) -> int:
        """Hash of the root, consistent with ``==``."""
        return hash(("local", self.url))

    def child_url(self, relpath: str) -> str:
        """The absolute local path of ``relpath``."""
        return os.path.join(self.url, *clean_relpath(relpath).split("/"))

    def read_bytes(self, relpath: str) -> bytes:
        """The whole content of a file."""
        path = self.child_url(relpath)
        with map_os_errors(path), open(path, "rb") as f:
            return f.read()

    def read_range(self, relpath: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a file; shorter past the end of the file."""
        _check_range(start, end)
        path = self.child_url(relpath)
        with map_os_errors(path), open(path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Atomically create or replace a file with ``data``."""
        path = self.child_url(relpath)
        with map_os_errors(path):
            atomic_write(path, lambda f: f.write(data))

    def upload_file(self, local_path: str, relpath: str) -> None:
        """Atomically copy ``local_path`` to ``relpath``."""
        _atomic_copy(os.fspath(local_path), self.child_url(relpath))

    def download_file(self, relpath: str, local_path: str) -> None:
        """Atomically copy ``relpath`` to ``local_path`` (temporary file, then rename)."""
        _atomic_copy(self.child_url(relpath), os.path.abspath(os.fspath(local_path)))

    def stream_to(self, relpath: str, sink: ByteSink, *, chunk_size: int = STREAM_CHUNK) -> int:
        """Feed the file to ``sink`` in ``chunk_size`` pieces (one attempt: disks do not retry)."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        path = self.child_url(relpath)
        with map_os_errors(path):
            source = open(path, "rb")  # noqa: SIM115 - closed below; only the open is mapped
        delivered = 0
        with source:
            sink.restart()
            while True:
                # The sink's own OSErrors (a full disk) must not read as this file's errors.
                with map_os_errors(path):
                    chunk = source.read(chunk_size)
                if not chunk:
                    return delivered
                sink.write(chunk)
                delivered += len(chunk)

    def exists(self, relpath: str) -> bool:
        """Whether ``relpath`` is an existing file."""
        return os.path.isfile(self.child_url(relpath))

    def size(self, relpath: str) -> int:
        """The file's size in bytes."""
        path = self.child_url(relpath)
        with map_os_errors(path):
            if os.path.isdir(path):
                raise FileNotFoundError(errno.ENOENT, "is a directory, not a file", path)
            return os.path.getsize(path)

    def list(self, prefix: str = "") -> list[str]:
        """Relative paths of all files starting with ``prefix``, sorted, recursing into dirs."""
        prefix = clean_prefix(prefix)
        # Only walk the deepest directory the prefix names; the rest of the tree cannot match.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        found = [rel for rel in self._walk(base) if rel.startswith(prefix)]
        return sorted(found)

    def delete(self, relpath: str) -> None:
        """Delete a file; a missing file is fine."""
        path = self.child_url(relpath)
        with map_os_errors(path), contextlib.suppress(FileNotFoundError):
            os.remove(path)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every file ``list(prefix)`` returns, then the directories left empty."""
        doomed = self.list(prefix)
        for relpath in doomed:
            self.delete(relpath)
        self._prune_empty_dirs({rel.rsplit("/", 1)[0] for rel in doomed if "/" in rel})
        return len(doomed)

    def sub(self, relpath: str) -> LocalStorage:
        """A storage rooted at the directory ``relpath`` below this one."""
        return LocalStorage(self.child_url(relpath))

    def _walk(self, base: str) -> Iterator[str]:
        top = os.path.join(self.url, *base.split("/")) if base else self.url
        with map_os_errors(top):
            for dirpath, _dirnames, filenames in os.walk(top, onerror=_raise_unless_missing):
                reldir = os.path.relpath(dirpath, self.url).replace(os.sep, "/")
                for name in filenames:
                    if not _TMP_NAME.match(name):
                        yield name if reldir == "." else f"{reldir}/{name}"

    def _prune_empty_dirs(self, reldirs: set[str]) -> None:
        # Deepest first, so that a parent emptied by removing its children goes too.
        candidates: set[str] = set()
        for reldir in reldirs:
            parts = reldir.split("/")
            candidates.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        for reldir in sorted(candidates, key=lambda d: d.count("/"), reverse=True):
            with contextlib.suppress(OSError):  # not empty, or already gone: both fine
                os.rmdir(os.path.join(self.url, *reldir.split("/")))


@contextlib.contextmanager
def map_os_errors(path: str) -> Iterator[None]:
    """Translate ``OSError`` raised inside the block into the loader's storage errors.

    Args:
        path: The path the operation was about, named in the message.

    Raises:
        ObjectNotFoundError: For a missing file or directory.
        AccessDeniedError: For permission errors.
        StorageError: For any other ``OSError``.
    """
    try:
        yield
    except StorageError:
        raise
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        # The OS's wording, which the reference's local downloads raise (shutil.copy).
        raise ObjectNotFoundError(f"No such file or directory: {exc.filename or path}") from exc
    except PermissionError as exc:
        raise AccessDeniedError(f"permission denied: {exc.filename or path}") from exc
    except OSError as exc:
        raise StorageError(f"{exc.strerror or exc} ({exc.filename or path})") from exc


def _check_range(start: int, end: int) -> None:
    if start < 0 or end < start:
        raise ValueError(f"invalid byte range [{start}, {end})")


def _raise_unless_missing(exc: OSError) -> None:
    # os.walk calls this for unreadable directories; a missing root just means "nothing here".
    if not isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        raise exc


def _atomic_copy(src: str, dest: str) -> None:
    with map_os_errors(src), open(src, "rb") as source, map_os_errors(dest):
        atomic_write(dest, lambda f: shutil.copyfileobj(source, f, _COPY_CHUNK))


def atomic_write(dest: str, fill: Callable[[BinaryIO], object]) -> None:
    """Write ``dest`` through a temporary sibling file, ``fsync`` and ``os.replace``.

    Parent directories are created. On any failure the temporary file is removed and ``dest`` is
    left as it was. ``OSError`` propagates unmapped (wrap the call in :func:`map_os_errors`).

    Args:
        dest: The local path to create or replace.
        fill: Writes the content into the open temporary file.
    """
    directory, name = os.path.split(dest)
    Path(directory).mkdir(parents=True, exist_ok=True)
    tmp = os.path.join(directory, f".{name}{_TMP_MARK}{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not every platform or file system can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
