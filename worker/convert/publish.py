"""Driver side: merge the partitions' shard lists and publish ``index.json`` last, atomically.

Layout of a published dataset::

    <target>/index.json                      the commit marker, written last in one PUT/rename
    <target>/<run dir>/<partition>/shard.NNNNN.mds.zstd
    <target>/<run dir>/<partition>/index.json  (each partition's own index, as the reference keeps)

``mode="overwrite"`` writes the new run beside the old one and swaps ``index.json`` in one write.
``mode="append"`` writes the new run beside the existing ones and publishes one ``index.json``
listing the existing shards first (same order, so every old sample keeps its id) and then the new
ones; nothing of the old dataset is retired, so readers of the old index are never affected.
The write is conditional (``worker.convert.conditional``): it replaces only the index that
:meth:`Publisher.check_target` read, and creates a new one only where there was none, so a writer
that lost its target lease cannot silently replace another job's dataset.

Grace behaviour: the replaced generation's files are *retired*, not deleted, so a reader that is
mid-epoch on the old index keeps finding every shard it has yet to fetch. The retired paths and
when they were retired live in ``_mds_convert/retired.json`` (outside any run directory, ignored by
readers); housekeeping (``worker.housekeeping``) removes them once the grace period has passed.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from mdsloader.errors import IndexFormatError, ObjectNotFoundError
from mdsloader.mds.index import Index, dump_index, merge_shards, parse_index
from mdsloader.storage import Storage
from worker.convert.conditional import IndexVersion, PublishConflict, read_index, write_index
from worker.convert.model import Mode
from worker.convert.partitions import partition_dir
from worker.errors import PermanentConversionError, TargetExistsConversionError

INDEX = "index.json"
RETIRED = "_mds_convert/retired.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionOutput:
    """One partition's result row, as collected on the driver."""

    partition: int
    rows: int
    index: Index


class Publisher:
    """Checks the target, then publishes (or discards) one run directory of a dataset."""

    def __init__(self, storage: Storage, run_dir: str, mode: Mode) -> None:
        self.storage = storage
        self.run_dir = run_dir.strip("/")
        self.mode = mode
        self.previous: Index | None = None
        self.seen = IndexVersion(None)  # the index.json that check_target read (for the commit)
        self.published: Index | None = None

    def check_target(self) -> None:
        """Refuse an existing dataset under ``mode="error"``; remember it for ``overwrite``.

        An index that only references this run's directory is our own earlier publication (a
        redelivered job), so it is treated like ``overwrite``.

        Raises:
            TargetExistsConversionError: the target holds an index.json and mode is ``error``.
        """
        self.seen = read_index(self.storage)
        data = self.seen.data
        if data is None:
            return
        try:
            self.previous = parse_index(data, source=self.storage.child_url(INDEX))
        except IndexFormatError:
            self.previous = Index()  # unreadable: replaced wholesale, nothing to clean up
        if self.mode == "append":
            # A redelivered append that had already published lists its own run last: keep
            # only what came before it, so publishing again gives the same index.
            prefix = f"{self.run_dir}/"
            self.previous = Index(
                tuple(s for s in self.previous.shards if not s.file.basename.startswith(prefix))
            )
            return
        if self.mode == "error" and not self._is_own(self.previous):
            raise TargetExistsConversionError(
                f"{self.storage.child_url(INDEX)} already exists; "
                "use mode='overwrite' to replace it"
            )

    def publish(self, outputs: list[PartitionOutput], *, retire: bool = True) -> Index:
        """Merge in partition order, remove orphans, write index.json, then drop the old run.

        ``retire=False`` leaves the replaced generation alone: a caller publishing several
        datasets as one (splits) retires each with :meth:`retire_previous` once all are
        published, and may :meth:`rollback` the published ones if a later one fails.
        """
        ordered = sorted((o for o in outputs if o.index.shards), key=lambda o: o.partition)
        index = merge_shards([(self._part_path(o.partition), o.index) for o in ordered])
        self._remove_orphans(index, {o.partition for o in ordered})
        if self.mode == "append" and self.previous is not None:
            index = Index(self.previous.shards + index.shards)
            self._commit(index)
            self.published = index
            return index  # nothing is replaced: no generation to retire
        self._commit(index)
        self.published = index
        if retire:
            self.retire_previous()
        return index

    def retire_previous(self) -> None:
        """Retire the generation the published index replaced (best effort)."""
        if self.published is None or self.mode == "append":
            return
        try:
            self._remove_previous(self.published)
        except Exception:  # the new dataset is live; old files left behind are only garbage
            log.exception("conversion.previous_run_cleanup_failed")

    def rollback(self) -> None:
        """Put back the index.json that was there before :meth:`publish` (none: remove it).
        Only for a publication whose previous generation was not retired yet."""
        if self.published is None:
            return
        if self.seen.data is None:
            self.storage.delete(INDEX)
        else:
            self.storage.write_bytes(INDEX, self.seen.data)
        self.published = None

    def _commit(self, index: Index) -> None:
        """Write index.json in one conditional PUT/rename. If the write reports a failure but the
        new index is in place anyway (a lost response), it counts as published.

        Raises:
            TargetExistsConversionError: another writer published since ``check_target``.
        """
        data = dump_index(index)
        try:
            write_index(self.storage, data, self.seen)
        except PublishConflict as exc:
            raise TargetExistsConversionError(
                f"{exc}; another job published to this target meanwhile, nothing was replaced"
            ) from exc
        except Exception:
            try:
                landed = self.storage.read_bytes(INDEX) == data
            except Exception:
                landed = False
            if not landed:
                raise

    def discard(self) -> int:
        """Delete everything this run wrote (nothing is published)."""
        return self.storage.delete_prefix(f"{self.run_dir}/")

    def _part_path(self, partition: int) -> str:
        return f"{self.run_dir}/{partition_dir(partition)}"

    def _is_own(self, index: Index) -> bool:
        prefix = f"{self.run_dir}/"
        return bool(index.shards) and all(
            shard.file.basename.startswith(prefix) for shard in index.shards
        )

    def _remove_orphans(self, index: Index, partitions: set[int]) -> None:
        """Delete files of the run that the new index does not reference (failed attempts,
        an earlier delivery with more shards or partitions), keeping partition indexes."""
        keep = _referenced(index) | {f"{self._part_path(p)}/{INDEX}" for p in partitions}
        for relpath in self.storage.list(f"{self.run_dir}/"):
            if relpath not in keep:
                self.storage.delete(relpath)

    def _remove_previous(self, index: Index) -> None:
        """Retire the generation just replaced (housekeeping deletes it after the grace period)."""
        if self.previous is None:
            return
        current = _referenced(index)
        keep_dirs = _top_dirs(index)
        dirs = {f"{d}/" for d in _top_dirs(self.previous) - keep_dirs}
        loose = {f for f in _referenced(self.previous) - current if "/" not in f}
        entries = [
            e for e in read_retired(self.storage)
            if e.path.rstrip("/") not in keep_dirs and e.path not in current
        ]
        known = {e.path for e in entries}
        now = time.time()
        entries += [Retired(p, now) for p in sorted(dirs | loose) if p not in known]
        write_retired(self.storage, entries)


