"""The ``conversion.run`` task and the job runner behind it.

The task is thin: it hands the job id to :class:`JobRunner`, which re-reads the record, takes the
job's lease and then its target's lease (``worker.target_lease``: one writer per target; a job whose
target is owned waits in ``queued`` with the reason in ``record.waiting``), moves it to ``running``,
runs the conversion with a watcher thread (progress about once a second, the cancel flag, both
leases, the worker's shutdown flag) and records the outcome with compare-and-set transitions.
Failures are classified by ``worker.errors``: transient ones are retried with backoff, permanent
ones fail the job at once. On ``SIGTERM`` a running job is cancelled and handed back to the queue
(``worker.shutdown``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import redis
from celery import Task, shared_task

from mdsloader.errors import StorageUnavailableError
from worker.access.recheck import RecordAuthorizer
from worker.convert.model import ConversionProgress, ConversionResult, ConversionSpec
from worker.errors import ConversionCancelled, ConversionError
from worker.jobs import (
    FINAL_STATES,
    InvalidTransitionError,
    JobError,
    JobNotFoundError,
    JobProgress,
    JobRecord,
    JobResult,
    JobState,
    JobWait,
    RedisJobStore,
    utcnow,
)
from worker.logging import job_context
from worker.metrics import record_conversion, record_event
from worker.settings import WorkerSettings
from worker.shutdown import SHUTDOWN, Shutdown
from worker.target_lease import TargetLeases, normalise_target

log = logging.getLogger("worker.tasks")
TASK_NAME = "conversion.run"
ACTIVE = frozenset({JobState.RUNNING, JobState.CANCELLING})

ConvertFn = Callable[..., ConversionResult]
DiscardFn = Callable[[ConversionSpec], None]


class RetryLater(Exception):
    """The job must run again later: another live worker holds it, or a transient failure."""

    def __init__(self, delay: float, reason: str, *, transient: bool = False) -> None:
        super().__init__(delay, reason)
        # Only retries of transient failures count against WORKER_MAX_RETRIES; waiting for a
        # lease or a target, or being handed back, does not.
        self.delay, self.reason, self.transient = delay, reason, transient


def backoff(retries: int, cap: float) -> float:
    """Exponential backoff with full jitter: 1, 2, 4, ... seconds, capped."""
    return random.uniform(0.5, 1.0) * min(cap, 2.0**retries)


def spec_for(record: JobRecord) -> ConversionSpec:
    """The conversion of a job; ``run_id`` is the job id, so a re-run overwrites its own files."""
    request = record.request
    return ConversionSpec(
        source_table=request.source_table,
        target=request.target,
        compression=request.compression,
        hashes=tuple(request.hashes),
        size_limit=request.size_limit,
        columns=request.columns,
        partitions=request.partitions,
        mode=request.mode,
        null_policy=request.null_policy,
        fill_values=dict(request.fill_values),
        run_id=record.id,
        filter=tuple(request.filter or ()),
        splits=request.splits,
    )


class Watcher(threading.Thread):
    """Flushes progress, watches for cancellation and keeps the job's lease alive."""

    def __init__(
        self, runner: JobRunner, job_id: str, cancel: threading.Event, target: str
    ) -> None:
        super().__init__(name=f"watch-{job_id}", daemon=True)
        self.runner, self.job_id, self.cancel, self.target = runner, job_id, cancel, target
        self.stopped = threading.Event()
        self.lease_lost = False
        # The worker is shutting down: the conversion is cancelled and the job handed back.
        self.handed_back = False
        self.latest: ConversionProgress | None = None
        self._flushed: ConversionProgress | None = None
        self._context = contextvars.copy_context()

    def run(self) -> None:
        self._context.run(self._loop)

    def _loop(self) -> None:
        settings = self.runner.settings
        next_flush = next_renew = 0.0
        while not self.stopped.wait(settings.cancel_poll_interval):
            if self.runner.shutdown.requested.is_set() and not self.handed_back:
                log.warning("job.handing_back", extra={"reason": "worker shutting down"})
                self.handed_back = True
                self.cancel.set()
            try:
                now = time.monotonic()
                if now >= next_renew:
                    self._renew()
                    next_renew = now + settings.lease_ttl / 3
                if now >= next_flush:
                    self.flush()
                    next_flush = now + settings.progress_interval
                if self.runner.store.get(self.job_id).state is JobState.CANCELLING:
                    self.cancel.set()
            except redis.RedisError as exc:  # keep converting; the next round tries again
                log.warning("job.watch_failed", extra={"error": repr(exc)})

    def _renew(self) -> None:
        runner, ttl = self.runner, self.runner.settings.lease_ttl
        held = runner.store.renew_lease(self.job_id, runner.owner, ttl)
        held = held and runner.targets.renew(self.target, self.job_id, ttl)
        if not held:
            log.error("job.lease_lost")
            self.lease_lost = True
            self.cancel.set()

    def flush(self) -> None:
        latest = self.latest
        if latest is None or latest == self._flushed:
            return

        def apply(record: JobRecord) -> None:
            record.progress = JobProgress(**asdict(latest))

        self.runner.store.update(self.job_id, apply, expected=ACTIVE)
        self._flushed = latest

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=10)


