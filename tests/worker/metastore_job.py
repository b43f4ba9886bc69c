"""Save a catalog table through ``build_spark_session`` (persistent Derby metastore), then exit.

    python metastore_job.py DATA_DIR
"""

from __future__ import annotations

import json
import sys

from worker.convert.spark import build_spark_session


def main() -> None:
    spark = build_spark_session("local[1]", {"spark.sql.shuffle.partitions": "1"}, sys.argv[1])
    spark.sql("create database if not exists shop")
    spark.range(7).write.mode("overwrite").saveAsTable("shop.orders")
    spark.stop()
    print(json.dumps({"saved": 7}))


if __name__ == "__main__":
    main()
