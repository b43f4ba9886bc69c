"""Publication: modes, redelivery, cancellation and progress on the local[2] session."""

from __future__ import annotations

import threading
import time

import pytest

from mdsloader.mds.index import read_index
from tests.worker.conftest import files_under, read_ours, read_reference
from worker.convert.model import ConversionProgress
from worker.convert.pipeline import dataframe_to_mds
from worker.errors import ConversionCancelled, TargetExistsConversionError

pytestmark = pytest.mark.integration


def ids(spark, start: int, end: int, partitions: int = 2):
    return spark.range(start, end, numPartitions=partitions).selectExpr("id", "'x' as tag")


def test_error_mode_refuses_an_existing_dataset_before_writing(spark, scratch) -> None:
    out = scratch / "ds"
    dataframe_to_mds(ids(spark, 0, 10), str(out), run_id="first")
    before = files_under(out)
    with pytest.raises(TargetExistsConversionError, match=r"index\.json already exists"):
        dataframe_to_mds(ids(spark, 0, 5), str(out))
    assert files_under(out) == before


def test_a_redelivered_run_republishes_its_own_dataset(spark, scratch) -> None:
    out = scratch / "ds"
    dataframe_to_mds(ids(spark, 0, 10, 3), str(out), run_id="job-1")
    result = dataframe_to_mds(ids(spark, 0, 10, 2), str(out), run_id="job-1")
    assert result.samples == 10
    assert [int(s["id"]) for s in read_ours(out)] == list(range(10))
    assert not any(f.startswith("job-1/00002/") for f in files_under(out)), "stale partition kept"


def test_overwrite_swaps_the_index_and_retires_the_old_run(spark, scratch, reference) -> None:
    out = scratch / "ds"
    dataframe_to_mds(ids(spark, 0, 10), str(out), run_id="old")
    result = dataframe_to_mds(ids(spark, 100, 130, 3), str(out), mode="overwrite", run_id="new")
    assert result.samples == 30
    assert [int(s["id"]) for s in read_reference(reference, local=out)] == list(range(100, 130))
    # The old generation stays for readers mid-epoch on it until the next overwrite.
    tops = {f.split("/")[0] for f in files_under(out)}
    assert tops == {"index.json", "new", "old", "_mds_convert"}
    basenames = [s.file.basename for s in read_index(out).shards]
    assert basenames[0] == "new/00000/shard.00000.mds.zstd"


def slow_frame(spark, rows: int, partitions: int, delay: float, *, nullable: bool = False):
    from pyspark.sql import functions as F

    def sleep_then(value):
        time.sleep(delay)
        return value

    slow = F.udf(sleep_then, "long")

    # coalesce makes the column non-nullable, so only the write stage runs the slow UDF;
    # a nullable one makes the null count run it too.
    column = slow("id") if nullable else F.coalesce(slow("id"), F.lit(0))
    return spark.range(0, rows, numPartitions=partitions).select("id", column.alias("x"))


def test_cancel_mid_conversion_removes_everything_and_publishes_nothing(spark, scratch) -> None:
    out = scratch / "ds"
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def on_progress(snapshot: ConversionProgress) -> None:
        if snapshot.partitions_done >= 1 and not cancel.is_set():
            cancelled_at.append(time.monotonic())
            cancel.set()  # at least one partition's shards are on disk now

    with pytest.raises(ConversionCancelled):
        dataframe_to_mds(
            slow_frame(spark, 160, 8, 0.1), str(out), progress=on_progress, cancel=cancel
        )
    assert cancelled_at, "the conversion finished before it could be cancelled"
    assert time.monotonic() - cancelled_at[0] < 10
    assert files_under(out) == []


def test_cancel_during_the_null_count_stops_it(spark, scratch) -> None:
    cancel = threading.Event()
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    started = time.monotonic()
    with pytest.raises(ConversionCancelled):
        dataframe_to_mds(
            slow_frame(spark, 800, 4, 0.05, nullable=True), str(scratch / "ds"), cancel=cancel
        )
    assert time.monotonic() - started < 15  # the whole count alone would take 20 s
    assert files_under(scratch) == []


def test_cancel_before_start_writes_nothing(spark, scratch) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ConversionCancelled):
        dataframe_to_mds(ids(spark, 0, 10), str(scratch / "ds"), cancel=cancel)
    assert files_under(scratch) == []


def test_progress_reports_partitions_rows_shards_and_bytes(spark, scratch) -> None:
    seen: list[ConversionProgress] = []
    result = dataframe_to_mds(
        slow_frame(spark, 40, 4, 0.02), str(scratch / "ds"), progress=seen.append
    )
    last = seen[-1]
    assert last.partitions_total == 4 and last.partitions_done == 4
    assert (last.rows_written, last.shards_written) == (40, result.shards)
    assert last.bytes_written == result.zip_bytes