@dataclass(frozen=True, slots=True)
class Retired:
    """A path of a replaced generation (a run directory ending in ``/``, or a loose file) and
    when it was replaced (seconds since the epoch)."""

    path: str
    retired_at: float


def read_retired(storage: Storage) -> list[Retired]:
    """The retired list of a target; entries of the older plain-string format count as retired
    now (their grace period starts when first seen by this version)."""
    try:
        raw = json.loads(storage.read_bytes(RETIRED))
    except ObjectNotFoundError:
        return []
    except ValueError:
        log.warning("conversion.retired_list_unreadable path=%s", RETIRED)
        return []
    entries: list[Retired] = []
    for item in raw if isinstance(raw, list) else []:
        path, at = (item, time.time()) if isinstance(item, str) else (None, 0.0)
        if isinstance(item, dict):
            path, at = item.get("path"), float(item.get("retired_at") or 0.0)
        if isinstance(path, str) and path and not path.startswith(("/", "..", "_mds_convert")):
            entries.append(Retired(path, at))
    return entries


def write_retired(storage: Storage, entries: list[Retired]) -> None:
    body = [{"path": e.path, "retired_at": e.retired_at} for e in entries]
    storage.write_bytes(RETIRED, json.dumps(body).encode())


def _referenced(index: Index) -> set[str]:
    return {shard.file.basename for shard in index.shards}


def _top_dirs(index: Index) -> set[str]:
    return {
        shard.file.basename.split("/", 1)[0]
        for shard in index.shards
        if "/" in shard.file.basename
    }


def check_run_dir(run_dir: str) -> str:
    """A run directory must be one safe path segment."""
    ok = run_dir and run_dir not in (".", "..") and all(c.isalnum() or c in "-_." for c in run_dir)
    if not ok:
        raise PermanentConversionError(f"invalid run id {run_dir!r}", code="invalid_request")
    return run_dir
