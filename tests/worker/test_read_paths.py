"""The two read paths: a bare Parquet/ORC table read by pyarrow on the executors ("direct") and
``mapInArrow`` ("spark") write byte-identical shards; everything else falls back, with the
reason recorded; nulls found while encoding publish nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.conftest import files_under, read_ours
from tests.worker.test_convert_types import EXPECTED_ENCODINGS, all_types_frame
from worker.convert.model import ConversionSpec
from worker.convert.pipeline import convert_table, dataframe_to_mds
from worker.errors import NullValuesError, PermanentConversionError

pytestmark = pytest.mark.integration
JSON_COLUMNS = [name for name, enc in EXPECTED_ENCODINGS.items() if enc == "json"]


def shard_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a dataset but its run directory name (run ids differ between runs)."""
    (run,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")]
    files = {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    index = (root / "index.json").read_text().replace(f"\"{run.name}/", "\"RUN/")
    return {**files, "index.json": index.encode()}


def convert_both(df, root: Path, **kwargs) -> tuple:
    direct = dataframe_to_mds(df, str(root / "direct"), run_id="run-direct-0", **kwargs)
    spark = dataframe_to_mds(
        df, str(root / "spark"), run_id="run-spark-00", read_path="spark", **kwargs
    )
    assert (direct.read_path, spark.read_path) == ("direct", "spark"), direct.read_path_reason
    assert shard_bytes(root / "direct") == shard_bytes(root / "spark")
    return direct, spark


@pytest.mark.parametrize("fmt", ["parquet", "orc"])
def test_every_policy_type_gives_identical_shards_on_both_paths(spark, scratch, fmt) -> None:
    frame = all_types_frame(spark).drop(*JSON_COLUMNS)
    if fmt == "orc":  # pyarrow reads ORC timestamps in nanoseconds: those tables fall back
        frame = frame.drop("ts", "ntz")
    frame.coalesce(1).write.format(fmt).save(str(scratch / "t"))
    df = spark.read.format(fmt).load(str(scratch / "t"))
    direct, _ = convert_both(df, scratch, size_limit=1 << 10)
    assert direct.samples == 2
    assert "pyarrow" in direct.read_path_reason


def test_partitioned_table_with_several_files_per_partition(spark, scratch) -> None:
    rows = spark.range(0, 3000, numPartitions=3).selectExpr(
        "id", "cast(id % 3 as int) as p", "date_add(date'2024-01-01', cast(id % 2 as int)) as d",
        "concat('k', cast(id % 2 as string)) as k", "array(cast(id as float), 1.5f) as v",
        "repeat(cast(id as string), 1 + cast(id % 7 as int)) as s",
    )
    rows.write.partitionBy("p", "d", "k").parquet(str(scratch / "t"))
    df = spark.read.parquet(str(scratch / "t"))
    direct, _ = convert_both(df, scratch, size_limit=1 << 14)
    assert direct.samples == 3000
    got = {(int(s["id"]), int(s["p"]), int(s["d"]), s["k"]) for s in read_ours(scratch / "direct")}
    assert got == {(i, i % 3, 19723 + i % 2, f"k{i % 2}") for i in range(3000)}


def test_files_split_into_row_group_ranges(spark, scratch) -> None:
    rows = spark.range(0, 40000, numPartitions=2).selectExpr("id", "rand(7) as x")
    rows.write.option("parquet.block.size", 64 * 1024).parquet(str(scratch / "t"))
    previous = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(100 * 1024))
    try:
        df = spark.read.parquet(str(scratch / "t"))
        assert df.rdd.getNumPartitions() > 2  # Spark cut the files into byte ranges
        convert_both(df, scratch, size_limit=1 << 16)
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", previous)


def test_empty_table_fails_on_both_paths_and_leaves_nothing(spark, scratch) -> None:
    spark.range(0).selectExpr("id").write.parquet(str(scratch / "t"))
    df = spark.read.parquet(str(scratch / "t"))
    for path in ("auto", "spark"):
        with pytest.raises(PermanentConversionError) as caught:
            dataframe_to_mds(df, str(scratch / path), read_path=path)
        assert caught.value.code == "empty_source"
        assert files_under(scratch / path) == [] if (scratch / path).exists() else True


def test_nulls_under_error_publish_nothing_on_the_direct_path(spark, scratch) -> None:
    spark.sql(
        "select * from values (1, 'a', array(1.0)), (null, null, array(cast(null as double))),"
        " (3, null, array()) as t(n, s, a)"
    ).coalesce(1).write.parquet(str(scratch / "t"))
    df = spark.read.parquet(str(scratch / "t"))
    with pytest.raises(NullValuesError) as caught:
        dataframe_to_mds(df, str(scratch / "out"))
    message = str(caught.value)
    assert "'n': 1 null" in message and "'s': 2 null" in message
    assert "'a': 1 null or empty" in message and "'a': 1 with null elements" in message
    assert files_under(scratch / "out") == []


def test_csv_and_views_fall_back_with_the_reason(spark, scratch) -> None:
    spark.range(4).selectExpr("id", "id * 2 as twice").write.option("header", "true").csv(
        str(scratch / "csv")
    )
    spec = ConversionSpec(source_table=f"csv.`{scratch / 'csv'}`", target=str(scratch / "a"))
    result = convert_table(spec, spark=spark)
    assert (result.samples, result.read_path) == (4, "spark")
    assert "CSV" in result.read_path_reason

    spark.range(5).write.parquet(str(scratch / "pq"))
    spark.read.parquet(str(scratch / "pq")).createOrReplaceTempView("mds_test_view")
    spec = ConversionSpec(source_table="mds_test_view", target=str(scratch / "b"))
    result = convert_table(spec, spark=spark)
    assert (result.samples, result.read_path, result.read_path_reason) == (
        5, "spark", "the source is a view"
    )


def test_a_file_with_other_types_than_the_table_falls_back(spark, scratch) -> None:
    spark.range(3).selectExpr("id", "cast(id as float) as x").write.parquet(str(scratch / "t"))
    df = spark.read.schema("id long, x double").parquet(str(scratch / "t"))
    result = dataframe_to_mds(df, str(scratch / "out"))
    assert result.read_path == "spark"
    assert "float32" in result.read_path_reason and "float64" in result.read_path_reason
    assert sorted(float(s["x"]) for s in read_ours(scratch / "out")) == [0.0, 1.0, 2.0]
