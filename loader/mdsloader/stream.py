"""One source dataset of a StreamingDataset: where it lives, its weight, and its download knobs.

A :class:`Stream` mirrors the reference's ``Stream`` keyword arguments. It is torch-free and
pickles cheaply (the storage client is opened lazily and dropped when pickled by the storage
itself). :meth:`Stream.fetch_index` brings the stream's ``index.json`` into the local cache and,
unlike the reference, checks a cached index against the remote one each time: when the remote
changed, the cached shards it described are deleted before the new index is installed, so a stale
cache is never read. (A remote without an ``index.json`` leaves a cached index in use, as in the
reference.)

Advisory lock files live beside the cache directory, not in it (:func:`lock_dir_for`), so the
cache holds exactly the remote's files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mdsloader.atomic import write_bytes_atomic
from mdsloader.errors import IndexNotFoundError, ObjectNotFoundError
from mdsloader.locks import file_lock

if TYPE_CHECKING:
    from mdsloader.storage.base import Storage

INDEX_BASENAME = "index.json"
#: Hidden directory holding our advisory lock files (see :func:`lock_dir_for`).
LOCK_DIR = ".mdsloader-locks"

_log = logging.getLogger(__name__)

_INHERITED = (
    "remote",
    "local",
    "split",
    "download_retry",
    "download_timeout",
    "validate_hash",
    "keep_zip",
)


def default_local_dir(remote: str | None, split: str, uid: int | None = None) -> str:
    """The deterministic cache directory used when ``local`` is omitted.

    It depends on the remote, the split and the user id, so two users on one machine never share a
    cache (reference issue #332) while reruns of one user reuse it (the reference refuses to).

    Args:
        remote: The stream's remote URL or path.
        split: The split (may be empty).
        uid: The user id; defaults to the current process's.
    """
    uid = os.getuid() if uid is None else uid
    digest = hashlib.blake2s((remote or "").encode("utf-8"), digest_size=16).hexdigest()
    root = Path(tempfile.gettempdir()) / f"mdsloader-{uid}" / "cache" / digest
    return str(root / split) if split else str(root)


def lock_dir_for(local_root: str | os.PathLike[str]) -> Path:
    """The directory of the advisory lock files of the cache directory ``local_root``.

    It is ``<parent>/.mdsloader-locks/<name>``, beside the cache rather than in it, so that the
    cache holds exactly the remote's files (tools that mirror or compare a cache with its remote
    see no extra entry). It depends only on the real path of ``local_root``, so every process
    that reads the same directory, however it was named, shares the same locks.

    When the cache directory is a mount point (its parent may be a different, container-private
    filesystem) or its parent is not writable, the locks stay inside the cache, in
    ``<local_root>/.mdsloader-locks``: they must live where every process sharing the cache
    sees them.
    """
    root = Path(os.path.realpath(local_root))
    parent = root.parent
    if root == parent or os.path.ismount(root) or not _writable_dir(parent):
        return root / LOCK_DIR
    return parent / LOCK_DIR / root.name


def _writable_dir(path: Path) -> bool:
    """Whether ``path`` (or, if missing, its nearest existing ancestor) is a writable directory."""
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def join_url(base: str, split: str) -> str:
    """Append a split to a remote URL or path (``s3://b/p`` + ``train`` -> ``s3://b/p/train``)."""
    return f"{base.rstrip('/')}/{split}" if split else base


def _check_weight(name: str, value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"`{name}` must be non-negative, got {value}")


class Stream:
    """A dataset directory (remote and/or local) taking part in a StreamingDataset.

    Unset download knobs inherit the StreamingDataset's values.

    Args:
        remote: Remote dataset directory (``s3://bucket/prefix`` or a local/NFS path). None means
            the data is already in ``local``.
        local: Local cache directory. If None, a deterministic per-user directory under the temp
            dir is derived from ``remote`` and ``split`` (reusing it is safe).
        split: Subdirectory appended to both remote and local.
        proportion: Relative weight of this stream (exclusive with ``repeat`` and ``choose``).
        repeat: Multiplier of this stream's samples per epoch.
        choose: Absolute number of samples drawn from this stream per epoch.

            Once a dataset is built from the stream, ``proportion``, ``repeat`` and ``choose`` read
            back the resolved values (its share of the epoch, its repeat factor and its samples
            per epoch), as in the reference; the values given here still decide the weighting of
            a dataset built later from the same stream.
        download_retry: Retries after a failed download attempt (so ``2`` means up to 3 attempts;
            the reference counts attempts instead).
        download_timeout: Seconds allowed for one network read before the attempt fails.
        validate_hash: A hash algorithm recorded in the index, checked on each downloaded file.
        keep_zip: Keep compressed shard files after decompressing them.

    Raises:
        ValueError: More than one of proportion/repeat/choose, negative weights or retries, or a
            non-positive timeout.
    """

    def __init__(
        self,
        *,
        remote: str | None = None,
        local: str | None = None,
        split: str | None = None,
        proportion: float | None = None,
        repeat: float | None = None,
        choose: int | None = None,
        download_retry: int | None = None,
        download_timeout: float | None = None,
        validate_hash: str | None = None,
        keep_zip: bool | None = None,
    ) -> None:
        if sum(x is not None for x in (proportion, repeat, choose)) > 1:
            raise ValueError("At most one of `proportion`, `repeat`, and `choose` may be specified")
        for name, value in (("proportion", proportion), ("repeat", repeat), ("choose", choose)):
            _check_weight(name, value)
        if download_retry is not None and download_retry < 0:
            raise ValueError(f"`download_retry` must be non-negative, got {download_retry}")
        if download_timeout is not None and download_timeout <= 0:
            raise ValueError(f"`download_timeout` must be positive, got {download_timeout}")
        self.remote = remote
        self.split = split or ""
        # Derived now, like the reference's, so ``stream.local`` is known before a dataset is
        # built (the dataset may still change it: see apply_default).
        self.local = (
            local if local is not None or remote is None else default_local_dir(remote, self.split)
        )
        self._weights: list[float | None] = [proportion, repeat, choose]
        self._resolved: tuple[float, float, int] | None = None
        self._lock_dir: Path | None = None
        self.download_retry = download_retry
        self.download_timeout = download_timeout
        self.validate_hash = validate_hash
        self.keep_zip = keep_zip
        self._storage: Storage | None = None

    def __repr__(self) -> str:
        return f"Stream(remote={self.remote!r}, local={self.local!r}, split={self.split!r})"

    # ---- weights ------------------------------------------------------------------------------

    @property
    def proportion(self) -> float | None:
        """Relative weight: as given until a dataset resolves it, then this stream's epoch share."""
        return self._resolved[0] if self._resolved else self._weights[0]

    @proportion.setter
    def proportion(self, value: float | None) -> None:
        self._set_weight(0, value)

    @property
    def repeat(self) -> float | None:
        """Repeat factor: as given until a dataset resolves it, then chosen / unique samples."""
        return self._resolved[1] if self._resolved else self._weights[1]

    @repeat.setter
    def repeat(self, value: float | None) -> None:
        self._set_weight(1, value)

    @property
    def choose(self) -> int | None:
        """Samples per epoch: as given until a dataset resolves it, then the resolved count."""
        return self._resolved[2] if self._resolved else self._weights[2]

    @choose.setter
    def choose(self, value: int | None) -> None:
        self._set_weight(2, value)

    def _set_weight(self, slot: int, value: float | None) -> None:
        self._weights[slot] = value
        self._resolved = None

    def resolve_weights(self, proportion: float, repeat: float, choose: int) -> None:
        """Record the weights a dataset derived for this stream (what the attributes return)."""
        self._resolved = (float(proportion), float(repeat), int(choose))

    def apply_default(self, default: Mapping[str, Any]) -> None:
        """Fill every unset knob from the dataset's values, then derive the local directory.

        Raises:
            ValueError: Neither ``remote`` nor ``local`` is known.
        """
        self._resolved = None  # a new dataset weighs the stream by the values given
        self._lock_dir = None
        for name in _INHERITED:
            if getattr(self, name) is None:
                setattr(self, name, default.get(name))
        self.split = self.split or default.get("split") or ""
        if not (self.remote or self.local):
            raise ValueError("`remote` and/or `local` path must be provided")
        if self.download_retry is None:
            self.download_retry = 2
        if self.download_timeout is None:
            self.download_timeout = 60.0
        if self.keep_zip is None:
            self.keep_zip = False
        if self.local is None:
            self.local = default_local_dir(self.remote, self.split)
        if self.remote is not None and _same_place(self.remote, join_url(self.local, "")):
            # Reading a directory in place: nothing to download, and zips are the only copy.
            self.remote = None

    @property
    def has_remote(self) -> bool:
        """Whether shards can be (re)downloaded, i.e. a local copy is never the only one."""
        return self.remote is not None

    @property
    def local_root(self) -> Path:
        """The directory holding this stream's index and shards on this node."""
        if self.local is None:
            raise RuntimeError("Stream.apply_default() must run before the stream is used")
        return Path(join_url(self.local, self.split))

    @property
    def remote_url(self) -> str | None:
        """The remote directory of this stream's split, or None."""
        return None if self.remote is None else join_url(self.remote, self.split)

    @property
    def keep_zip_files(self) -> bool:
        """Whether compressed files stay after decompression (forced when there is no remote)."""
        return bool(self.keep_zip) or not self.has_remote

    @property
    def storage(self) -> Storage:
        """The remote storage, opened on first use with this stream's retry and timeout."""
        if self._storage is None:
            from mdsloader.storage import open_storage

            url = self.remote_url
            if url is None:
                raise RuntimeError(f"{self!r} has no remote to download from")
            retries = int(self.download_retry or 0)
            timeout = float(self.download_timeout or 60.0)
            self._storage = open_storage(url, retries=retries, timeout=timeout)
        return self._storage

    @property
    def lock_dir(self) -> Path:
        """The directory of this stream's advisory lock files (see :func:`lock_dir_for`)."""
        if self._lock_dir is None:
            self._lock_dir = lock_dir_for(self.local_root)
        return self._lock_dir

    def lock_path(self, name: str) -> Path:
        """Path of a named advisory lock file of this stream's cache directory."""
        return self.lock_dir / f"{name}.lock"

    def fetch_index(self) -> bytes:
        """The stream's ``index.json`` bytes, refreshing the local copy from the remote.

        With a remote, the remote index is read every time and compared byte for byte with the
        cached copy; if they differ, the cached shard files of the old index are deleted and the
        new index is installed atomically, all under the stream's index lock. A remote without
        an index leaves a cached one in use (the reference never looks at the remote when an
        index is cached).

        Raises:
            IndexNotFoundError: No remote and no local index (also a ``RuntimeError``, as in the
                reference).
            ObjectNotFoundError: Neither the remote nor the cache holds an index.
            StorageError: The remote could not be read after the configured retries.
        """
        path = self.local_root / INDEX_BASENAME
        if not self.has_remote:
            try:
                return path.read_bytes()
            except FileNotFoundError as exc:
                raise IndexNotFoundError(
                    f"No `remote` provided, but local file {path} does not exist either"
                ) from exc
        try:
            remote = self.storage.read_bytes(INDEX_BASENAME)
        except ObjectNotFoundError as missing:
            try:
                cached = path.read_bytes()
            except FileNotFoundError:
                # The remote's error, not the cache's: it names where the index was looked for.
                raise missing from None
            _log.warning(
                "%s has no %s; using the cached copy %s", self.remote_url, INDEX_BASENAME, path
            )
            return cached
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == remote:
                return remote
        with file_lock(self.lock_path("index")):
            cached = path.read_bytes() if path.exists() else None
            if cached != remote:
                if cached is not None:
                    _drop_stale_shards(self.local_root, cached, remote)
                write_bytes_atomic(path, remote)
        return remote


def _same_place(remote: str, local: str) -> bool:
    if "://" in remote and not remote.startswith("file://"):
        return False
    remote = remote.removeprefix("file://")
    return os.path.abspath(remote) == os.path.abspath(local)


def _file_entries(index_bytes: bytes) -> dict[str, Any]:
    """Map each shard file basename of an index to its file-info dict (raw and zip)."""
    try:
        shards = json.loads(index_bytes)["shards"]
    except (ValueError, KeyError, TypeError):
        return {}
    entries: dict[str, Any] = {}
    for shard in shards:
        for key in ("raw_data", "zip_data", "raw_meta", "zip_meta"):
            info = shard.get(key) if isinstance(shard, dict) else None
            if isinstance(info, dict) and "basename" in info:
                entries[info["basename"]] = info
    return entries


def _drop_stale_shards(root: Path, old: bytes, new: bytes) -> None:
    """Delete cached files whose index entry changed (or is gone) between two index versions."""
    old_entries, new_entries = _file_entries(old), _file_entries(new)
    for basename, info in old_entries.items():
        fresh = new_entries.get(basename)
        # Without recorded hashes equal sizes prove nothing, so such files are re-fetched.
        if fresh is not None and fresh == info and info.get("hashes"):
            continue
        with contextlib.suppress(FileNotFoundError):
            (root / basename).unlink()


def resolve_stream_weights(
    streams: list[Stream], choose_per_stream: list[int], samples_per_stream: list[int]
) -> None:
    """Record on each stream the weights a dataset derived, as the reference's streams hold them.

    ``proportion`` is the stream's share of the epoch: the given proportions normalised when
    streams are weighted relatively, the streams' sizes when no weight is given, else the
    chosen counts' shares; ``repeat`` is chosen / unique samples; ``choose`` the samples taken
    per epoch.
    """
    import numpy as np

    chosen = np.asarray(choose_per_stream, np.float64)
    sizes = np.asarray(samples_per_stream, np.float64)
    given = [stream._weights for stream in streams]
    if given[0][0] is not None:
        shares = np.array([weights[0] for weights in given], np.float64)
    elif all(weight is None for weights in given for weight in weights):
        shares = sizes
    else:
        shares = chosen
    with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero epoch: nan, as the reference
        proportions = shares / shares.sum()
        repeats = chosen / sizes
    for stream, proportion, repeat, choose in zip(streams, proportions, repeats, choose_per_stream):
        stream.resolve_weights(float(proportion), float(repeat), int(choose))
