"""mode="append" with real Spark: daily slices appended to one dataset, read back by our reader and
by the reference after each append; a reader of the old index is never broken; a mismatched
append changes nothing."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.worker.conftest import files_under, read_ours, read_reference
from worker.convert.model import ConversionSpec
from worker.convert.pipeline import convert_table
from worker.convert.rowspec import Condition
from worker.errors import PermanentConversionError

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def events(spark, tmp_path_factory) -> str:
    """One Parquet table holding three days of events."""
    path = tmp_path_factory.mktemp("append-src") / "events"
    rows = [(i, i // 100, f"event {i} " + "x" * (i % 13), float(i) / 7) for i in range(300)]
    frame = spark.createDataFrame(rows, "id long, day int, text string, score double")
    frame.repartition(3).write.parquet(str(path))
    return f"parquet.`{path}`"


def day(source: str, target: Path, n: int, mode: str, run: str, **extra) -> ConversionSpec:
    return ConversionSpec(
        source_table=source, target=str(target), mode=mode, run_id=run, size_limit=1 << 12,
        filter=(Condition(column="day", op="=", value=n),), **extra,
    )  # fmt: skip


def digest_tree(root: Path) -> dict[str, str]:
    return {f: hashlib.sha256((root / f).read_bytes()).hexdigest() for f in files_under(root)}


def test_daily_appends_keep_old_ids_and_readers(spark, events, tmp_path, reference) -> None:
    target = tmp_path / "dataset"
    first = convert_table(day(events, target, 0, "error", "run0"), spark=spark)
    assert first.added_samples is None and first.samples == 100
    seen: list[int] = [int(s["id"]) for s in read_ours(target)]
    for n in (1, 2):
        # A reader that opened the old index before the append...
        from mdsloader.mds.reader import open_local_dataset

        old_reader = open_local_dataset(target)
        result = convert_table(day(events, target, n, "append", f"run{n}"), spark=spark)
        # ...still reads every one of its samples afterwards.
        assert [int(old_reader[i]["id"]) for i in range(len(old_reader))] == seen
        old_reader.close()
        assert result.added_samples == 100 and result.samples == 100 * (n + 1)
        assert result.added_shards and result.shards > result.added_shards
        ours = [int(s["id"]) for s in read_ours(target)]
        assert ours[: len(seen)] == seen  # old samples first, with their old ids
        assert sorted(ours[len(seen) :]) == list(range(100 * n, 100 * (n + 1)))
        assert len(set(ours)) == len(ours)  # no duplicates
        local = tmp_path / f"ref-{n}"
        shutil.copytree(target, local)
        theirs = [int(s["id"]) for s in read_reference(reference, local=local)]
        assert theirs == ours
        seen = ours
    assert sorted(seen) == list(range(300))


def test_append_to_an_empty_target_creates_the_dataset(spark, events, tmp_path) -> None:
    target = tmp_path / "new"
    result = convert_table(day(events, target, 1, "append", "r1"), spark=spark)
    assert result.samples == result.added_samples == 100
    assert sorted(int(s["id"]) for s in read_ours(target)) == list(range(100, 200))


def test_a_redelivered_append_publishes_the_same_index(spark, events, tmp_path) -> None:
    target = tmp_path / "again"
    convert_table(day(events, target, 0, "error", "r0"), spark=spark)
    convert_table(day(events, target, 1, "append", "r1"), spark=spark)
    once = (target / "index.json").read_bytes()
    # The same job delivered again (its run id is the job id) must not append twice.
    result = convert_table(day(events, target, 1, "append", "r1"), spark=spark)
    assert (target / "index.json").read_bytes() == once and result.samples == 200


@pytest.mark.parametrize("case", ["missing column", "other encoding"])
def test_a_mismatched_append_is_refused_and_changes_nothing(spark, events, tmp_path, case) -> None:
    target = tmp_path / "refused"
    convert_table(day(events, target, 0, "error", "r0"), spark=spark)
    before = digest_tree(target)
    if case == "missing column":
        spec = day(events, target, 1, "append", "r1", columns={"id": None, "day": None,
                                                                "text": None})  # fmt: skip
        message = "column 'score' of the dataset is missing"
    else:  # the same columns, but score stored as float (float32) in this table
        path = tmp_path / "narrow"
        spark.sql("select 1L as id, 1 as day, 'x' as text, cast(0.5 as float) as score") \
            .write.parquet(str(path))  # fmt: skip
        spec = day(f"parquet.`{path}`", target, 1, "append", "r1")
        message = "column 'score' would be 'float32', the dataset has 'float64'"
    with pytest.raises(PermanentConversionError, match=message) as info:
        convert_table(spec, spark=spark)
    assert info.value.code == "append_mismatch"
    assert digest_tree(target) == before  # byte-identical, no run directory left

