"""Progress while a partition runs: the executor-side writer sends its running totals over the
UDP side channel after each batch, and the driver's channel sums them per partition."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from worker.convert.partitions import WriteOptions, write_partition
from worker.convert.progress import ProgressChannel, ProgressSender
from worker.convert.schema import ColumnPlan


def _wait_for(channel: ProgressChannel, rows: int, timeout: float = 5.0) -> tuple[int, int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        totals = channel.totals()
        if totals[0] >= rows:
            return totals
        time.sleep(0.02)
    return channel.totals()


def test_partition_reports_rows_before_it_ends(tmp_path: Path) -> None:
    channel = ProgressChannel("127.0.0.1")
    plan = ColumnPlan(name="x", spark_type="bigint", encoding="int64", kind="scalar",
                      arrow_type="int64", nullable=False)
    options = WriteOptions(
        run_url=str(tmp_path / "run"), plans=(plan,), compression=None, hashes=("xxh64",),
        size_limit=1 << 12, progress_address=channel.address, progress_token=channel.token,
    )
    seen_mid_partition: list[tuple[int, int, int]] = []

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch({"x": pa.array(range(1000), pa.int64())})
        seen_mid_partition.append(_wait_for(channel, 1000))  # the partition is still running
        time.sleep(0.6)  # past the sender's interval, so the next batch is reported too
        yield pa.record_batch({"x": pa.array(range(500), pa.int64())})

    try:
        stats = write_partition(options, 3, batches())
        expected = (1500, len(stats.index.shards), stats.zip_bytes)
        deadline = time.monotonic() + 5
        while channel.totals() != expected and time.monotonic() < deadline:
            time.sleep(0.02)  # the final datagram, sent when the partition ends
        final = channel.totals()
    finally:
        channel.close()
    assert seen_mid_partition[0][0] == 1000
    assert stats.rows == 1500
    assert final == expected


def test_channel_keeps_the_latest_attempt_and_ignores_strangers() -> None:
    channel = ProgressChannel("127.0.0.1")
    try:
        ProgressSender(channel.address, "not-the-token", 0, 0).update(99, 9, 999, force=True)
        ProgressSender(channel.address, channel.token, 0, 0).update(50, 1, 10, force=True)
        ProgressSender(channel.address, channel.token, 1, 0).update(20, 1, 5, force=True)
        assert _wait_for(channel, 70) == (70, 2, 15)
        ProgressSender(channel.address, channel.token, 0, 1).update(5, 0, 0, force=True)
        deadline = time.monotonic() + 5
        while channel.totals() != (25, 1, 5) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert channel.totals() == (25, 1, 5)  # a retried attempt starts its partition over
    finally:
        channel.close()
