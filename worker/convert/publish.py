"""Driver side: merge the partitions' shard lists and publish ``index.json`` last, atomically.

Layout of a published dataset::

    <target>/index.json                      the commit marker, written last in one PUT/rename
    <target>/<run dir>/<partition>/shard.NNNNN.mds.zstd
    <target>/<run dir>/<partition>/index.json  (each partition's own index, as the reference keeps)

``mode="overwrite"`` writes the new run beside the old one and swaps ``index.json`` in one write.
Grace behaviour: the replaced generation's files are *retired*, not deleted: they stay until the
next overwrite of the same target, so a reader that is mid-epoch on the old index keeps finding
every shard it has yet to fetch. The list of retired paths lives in ``_mds_convert/retired.json``
(outside any run directory, ignored by readers); each overwrite deletes what the previous one
retired, then retires the generation it replaced.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from mdsloader.errors import IndexFormatError, ObjectNotFoundError
from mdsloader.mds.index import Index, dump_index, merge_shards, parse_index
from mdsloader.storage import Storage
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

    def check_target(self) -> None:
        """Refuse an existing dataset under ``mode="error"``; remember it for ``overwrite``.

        An index that only references this run's directory is our own earlier publication (a
        redelivered job), so it is treated like ``overwrite``.

        Raises:
            TargetExistsConversionError: the target holds an index.json and mode is ``error``.
        """
        try:
            data = self.storage.read_bytes(INDEX)
        except ObjectNotFoundError:
            return
        try:
            self.previous = parse_index(data, source=self.storage.child_url(INDEX))
        except IndexFormatError:
            self.previous = Index()  # unreadable: replaced wholesale, nothing to clean up
        if self.mode == "error" and not self._is_own(self.previous):
            raise TargetExistsConversionError(
                f"{self.storage.child_url(INDEX)} already exists; "
                "use mode='overwrite' to replace it"
            )

    def publish(self, outputs: list[PartitionOutput]) -> Index:
        """Merge in partition order, remove orphans, write index.json, then drop the old run."""
        ordered = sorted((o for o in outputs if o.index.shards), key=lambda o: o.partition)
        index = merge_shards([(self._part_path(o.partition), o.index) for o in ordered])
        self._remove_orphans(index, {o.partition for o in ordered})
        self._commit(index)
        try:
            self._remove_previous(index)
        except Exception:  # the new dataset is live; old files left behind are only garbage
            log.exception("conversion.previous_run_cleanup_failed")
        return index

    def _commit(self, index: Index) -> None:
        """Write index.json in one PUT/rename. If the write reports a failure but the new index
        is in place anyway (a lost response), it counts as published."""
        data = dump_index(index)
        try:
            self.storage.write_bytes(INDEX, data)
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
        """Delete the generation retired by the last overwrite; retire the one just replaced."""
        if self.previous is None:
            return
        current = _referenced(index)
        keep_dirs = _top_dirs(index)
        for entry in self._read_retired():
            if entry.endswith("/"):
                if entry.rstrip("/") not in keep_dirs:
                    removed = self.storage.delete_prefix(entry)
                    log.info("conversion.retired_run_removed dir=%s files=%d", entry, removed)
            elif entry not in current:
                self.storage.delete(entry)
        dirs = sorted(f"{d}/" for d in _top_dirs(self.previous) - keep_dirs)
        loose = sorted(f for f in _referenced(self.previous) - current if "/" not in f)
        self.storage.write_bytes(RETIRED, json.dumps(dirs + loose).encode())

    def _read_retired(self) -> list[str]:
        try:
            entries = json.loads(self.storage.read_bytes(RETIRED))
        except ObjectNotFoundError:
            return []
        except ValueError:
            log.warning("conversion.retired_list_unreadable path=%s", RETIRED)
            return []
        return [e for e in entries if isinstance(e, str) and e and not e.startswith(("/", ".."))]


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
