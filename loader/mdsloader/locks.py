"""Advisory file locks for node-local coordination between processes.

``fcntl.flock`` locks belong to an open file description, so the kernel releases them when the
holder exits or is killed: a crashed worker can never leave a lock that blocks the next run, which
is the failure mode of the reference's ``/dev/shm`` state. Lock files are empty and are never
deleted (deleting a lock file while another process waits on it would let two holders in).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: Path, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    """Hold an advisory lock on ``path`` (created if missing) for the ``with`` block.

    Args:
        path: The lock file.
        shared: Take a shared (reader) lock instead of an exclusive one.
        blocking: Wait for the lock; when False, yield False at once if it is held elsewhere.

    Yields:
        True when the lock is held (always, when blocking).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        if not blocking:
            flags |= fcntl.LOCK_NB
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