class JobRunner:
    """Runs one job to a final state (or asks for a retry) through the job store."""

    def __init__(
        self,
        store: RedisJobStore,
        settings: WorkerSettings,
        convert: ConvertFn,
        owner: str,
        discard: DiscardFn | None = None,
        shutdown: Shutdown | None = None,
        authorize: Callable[[JobRecord], str] | None = None,
    ) -> None:
        self.store, self.settings, self.convert, self.owner = store, settings, convert, owner
        # Re-checks the stored job against the current grants before the source is touched;
        # returns the source text to read (see worker.access.recheck).
        self.authorize = authorize or RecordAuthorizer(settings)
        self.discard = discard or discard_unpublished_run
        self.shutdown = shutdown or SHUTDOWN
        self.targets = TargetLeases(store)

    def run(self, job_id: str, *, retries: int = 0) -> JobState | None:
        """Run ``job_id``; returns its final state, or None when there was nothing to do.

        Raises:
            RetryLater: another live worker holds the job, or a transient failure with retries left.
        """
        with job_context(job_id):
            try:
                record = self.store.get(job_id)
            except JobNotFoundError:
                log.error("job.unknown")
                return None
            if record.state in FINAL_STATES:
                log.info("job.already_final", extra={"state": str(record.state)})
                return None
            if self.shutdown.requested.is_set():
                raise RetryLater(0, "the worker is shutting down")
            remaining = self.store.acquire_lease(job_id, self.owner, self.settings.lease_ttl)
            if remaining is not None:
                raise RetryLater(remaining + 1, "another worker holds the job")
            try:
                return self._run_leased(job_id, retries)
            finally:
                try:
                    self.store.release_lease(job_id, self.owner)
                except redis.RedisError:  # it expires on its own; never mask the outcome
                    log.warning("job.lease_release_failed")

    def _run_leased(self, job_id: str, retries: int) -> JobState | None:
        record = self.store.get(job_id)
        if record.state is JobState.RUNNING and record.attempts >= self.settings.max_attempts:
            # A job that keeps killing its worker (out of memory, hard time limit) would
            # otherwise be redelivered forever.
            error = JobError(
                code="too_many_attempts",
                message=f"the job was started {record.attempts} times and its worker died or "
                f"gave up each time (limit {self.settings.max_attempts})",
            )
            return self._finish(job_id, JobState.FAILED, started=time.monotonic(), payload=error)
        if record.state not in (JobState.QUEUED, JobState.RUNNING):
            return self._start(job_id, retries)  # cancelling: nothing will be written
        target = record.request.target
        holder = self.targets.acquire(target, job_id, self.settings.lease_ttl)
        if holder is not None:
            self._wait_for_target(record, holder)
        try:
            return self._start(job_id, retries)
        finally:
            # Logged before either lease is released: no other run of this job, nor any run on
            # this target, can have started yet (the storm test checks run intervals by it).
            log.info("job.run_ended")
            self.targets.release_quietly(target, job_id)

    def _wait_for_target(self, record: JobRecord, holder: str) -> None:
        """Record why the job waits, count the wait, and ask to be run again shortly."""
        reason = f"waiting for {normalise_target(record.request.target)}: owned by {holder}"

        def apply(current: JobRecord) -> None:
            same = current.waiting is not None and current.waiting.holder == holder
            since = current.waiting.since if same and current.waiting else utcnow()
            current.waiting = JobWait(reason=reason, holder=holder, since=since)

        self.store.update(record.id, apply, expected={JobState.QUEUED, JobState.RUNNING})
        record_event(self.store, "lease_waits")
        log.info("job.waiting_for_target", extra={"holder": holder})
        raise RetryLater(self.settings.target_wait_interval * random.uniform(0.75, 1.25), reason)

    def _start(self, job_id: str, retries: int) -> JobState | None:
        def clear_wait(record: JobRecord) -> None:
            record.waiting = None

        try:
            record = self.store.transition(
                job_id,
                JobState.RUNNING,
                expected={JobState.QUEUED, JobState.RUNNING},
                mutate=clear_wait,
            )
        except InvalidTransitionError as exc:
            if exc.current is JobState.CANCELLING:
                # A worker died while cancelling: remove what its run may have left behind.
                self._retrying(lambda: self.discard(spec_for(self.store.get(job_id))))
                return self._finish(job_id, JobState.CANCELLED, started=time.monotonic())
            log.info("job.not_runnable", extra={"state": str(exc.current)})
            return None
        if record.transitions[-1].source is JobState.RUNNING:
            # Started before: its worker died or handed it back, or a transient failure retried.
            record_event(self.store, "redeliveries")
        log.info("job.started", extra={"attempt": record.attempts, "target": record.request.target})
        return self._convert(record, retries)

    def _convert(self, record: JobRecord, retries: int) -> JobState | None:
        cancel = threading.Event()
        watcher = Watcher(self, record.id, cancel, record.request.target)
        started = time.monotonic()
        watcher.start()
        try:
            spec = replace(spec_for(record), source_table=self.authorize(record))
            result = self.convert(spec, progress=self._progress_sink(watcher), cancel=cancel)
        except ConversionCancelled as exc:
            # Only a cancel we asked for is a cancellation; anything else stopped the job.
            outcome: tuple[JobState, Any] = (
                (JobState.CANCELLED, None)
                if cancel.is_set()
                else (JobState.FAILED, JobError(**self._error(exc)))
            )
        except ConversionError as exc:
            outcome = (JobState.FAILED, JobError(**self._error(exc)))
        except StorageUnavailableError as exc:  # unmapped by the conversion: still transient
            outcome = (
                JobState.FAILED,
                JobError(code="storage_unavailable", message=str(exc), retryable=True),
            )
        except Exception as exc:
            log.exception("job.crashed")
            outcome = (JobState.FAILED, JobError(code="internal_error", message=repr(exc)))
        else:
            outcome = (JobState.SUCCEEDED, JobResult(**asdict(result)))
        finally:
            watcher.stop()
        if watcher.lease_lost:
            log.error("job.abandoned", extra={"reason": "lease lost to another worker"})
            return None
        if watcher.handed_back and outcome[0] is not JobState.SUCCEEDED:
            self._hand_back(record.id)
        self._retrying(watcher.flush)
        state, payload = outcome
        if (
            isinstance(payload, JobError)
            and payload.retryable
            and retries < self.settings.max_retries
        ):
            delay = backoff(retries, self.settings.retry_backoff_max)
            log.warning("job.retry", extra={"error": payload.message, "delay": round(delay, 2)})
            raise RetryLater(delay, payload.message, transient=True)
        return self._finish(record.id, state, started=started, payload=payload)

    def _hand_back(self, job_id: str) -> None:
        """The conversion stopped because the worker is shutting down: queue the job again.

        A job the user cancelled meanwhile is left to the normal cancel path instead.
        """
        now = utcnow()

        def apply(record: JobRecord) -> None:
            record.waiting = JobWait(reason="handed back: its worker shut down", since=now)

        if self._retrying(lambda: self.store.update(job_id, apply, expected={JobState.RUNNING})):
            record_event(self.store, "handbacks")
            log.warning("job.handed_back")
            raise RetryLater(0, "the worker is shutting down")

    @staticmethod
    def _error(exc: ConversionError) -> dict[str, Any]:
        return {"code": exc.code, "message": exc.message, "retryable": exc.retryable}

    @staticmethod
    def _progress_sink(watcher: Watcher) -> Callable[[ConversionProgress], None]:
        def sink(progress: ConversionProgress) -> None:
            watcher.latest = progress  # flushed to Redis by the watcher, about once a second

        return sink

    def _finish(
        self, job_id: str, state: JobState, *, started: float, payload: Any = None
    ) -> JobState:
        def apply(record: JobRecord) -> None:
            if isinstance(payload, JobResult):
                record.result = payload
                record.progress.rows_written = payload.samples
            elif isinstance(payload, JobError):
                record.error = payload

        expected = {JobState.CANCELLING} if state is JobState.CANCELLED else ACTIVE
        record = self._retrying(
            lambda: self.store.transition(job_id, state, expected=expected, mutate=apply)
        )
        duration = time.monotonic() - started
        log.info("job.finished", extra={"state": str(state), "seconds": round(duration, 3)})
        self._retrying(
            lambda: record_conversion(
                self.store,
                duration=duration,
                rows=record.progress.rows_written if state is JobState.SUCCEEDED else 0,
                bytes_written=record.progress.bytes_written,
            )
        )
        return state

    def _retrying(self, action: Callable[[], Any], attempts: int = 8) -> Any:
        # The outcome of a finished conversion must not be lost to a short Redis outage: running
        # it again could find its own published index.json.
        for attempt in range(attempts):
            try:
                return action()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if attempt == attempts - 1:
                    raise
                log.warning("job.store_retry", extra={"error": repr(exc)})
                time.sleep(min(0.5 * 2**attempt, 10))
        return None


