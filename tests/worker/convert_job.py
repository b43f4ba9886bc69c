"""Run one conversion in its own process (own SparkContext) and print the result as JSON.

Used by the tests for what needs a fresh Spark driver: a standalone cluster master, task retries
(``spark.task.maxFailures``), and the fault-injection environment of the executors.

    python convert_job.py MASTER TARGET ROWS PARTITIONS DATA_DIR [--fault] [--save-table]

``--save-table`` also saves the rows as the catalog table ``shop.orders`` (persistent metastore
under DATA_DIR), for the test that reads it from another process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict

from worker.convert.partitions import FAULT_ENV
from worker.convert.pipeline import dataframe_to_mds
from worker.convert.spark import build_spark_session

_FORWARDED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "S3_ENDPOINT_URL")


class _RetryCounter(logging.Handler):
    """Counts the pipeline's ``conversion.partition_retried`` events."""

    def __init__(self) -> None:
        super().__init__()
        self.retried = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "conversion.partition_retried" in record.getMessage():
            self.retried += 1


def main() -> None:
    counter = _RetryCounter()
    logging.getLogger("worker.convert.pipeline").addHandler(counter)
    logging.getLogger("worker.convert.pipeline").setLevel(logging.INFO)
    master, target, rows, partitions, data_dir = sys.argv[1:6]
    fault = "--fault" in sys.argv[6:]
    conf = {
        "spark.task.maxFailures": "3",
        "spark.executor.memory": "512m",
        "spark.cores.max": "1",
        "spark.sql.shuffle.partitions": "4",
    }
    env = {key: os.environ[key] for key in _FORWARDED if key in os.environ}
    if fault:
        env[FAULT_ENV] = "fail_first_attempt"
    conf.update({f"spark.executorEnv.{key}": value for key, value in env.items()})
    spark = build_spark_session(master, conf, data_dir)
    df = spark.range(0, int(rows), numPartitions=int(partitions)).selectExpr(
        "id", "concat('row-', cast(id as string)) as text",
        "array(cast(id as float), cast(id * 2 as float)) as emb",
    )
    result = dataframe_to_mds(df, target, size_limit=1 << 12, run_id="run-test")
    if "--save-table" in sys.argv[6:]:
        spark.sql("create database if not exists shop")
        df.write.mode("overwrite").saveAsTable("shop.orders")
    spark.stop()
    print(json.dumps({**asdict(result), "retried_partitions": counter.retried}))


if __name__ == "__main__":
    main()
