"""Conversions with splits (real Spark): one dataset per part, every row in exactly one part, the
same row in the same part on every run and every append, nothing published when a part fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.worker.conftest import files_under, read_ours
from worker.convert.model import ConversionSpec
from worker.convert.pipeline import convert_table
from worker.convert.rowspec import Condition, Splits
from worker.errors import PermanentConversionError

pytestmark = pytest.mark.integration
SPLITS = Splits(by="id", seed=7, parts={"train": 0.8, "val": 0.2})


@pytest.fixture(scope="module")
def table(spark, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("split-src") / "t"
    frame = spark.range(2_000).selectExpr("id", "cast(id % 4 as int) as day", "id * 0.5 as x")
    frame.repartition(2).write.parquet(str(path))
    return f"parquet.`{path}`"


def ids(root: Path, part: str) -> list[int]:
    return [int(s["id"]) for s in read_ours(root / part)]


def test_each_part_is_a_dataset_and_rows_are_split_exactly(spark, table, tmp_path) -> None:
    target = tmp_path / "ds"
    spec = ConversionSpec(source_table=table, target=str(target), run_id="r1", splits=SPLITS)
    result = convert_table(spec, spark=spark)
    train, val = ids(target, "train"), ids(target, "val")
    assert sorted(train + val) == list(range(2_000))  # complete and disjoint
    assert 300 < len(val) < 500  # 20% of 2,000, within bounds
    assert result.splits is not None and set(result.splits) == {"train", "val"}
    assert result.splits["val"]["samples"] == len(val) and result.samples == 2_000
    assert result.splits["train"]["index_url"] == str(target / "train" / "index.json")
    assert not (target / "index.json").exists()
    # The same split again, elsewhere: the same rows in the same parts.
    again = tmp_path / "again"
    convert_table(
        ConversionSpec(source_table=table, target=str(again), run_id="r2", splits=SPLITS),
        spark=spark,
    )
    assert ids(again, "val") == val


def test_appended_slices_land_in_the_same_parts(spark, table, tmp_path) -> None:
    whole = tmp_path / "whole"
    convert_table(
        ConversionSpec(source_table=table, target=str(whole), run_id="w", splits=SPLITS),
        spark=spark,
    )
    daily = tmp_path / "daily"
    for day in range(4):
        spec = ConversionSpec(
            source_table=table, target=str(daily), run_id=f"d{day}", splits=SPLITS,
            mode="error" if day == 0 else "append",
            filter=(Condition(column="day", op="=", value=day),),
        )  # fmt: skip
        result = convert_table(spec, spark=spark)
    assert result.added_samples == 500 and result.samples == 2_000
    for part in ("train", "val"):
        assert sorted(ids(daily, part)) == sorted(ids(whole, part))


def test_a_failing_part_publishes_nothing(spark, table, tmp_path) -> None:
    target = tmp_path / "tiny"
    few = Condition(column="id", op="<", value=3)
    spec = ConversionSpec(
        source_table=table, target=str(target), run_id="r1", filter=(few,),
        splits=Splits(by="id", seed=7, parts={"big": 0.99, "rare": 0.01}),
    )  # fmt: skip
    with pytest.raises(PermanentConversionError, match="received no rows"):
        convert_table(spec, spark=spark)
    assert not target.exists() or files_under(target) == []


def test_an_existing_part_is_refused_before_anything_is_written(spark, table, tmp_path) -> None:
    target = tmp_path / "exists"
    first = ConversionSpec(source_table=table, target=str(target / "val"), run_id="r0")
    convert_table(first, spark=spark)
    before = files_under(target)
    spec = ConversionSpec(source_table=table, target=str(target), run_id="r1", splits=SPLITS)
    with pytest.raises(PermanentConversionError, match="already exists"):
        convert_table(spec, spark=spark)
    assert files_under(target) == before
