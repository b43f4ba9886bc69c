"""Driver side: watch a running conversion, report progress about once a second, cancel on demand.

Progress comes from Spark accumulators that each task updates when it finishes (rows, shards,
bytes, partitions), so it advances per partition. Cancellation cancels the Spark job group with
``interruptOnCancel``, which kills the running Python workers within a couple of seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from worker.convert.model import ConversionProgress

ProgressCallback = Callable[[ConversionProgress], None]
log = logging.getLogger(__name__)


class JobMonitor:
    """A driver thread bound to one Spark job group; use as a context manager around the action."""

    def __init__(
        self,
        spark_context: Any,
        group: str,
        *,
        partitions_total: int = 0,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        interval: float = 1.0,
    ) -> None:
        self.sc = spark_context
        self.group = group
        self.partitions_total = partitions_total
        self.progress = progress
        self.cancel = cancel
        self.interval = interval
        self.counters = tuple(spark_context.accumulator(0) for _ in range(4))
        self.cancelled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"monitor-{group}", daemon=True)

    def __enter__(self) -> JobMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def snapshot(self) -> ConversionProgress:
        rows, shards, size, done = (counter.value for counter in self.counters)
        return ConversionProgress(rows, shards, size, done, self.partitions_total)

    def report(self) -> None:
        if self.progress is None:
            return
        try:
            self.progress(self.snapshot())
        except Exception:  # a broken progress sink must not fail the conversion
            log.exception("conversion.progress_callback_failed group=%s", self.group)

    def _run(self) -> None:
        last_report = 0.0
        while not self._stop.wait(0.1):
            if self.cancel is not None and self.cancel.is_set() and not self.cancelled:
                self.cancelled = True
                self.sc.cancelJobGroup(self.group)
            if time.monotonic() - last_report >= self.interval:
                last_report = time.monotonic()
                self.report()

    def drain(self, timeout: float = 15.0) -> bool:
        """Wait until no task of this job group is still running; True when drained."""
        tracker = self.sc.statusTracker()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _active_tasks(tracker, self.group) == 0:
                return True
            time.sleep(0.2)
        return False


def _active_tasks(tracker: Any, group: str) -> int:
    active = 0
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        for stage_id in job.stageIds if job else ():
            stage = tracker.getStageInfo(stage_id)
            active += stage.numActiveTasks if stage else 0
    return active
