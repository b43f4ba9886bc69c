"""Housekeeping: remove overwritten generations and the run directories of jobs that published
nothing, after a grace period; never anything a published ``index.json`` references.

Targets are found from the job records. For each target, under the target's lease (so no job
writes there meanwhile; a target that is busy is skipped until the next round):

- *retired* generations (``_mds_convert/retired.json``, written by each overwrite) older than the
  grace period are deleted, unless the current index references them again;
- a top-level directory named like a job id, not referenced by the current index, whose job is
  failed, cancelled or succeeded-but-replaced, or has no record any more (abandoned), is deleted
  once the job finished (or, without a record, was created) longer ago than the grace period.
  Directories of queued or running jobs are theirs; anything not named like a job id is not ours.

An unreadable ``index.json`` stops the work on that target: nothing is provably unreferenced.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from mdsloader.errors import IndexFormatError, ObjectNotFoundError
from mdsloader.mds.index import parse_index
from mdsloader.storage import Storage, open_storage
from worker.convert.publish import INDEX, Retired, read_retired, write_retired
from worker.jobs import FINAL_STATES, JobNotFoundError, JobRecord, JobState, RedisJobStore
from worker.target_lease import TargetLeases, normalise_target

log = logging.getLogger("worker.housekeeping")
JOB_ID = re.compile(r"^[0-9a-f]{28}$")
INTERNAL = "_mds_convert"
# Short, and renewed before each removal: a round that dies (its worker killed, Redis gone before
# the release) must not keep jobs off a target for long.
LEASE_TTL = 20.0


class LeaseLost(Exception):
    """The round held the target too long: a job may own it now; stop touching it."""


@dataclass
class Report:
    """What a housekeeping round removed (or, in a dry run, would remove)."""

    dry_run: bool
    removed: list[str] = field(default_factory=list)  # target URLs of removed dirs and files
    files: int = 0
    skipped: list[str] = field(default_factory=list)  # targets busy or unreadable, with why

    def as_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run, "removed": self.removed, "files": self.files,
            "skipped": self.skipped,
        }


class Housekeeper:
    """One round of housekeeping over every target the job store knows."""

    def __init__(
        self,
        store: RedisJobStore,
        *,
        grace: float,
        dry_run: bool = False,
        open_target: Callable[[str], Storage] = open_storage,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.grace, self.dry_run = store, grace, dry_run
        self.open_target, self.clock = open_target, clock
        self.leases = TargetLeases(store)
        self.name = f"housekeeping:{uuid.uuid4().hex[:12]}"
        self._target = ""

    def run(self, targets: Iterable[str] | None = None) -> Report:
        """Clean ``targets`` (default: every target of a stored job)."""
        report = Report(self.dry_run)
        for target in targets if targets is not None else self.known_targets():
            if self.leases.acquire(target, self.name, LEASE_TTL) is not None:
                report.skipped.append(f"{target}: a job is writing there")
                continue
            self._target = target
            try:
                self._clean(target, report)
            except (IndexFormatError, ValueError, LeaseLost) as exc:
                report.skipped.append(f"{target}: {exc}")
            finally:
                self.leases.release_quietly(target, self.name)
        log.info("housekeeping.done", extra=report.as_dict())
        return report

    def known_targets(self) -> list[str]:
        """One URL per normalised target of the stored jobs."""
        targets: dict[str, str] = {}
        cursor = None
        while True:
            records, cursor = self.store.list(limit=500, cursor=cursor)
            for record in records:
                targets.setdefault(normalise_target(record.request.target), record.request.target)
            if cursor is None:
                return sorted(targets.values())

    def _clean(self, target: str, report: Report) -> None:
        storage = self.open_target(target)
        try:
            index = parse_index(storage.read_bytes(INDEX), source=storage.child_url(INDEX))
            shards = [shard.file.basename for shard in index.shards]
        except ObjectNotFoundError:
            shards = []
        referenced_dirs = {s.split("/", 1)[0] for s in shards if "/" in s}
        referenced = set(shards)
        now = self.clock()

        retired = read_retired(storage)
        kept: list[Retired] = []
        for entry in retired:
            if entry.path.rstrip("/") in referenced_dirs or entry.path in referenced:
                continue  # published again (a redelivered overwrite): live, no longer retired
            if now - entry.retired_at < self.grace:
                kept.append(entry)
                continue
            self._remove(storage, entry.path, report)
        if kept != retired and not self.dry_run:
            write_retired(storage, kept)
        handled = {e.path.rstrip("/") for e in retired}  # removed above, or young and kept

        # A replaced generation is in use until its replacement was published.
        publisher = self._record(min(referenced_dirs)) if referenced_dirs else None
        replaced_at = now
        if publisher is not None and publisher.finished_at is not None:
            replaced_at = _ts(publisher.finished_at)
        for top in sorted(_top_dirs(storage)):
            if top in referenced_dirs or top in handled or not JOB_ID.match(top):
                continue
            since = self._finished(top, replaced_at)
            if since is not None and now - since >= self.grace:
                self._remove(storage, f"{top}/", report)

    def _finished(self, job_id: str, replaced_at: float) -> float | None:
        """When the run directory stopped being in use; None while its job is active."""
        record = self._record(job_id)
        if record is None:  # abandoned: the record is gone; the id tells when it was created
            return int(job_id[:12], 16) / 1000
        if record.state not in FINAL_STATES or record.finished_at is None:
            return None
        finished = _ts(record.finished_at)
        if record.state is JobState.SUCCEEDED:
            return max(finished, replaced_at)  # a replaced generation: from its replacement on
        return finished

    def _record(self, job_id: str) -> JobRecord | None:
        try:
            return self.store.get(job_id)
        except JobNotFoundError:
            return None

    def _remove(self, storage: Storage, path: str, report: Report) -> None:
        if not self.leases.renew(self._target, self.name, LEASE_TTL):
            raise LeaseLost(f"{self._target}: the housekeeping lease expired")
        report.removed.append(storage.child_url(path) + ("/" if path.endswith("/") else ""))
        if self.dry_run:
            report.files += len(storage.list(path)) if path.endswith("/") else 1
            return
        if path.endswith("/"):
            report.files += storage.delete_prefix(path)
        else:
            storage.delete(path)
            report.files += 1


def _top_dirs(storage: Storage) -> set[str]:
    return {p.split("/", 1)[0] for p in storage.list("") if "/" in p} - {INTERNAL}


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def housekeeping_round(store: RedisJobStore, grace: float, *, dry_run: bool = False) -> Report:
    """One round over every known target (the periodic task and the CLI command)."""
    return Housekeeper(store, grace=grace, dry_run=dry_run).run()


class Schedule(threading.Thread):
    """In each worker's main process: every ``interval`` seconds, the first worker to claim the
    round (``SET NX`` with the interval as expiry) sends the housekeeping task. No beat process
    is needed, and N workers still run one round per interval."""

    def __init__(self, store: RedisJobStore, interval: float, send: Callable[[], object]) -> None:
        super().__init__(name="housekeeping-schedule", daemon=True)
        self.store, self.interval, self.send = store, interval, send
        self.stopped = threading.Event()

    def run(self) -> None:
        key = f"{self.store.prefix}:housekeeping:due"
        while not self.stopped.wait(min(self.interval, 60.0)):
            try:
                if self.store.client.set(key, "1", nx=True, px=max(int(self.interval * 1000), 1)):
                    self.send()
            except Exception as exc:  # Redis or broker away: the next tick tries again
                log.warning("housekeeping.schedule_failed", extra={"error": repr(exc)})
