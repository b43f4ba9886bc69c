"""Driver side: watch a running conversion, report progress about once a second, cancel on demand.

Progress comes from Spark accumulators that each task updates when it finishes (rows, shards,
bytes, partitions) and, while partitions run, from a UDP side channel the tasks send their
running totals to (:class:`ProgressChannel`), so a long partition shows movement too.
Cancellation cancels the Spark job group with ``interruptOnCancel``, which kills the running
Python workers within a couple of seconds.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
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
        self.channel: ProgressChannel | None = None
        self.phase: str | None = None
        self.read_path: str | None = None
        self.cancelled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"monitor-{group}", daemon=True)

    def __enter__(self) -> JobMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.channel is not None:
            self.channel.close()

    def open_channel(self, host: str) -> ProgressChannel | None:
        """Start the executors' progress side channel (None if no socket can be bound)."""
        try:
            self.channel = ProgressChannel(host)
        except OSError:
            log.warning("conversion.progress_channel_unavailable host=%s", host)
        return self.channel

    def reset_counts(self) -> None:
        """Forget what an abandoned attempt counted (the direct path falling back)."""
        self.counters = tuple(self.sc.accumulator(0) for _ in range(4))
        if self.channel is not None:
            self.channel.clear()

    def snapshot(self) -> ConversionProgress:
        rows, shards, size, done = (counter.value for counter in self.counters)
        if self.channel is not None:  # running partitions; never below the finished ones
            live = self.channel.totals()
            rows, shards, size = max(rows, live[0]), max(shards, live[1]), max(size, live[2])
        return ConversionProgress(
            rows, shards, size, done, self.partitions_total, phase=self.phase,
            read_path=self.read_path,
        )

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


class ProgressChannel:
    """Driver side of the progress side channel: a UDP socket executors send datagrams to.

    Spark accumulators reach the driver only when a task ends, so a long partition would show no
    progress; tasks therefore also send ``{"t": token, "p": partition, "a": attempt, "r": rows,
    "s": shards, "b": bytes}`` about twice a second while they write. Datagrams may be lost or
    reordered: the channel only ever raises a partition's figures (a newer attempt replaces an
    older one), and the accumulators stay the authority for finished partitions.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.token = uuid.uuid4().hex
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.2)
        self.address: tuple[str, int] = (host, self._sock.getsockname()[1])
        self._latest: dict[int, tuple[int, int, int, int]] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="progress-channel", daemon=True)
        self._thread.start()

    def totals(self) -> tuple[int, int, int]:
        """(rows, shards, bytes) over every partition heard from."""
        with self._lock:
            values = list(self._latest.values())
        return tuple(sum(v[i] for v in values) for i in (1, 2, 3))  # type: ignore[return-value]

    def clear(self) -> None:
        with self._lock:
            self._latest.clear()

    def close(self) -> None:
        self._closed.set()
        try:  # wakes the receiving thread at once instead of at its next timeout
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as waker:
                waker.sendto(b"", self.address)
        except OSError:
            pass
        self._thread.join(timeout=2)
        self._sock.close()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self._sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            try:
                message = json.loads(data)
                if message.get("t") != self.token:
                    continue
                key = int(message["p"])
                entry = (int(message["a"]), int(message["r"]), int(message["s"]),
                         int(message["b"]))
            except (ValueError, KeyError, TypeError):
                continue
            with self._lock:
                previous = self._latest.get(key)
                if previous is None or entry[0] > previous[0] or (
                    entry[0] == previous[0] and entry[1:] >= previous[1:]
                ):
                    self._latest[key] = entry


class ProgressSender:
    """Executor side: sends a task's running totals to the driver, at most every ``interval``."""

    def __init__(
        self,
        address: tuple[str, int] | None,
        token: str,
        partition: int,
        attempt: int,
        interval: float = 0.5,
    ) -> None:
        self.address, self.token = address, token
        self.partition, self.attempt, self.interval = partition, attempt, interval
        self._sock: socket.socket | None = None
        self._last = 0.0

    @classmethod
    def for_task(cls, options: Any, partition: int, attempt: int) -> ProgressSender:
        return cls(getattr(options, "progress_address", None),
                   getattr(options, "progress_token", ""), partition, attempt)

    def update(self, rows: int, shards: int, size: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.address is None or (not force and now - self._last < self.interval):
            return
        self._last = now
        payload = json.dumps({"t": self.token, "p": self.partition, "a": self.attempt,
                              "r": rows, "s": shards, "b": size}).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.sendto(payload, tuple(self.address))
        except OSError:  # progress is best effort; the write must not fail for it
            pass

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