def discard_unpublished_run(spec: ConversionSpec) -> None:
    """Delete ``<target>/<run id>/`` unless the target's index.json was published by that run.

    The run directory is named by the job id (``spec.run_id``), see ``worker.convert.publish``.
    """
    from mdsloader.errors import IndexFormatError, ObjectNotFoundError
    from mdsloader.mds.index import parse_index
    from mdsloader.storage import open_storage

    storage = open_storage(spec.target)
    run_dir = f"{spec.run_id}/"
    try:
        index = parse_index(storage.read_bytes("index.json"), source=spec.target)
    except (ObjectNotFoundError, IndexFormatError):
        index = None  # nothing (valid) published: whatever the run wrote is an orphan
    if index is not None and any(s.file.basename.startswith(run_dir) for s in index.shards):
        log.warning("job.discard_skipped", extra={"reason": "the run was published"})
        return
    removed = storage.delete_prefix(run_dir)
    log.info("job.discarded", extra={"files": removed})


def worker_owner() -> str:
    """A name unique to this worker process, for leases and logs."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def spark_convert(settings: WorkerSettings) -> ConvertFn:
    """The real conversion: the process's long-lived Spark session, created on first use."""

    def convert(spec: ConversionSpec, **kwargs: Any) -> ConversionResult:
        # Imported here so that importing the task module never starts or imports Spark.
        from worker.convert.pipeline import convert_table
        from worker.convert.spark import get_spark
        from worker.warm import is_warming

        progress = kwargs.get("progress")
        if progress is not None and is_warming():  # the worker's warm start is still running
            progress(ConversionProgress(phase="starting_spark"))
        return convert_table(
            spec, spark=get_spark(settings), source_timeout=settings.source_timeout, **kwargs
        )

    return convert


