"""Conditional publication of ``index.json``: the second line of defence behind the target lease.

The target lease (``worker.target_lease``) makes one job at a time the writer of a target. Should
it ever fail (a worker paused longer than its lease, a clock jump), the commit itself refuses to
replace what it did not see:

- S3: a new ``index.json`` is written with ``If-None-Match: *``; a replacement with ``If-Match``
  on the ETag that :func:`read_index` saw. S3 answers ``412 Precondition Failed`` otherwise (AWS
  since 2024-08/11; MinIO; the moto server the tests use honours both).
- Local directories: a new index is linked into place with ``os.link`` (fails if the name exists,
  so never clobbers); a replacement holds an advisory ``flock`` on ``_mds_convert/publish.lock``,
  compares the current bytes with those read, and renames over them.
- GCS and Azure Blob (``mdsloader.storage.ConditionalStorage``): the generation / ETag read with
  the index is a precondition of the write (GCS ``ifGenerationMatch``, 0 for a new index; Azure
  ``If-Match``, ``If-None-Match: *`` for a new one).
- Any other store: an unconditional write (logged once per process); the lease alone protects it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from mdsloader.errors import ObjectNotFoundError
from mdsloader.storage import ConditionalStorage, Storage
from mdsloader.storage.local import LocalStorage, atomic_write, map_os_errors
from mdsloader.storage.s3 import S3Storage

INDEX = "index.json"
LOCK = "_mds_convert/publish.lock"
log = logging.getLogger(__name__)
_warned: set[str] = set()


class PublishConflict(Exception):
    """``index.json`` changed between our read and our write: someone else published."""


@dataclass(frozen=True, slots=True)
class IndexVersion:
    """What :func:`read_index` found: the bytes (None: absent) and, on S3, the object's ETag."""

    data: bytes | None
    etag: str | None = None


def read_index(storage: Storage) -> IndexVersion:
    """Read ``index.json`` with the version tag a conditional write needs."""
    if isinstance(storage, S3Storage):
        key = storage._key(INDEX)  # private: the loader's Storage has no conditional API

        def get(client: Any) -> IndexVersion:
            response = client.get_object(Bucket=storage.bucket, Key=key)
            return IndexVersion(response["Body"].read(), response.get("ETag"))

        try:
            return storage._call("read", key, get)  # its retries and error mapping
        except ObjectNotFoundError:
            return IndexVersion(None)
    try:
        if isinstance(storage, ConditionalStorage):
            return IndexVersion(*storage.read_versioned(INDEX))
        return IndexVersion(storage.read_bytes(INDEX))
    except ObjectNotFoundError:
        return IndexVersion(None)


def write_index(storage: Storage, data: bytes, expected: IndexVersion) -> None:
    """Write ``index.json`` only if it is still what ``expected`` describes.

    A write whose response was lost but which landed (our bytes are in place) counts as done.

    Raises:
        PublishConflict: another writer published in between.
    """
    try:
        if isinstance(storage, S3Storage):
            _write_s3(storage, data, expected)
        elif isinstance(storage, LocalStorage):
            _write_local(storage, data, expected)
        elif isinstance(storage, ConditionalStorage):
            version = None if expected.data is None else expected.etag
            if not storage.write_bytes_if(INDEX, data, version=version):
                raise PublishConflict(f"{storage.child_url(INDEX)} changed while publishing")
        else:
            if type(storage).__name__ not in _warned:
                _warned.add(type(storage).__name__)
                log.warning("publish.unconditional store=%s", type(storage).__name__)
            storage.write_bytes(INDEX, data)
    except PublishConflict:
        with contextlib.suppress(Exception):
            if storage.read_bytes(INDEX) == data:
                return  # our own earlier attempt landed
        raise


def _write_s3(storage: S3Storage, data: bytes, expected: IndexVersion) -> None:
    key = storage._key(INDEX)
    condition = {"IfNoneMatch": "*"} if expected.data is None else {"IfMatch": expected.etag or ""}

    def put(client: Any) -> bool:
        from botocore.exceptions import ClientError

        try:
            client.put_object(Bucket=storage.bucket, Key=key, Body=data, **condition)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            # 409 ConditionalRequestConflict: a concurrent conditional write won the race.
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise
        return True

    if not storage._call("write", key, put):
        raise PublishConflict(f"{storage.child_url(INDEX)} changed while publishing")


def _write_local(storage: LocalStorage, data: bytes, expected: IndexVersion) -> None:
    dest = storage.child_url(INDEX)
    with map_os_errors(dest):
        if expected.data is None:
            _link_new(dest, data)
            return
        with _locked(storage.child_url(LOCK)):
            try:
                with open(dest, "rb") as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current != expected.data:
                raise PublishConflict(f"{dest} changed while publishing")
            atomic_write(dest, lambda f: f.write(data))


def _link_new(dest: str, data: bytes) -> None:
    """Create ``dest`` with ``data`` unless it exists: a hard link never replaces a name."""
    directory = os.path.dirname(dest)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".index.json.~mds-{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, dest)
        except FileExistsError:
            raise PublishConflict(f"{dest} appeared while publishing") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
