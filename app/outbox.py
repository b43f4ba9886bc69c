"""Enqueues jobs that were stored but never confirmed on the broker (a transactional outbox)."""

from __future__ import annotations

import logging
import threading

import redis

from app.service import JobService
from worker.jobs import JobNotFoundError, JobState

log = logging.getLogger("app.outbox")


class OutboxSweeper(threading.Thread):
    """Every ``interval`` seconds, hands still-queued outbox entries older than ``delay`` to the
    broker again. One API replica sweeps at a time (a short Redis lock)."""

    def __init__(
        self,
        service: JobService,
        client: redis.Redis,
        lock_key: str,
        *,
        delay: float,
        interval: float,
    ) -> None:
        super().__init__(name="outbox-sweeper", daemon=True)
        self.service, self.client, self.lock_key = service, client, lock_key
        self.delay, self.interval = delay, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.sweep()
            except redis.RedisError as exc:  # Redis is down: try again next round
                log.debug("outbox.sweep_failed", extra={"error": repr(exc)})

    def sweep(self) -> int:
        """Enqueue pending jobs; returns how many were handed to the broker."""
        if not self.client.set(self.lock_key, "1", nx=True, px=int(self.interval * 1000)):
            return 0
        sent = 0
        store = self.service.store
        for job_id in store.pending_enqueue(self.delay):
            try:
                state = store.get(job_id).state
            except JobNotFoundError:
                state = None
            if state is not JobState.QUEUED:
                store.mark_enqueued(job_id)  # cancelled or already picked up: nothing to send
                continue
            if self.service.dispatch(job_id):
                log.info("outbox.enqueued", extra={"job_id": job_id})
                sent += 1
        return sent

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