_runners: dict[int, JobRunner] = {}


def get_runner(task: Task) -> JobRunner:
    """One runner per process (created after fork: Redis clients and Spark are per process)."""
    runner = _runners.get(os.getpid())
    if runner is None:
        settings: WorkerSettings = task.app.conf["mds_settings"]
        store = RedisJobStore.from_url(settings.redis_url, prefix=settings.redis_prefix)
        runner = JobRunner(store, settings, spark_convert(settings), worker_owner())
        _runners.clear()
        _runners[os.getpid()] = runner
    return runner


# max_retries=None on the task: Task.retry(max_retries=None) means "the task's default" (3), not
# unlimited. Waiting for a lease or a target must never run out; JobRunner counts the retries of
# transient failures itself (WORKER_MAX_RETRIES).
@shared_task(
    name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
)
def run_conversion(self: Task, job_id: str, transient: int = 0) -> str | None:
    """Convert the job's table to MDS; only the job id (and the count of transient retries so
    far) travels through the broker."""
    try:
        state = get_runner(self).run(job_id, retries=transient)
    except RetryLater as exc:
        # Waiting for another worker's lease or the target must not use up the retries, which
        # JobRunner counts itself for transient failures.
        count = transient + int(exc.transient)
        raise self.retry(countdown=exc.delay, kwargs={"transient": count}) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        delay = backoff(self.request.retries, get_runner(self).settings.retry_backoff_max)
        raise self.retry(countdown=delay, exc=exc) from None
    return None if state is None else str(state)


HOUSEKEEPING_TASK = "conversion.housekeeping"


@shared_task(name=HOUSEKEEPING_TASK, bind=True, ignore_result=True)
def run_housekeeping(self: Task, dry_run: bool = False) -> dict[str, object]:
    """Remove overwritten generations and dead run directories older than the grace period."""
    from worker.housekeeping import housekeeping_round

    settings: WorkerSettings = self.app.conf["mds_settings"]
    runner = get_runner(self)
    return housekeeping_round(runner.store, settings.housekeeping_grace, dry_run=dry_run).as_dict()
