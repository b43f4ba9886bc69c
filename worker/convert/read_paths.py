"""Which read path a conversion takes, and the direct one's Spark job.

``direct``: a bare Parquet/ORC scan is read by the executors with pyarrow along Spark's own splits
(``worker.convert.direct_plan``, ``worker.convert.direct_read``). ``spark``: everything else goes
through ``mapInArrow`` (``worker.convert.partitions``). Both write the same shards; the reason for
the choice is kept in the job's result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Literal

from py4j.protocol import Py4JError
from pyspark.sql import DataFrame, SparkSession

from worker.convert.direct_plan import DirectPlan, NotDirect, plan_direct_read
from worker.convert.direct_read import DirectPartitionWriter
from worker.convert.partitions import WriteOptions
from worker.convert.progress import JobMonitor
from worker.convert.schema import ColumnPlan

ReadPath = Literal["auto", "spark"]


def choose_read_path(
    projected: DataFrame,
    plans: list[ColumnPlan],
    null_policy: str,
    partitions: int | None,
    read_path: ReadPath,
) -> tuple[DirectPlan | None, str]:
    """(the direct plan, or None for ``mapInArrow``; why)."""
    if read_path == "spark":
        return None, "the caller asked for Spark's read path"
    if null_policy != "error":
        return None, f"null_policy={null_policy!r} is applied by Spark"
    if partitions:
        return None, "partitions: Spark repartitions the rows"
    try:
        plan = plan_direct_read(projected, plans)
    except NotDirect as exc:
        return None, str(exc)
    except Py4JError as exc:  # another Spark version's plan classes: stay on the safe path
        return None, f"Spark's read plan is not available ({type(exc).__name__})"
    files = sum(len(split) for split in plan.splits)
    return plan, (
        f"a bare {plan.file_format} scan: {files} file split(s) in {len(plan.splits)} "
        "partition(s) read by pyarrow on the executors"
    )


def with_progress_channel(
    options: WriteOptions, monitor: JobMonitor, spark: SparkSession
) -> WriteOptions:
    """``options`` pointing the executors at the monitor's progress side channel."""
    conf = spark.sparkContext.getConf()
    host = conf.get("spark.driver.bindAddress", None) or conf.get("spark.driver.host", "127.0.0.1")
    channel = monitor.open_channel(host or "127.0.0.1")
    if channel is None:
        return options
    return replace(options, progress_address=channel.address, progress_token=channel.token)


def write_direct(
    spark: SparkSession, plan: DirectPlan, options: WriteOptions, monitor: JobMonitor
) -> list[Mapping[str, Any]]:
    """Run the direct path's Spark job: task i reads and writes Spark partition i."""
    monitor.partitions_total = len(plan.splits)
    if not plan.splits:
        return []
    writer = DirectPartitionWriter(options, plan, monitor.counters)
    items = list(enumerate(plan.splits))
    # One element per slice, so task i writes Spark partition i (as mapInArrow would).
    rdd = spark.sparkContext.parallelize(items, len(items)).mapPartitions(writer)
    return rdd.collect()
