"""Convert one Spark DataFrame to each target named on the command line, in its own process.

Its own process, so its own Spark driver: the executors' Python workers inherit the environment
of this process (STORAGE_EMULATOR_HOST, AZURE_STORAGE_CONNECTION_STRING...), which the test
session's shared SparkSession, started before the emulators, would not have.

    python remote_convert_job.py DATA_DIR TARGET [TARGET...]

Prints one JSON line: a list of the conversion results, one per target.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from worker.convert.pipeline import dataframe_to_mds
from worker.convert.spark import build_spark_session


def main() -> None:
    data_dir, targets = sys.argv[1], sys.argv[2:]
    conf = {"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false"}
    spark = build_spark_session("local[2]", conf, data_dir)
    df = spark.range(0, 300, numPartitions=3).selectExpr(
        "id", "concat('row-', cast(id as string)) as text"
    )
    results = [
        asdict(dataframe_to_mds(df, target, size_limit=1 << 11, run_id="run-remote"))
        for target in targets
    ]
    spark.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
