"""Driver side: merge the partitions' shard lists and publish ``index.json`` last, atomically.

Layout of a published dataset::

    <target>/index.json                      the commit marker, written last in one PUT/rename
    <target>/<run dir>/<partition>/shard.NNNNN.mds.zstd
    <target>/<run dir>/<partition>/index.json  (each partition's own index, as the reference keeps)

``mode="overwrite"`` writes the new run beside the old one, swaps ``index.json`` in one write and
only then removes the old run's files. Grace behaviour: a reader that opened the old index keeps
working for the shards it has already cached; shards it had not fetched yet disappear at the swap,
so such a reader fails with "object not found" and must reopen the dataset (mosaicml-streaming
behaves the same when a dataset is replaced in place).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mdsloader.errors import IndexFormatError, ObjectNotFoundError
from mdsloader.mds.index import Index, dump_index, merge_shards, parse_index
from mdsloader.storage import Storage
from worker.convert.model import Mode
from worker.convert.partitions import partition_dir
from worker.errors import PermanentConversionError, TargetExistsConversionError

INDEX = "index.json"
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
        if self.previous is None:
            return
        current = _referenced(index)
        for relpath in sorted(_referenced(self.previous) - current):
            self.storage.delete(relpath)
        for directory in sorted(_top_dirs(self.previous) - {self.run_dir}):
            removed = self.storage.delete_prefix(f"{directory}/")
            log.info("conversion.previous_run_removed dir=%s files=%d", directory, removed)


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
