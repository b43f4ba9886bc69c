"""Prometheus metrics computed from Redis at scrape time.

Workers only increment counters in one Redis hash (``<prefix>:metrics``); the API's collector reads
that hash, the state indexes and the broker queue when ``/metrics`` is scraped. Nothing lives in a
process's memory, so any number of API replicas report the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from worker.jobs import JobState, RedisJobStore

DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)


def record_conversion(
    store: RedisJobStore, *, duration: float, rows: int, bytes_written: int
) -> None:
    """Add one conversion's duration, rows and bytes (the worker calls it when a run ends).

    Jobs by final state are counted by the store itself, in the transition.
    """
    key = store.metrics_key
    pipe = store.client.pipeline(transaction=True)
    pipe.hincrby(key, "rows", rows)
    pipe.hincrby(key, "bytes", bytes_written)
    pipe.hincrbyfloat(key, "duration_sum", duration)
    pipe.hincrby(key, "duration_count", 1)
    for bound in DURATION_BUCKETS:
        if duration <= bound:
            pipe.hincrby(key, f"duration_le:{bound}", 1)
    pipe.execute()


# Counters of the many-workers machinery: a job deferred because its target was owned, a start of a
# job that was already running (worker died, job handed back, transient retry), a job handed back
# to the queue by a worker shutting down.
EVENTS = {
    "lease_waits": "Times a job was deferred because another job owned its target",
    "redeliveries": "Starts of a job that was already running (worker died, handed back, retry)",
    "handbacks": "Running jobs handed back to the queue by a worker shutting down",
}


def record_event(store: RedisJobStore, name: str) -> None:
    """Count one event of :data:`EVENTS`; a failure to count never fails a job."""
    try:
        store.client.hincrby(store.metrics_key, name, 1)
    except Exception:  # best effort: a lost increment is not worth a retry
        pass


class RedisJobCollector(Collector):
    """Jobs by state, queue depth, running jobs, finished jobs, lease waits, redeliveries,
    hand-backs, rows, bytes and conversion durations."""

    def __init__(self, store: RedisJobStore, queue: str) -> None:
        self.store = store
        self.queue = queue

    def collect(self) -> Iterator[object]:
        client = self.store.client
        counts = self.store.count_by_state()
        depth = client.llen(self.queue)
        raw = {k.decode(): float(v) for k, v in client.hgetall(self.store.metrics_key).items()}
        jobs = GaugeMetricFamily("mds_convert_jobs", "Jobs by current state", labels=["state"])
        for state, count in counts.items():
            jobs.add_metric([str(state)], count)
        yield jobs
        yield GaugeMetricFamily(
            "mds_convert_queue_depth", "Messages waiting on the broker queue", value=depth
        )
        yield GaugeMetricFamily(
            "mds_convert_running_jobs",
            "Jobs running now (running or cancelling)",
            value=counts[JobState.RUNNING] + counts[JobState.CANCELLING],
        )
        for name, text in EVENTS.items():
            yield CounterMetricFamily(f"mds_convert_{name}", text, value=raw.get(name, 0.0))
        finished = CounterMetricFamily(
            "mds_convert_jobs_finished", "Jobs that reached a final state", labels=["state"]
        )
        for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            finished.add_metric([str(state)], raw.get(f"finished:{state}", 0.0))
        yield finished
        yield CounterMetricFamily(
            "mds_convert_rows_written", "Rows written by succeeded jobs", value=raw.get("rows", 0)
        )
        yield CounterMetricFamily(
            "mds_convert_bytes_written", "Shard bytes written", value=raw.get("bytes", 0)
        )
        yield self._durations(raw)

    @staticmethod
    def _durations(raw: dict[str, float]) -> HistogramMetricFamily:
        buckets = [(str(b), raw.get(f"duration_le:{b}", 0.0)) for b in DURATION_BUCKETS]
        buckets.append(("+Inf", raw.get("duration_count", 0.0)))
        return HistogramMetricFamily(
            "mds_convert_conversion_duration_seconds",
            "Wall time of finished conversions",
            buckets=buckets,
            sum_value=raw.get("duration_sum", 0.0),
        )
