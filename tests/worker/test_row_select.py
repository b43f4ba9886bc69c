"""Row filters and splits against real Spark, checked row by row against Python's own answer."""

from __future__ import annotations

import datetime as dt
import decimal
import operator
from collections import Counter

import pytest
from pydantic import ValidationError
from pyspark.sql import types as T

from worker.convert.row_select import (
    InvalidFilterError,
    apply_filter,
    condition_column,
    split_frames,
)
from worker.convert.rowspec import Condition, Splits

pytestmark = pytest.mark.integration

SCHEMA = T.StructType(
    [
        T.StructField("id", T.LongType()),
        T.StructField("small", T.ByteType()),
        T.StructField("n", T.IntegerType()),
        T.StructField("x", T.DoubleType()),
        T.StructField("f", T.FloatType()),
        T.StructField("dec", T.DecimalType(10, 2)),
        T.StructField("s", T.StringType()),
        T.StructField("flag", T.BooleanType()),
        T.StructField("day", T.DateType()),
        T.StructField("ts", T.TimestampType()),
        T.StructField("odd.name`", T.IntegerType()),
    ]
)
UTC = dt.UTC


def _row(i: int) -> tuple:
    null = i % 7 == 3
    return (
        i, None if null else (i % 5) - 2, None if null else i % 10, None if null else i / 4,
        None if null else float(i % 3), None if null else decimal.Decimal(i) / 4,
        None if null else f"s{i % 6}", None if null else i % 2 == 0,
        None if null else dt.date(2024, 1, 1) + dt.timedelta(days=i % 9),
        None if null else dt.datetime(2024, 1, 1, tzinfo=UTC) + dt.timedelta(hours=i),
        None if null else i % 4,
    )  # fmt: skip


ROWS = [_row(i) for i in range(200)]
COLUMNS = [f.name for f in SCHEMA.fields]


@pytest.fixture(scope="module")
def frame(spark):
    return spark.createDataFrame(ROWS, SCHEMA)


def python_value(column: str, value):
    kind = SCHEMA[column].dataType
    if isinstance(kind, T.DecimalType):
        return decimal.Decimal(str(value))
    if isinstance(kind, T.DateType):
        return dt.date.fromisoformat(value)
    if isinstance(kind, T.TimestampType):
        return dt.datetime.fromisoformat(value)
    return value


def expected_ids(condition: Condition) -> list[int]:
    index = COLUMNS.index(condition.column)
    values = [python_value(condition.column, v) for v in condition.values()]
    compare = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
               ">": operator.gt, ">=": operator.ge}  # fmt: skip
    kept = []
    for row in ROWS:
        cell = row[index]
        if isinstance(cell, dt.datetime):
            cell = cell.astimezone(UTC)
        op = condition.op
        if op == "is_null":
            keep = cell is None
        elif op == "not_null":
            keep = cell is not None
        elif cell is None:
            keep = False  # a null matches no comparison
        elif op == "in":
            keep = cell in values
        elif op == "not_in":
            keep = cell not in values
        elif op == "between":
            keep = values[0] <= cell <= values[1]
        else:
            keep = compare[op](cell, values[0])
        if keep:
            kept.append(row[0])
    return kept


VALUES = {
    "id": (17, [3, 9, 150], [10, 40]),
    "small": (0, [-2, 2], [-1, 1]),
    "n": (4, [1, 2, 3], [2, 6]),
    "x": (10.25, [0.5, 2.25], [1.0, 20.0]),
    "f": (1.0, [0.0, 2.0], [0.5, 1.5]),
    "dec": ("10.25", ["0.50", "2.25"], ["1.00", "20.00"]),
    "s": ("s3", ["s1", "s4"], ["s1", "s3"]),
    "flag": (True, [False], None),
    "day": ("2024-01-05", ["2024-01-02", "2024-01-09"], ["2024-01-03", "2024-01-06"]),
    "ts": ("2024-01-02T00:00:00+00:00", ["2024-01-01T05:00:00+00:00"],
           ["2024-01-01T10:00:00+00:00", "2024-01-03T00:00:00+01:00"]),
    "odd.name`": (2, [0, 3], [1, 2]),
}  # fmt: skip


def cases() -> list[Condition]:
    result = []
    for column, (one, several, pair) in VALUES.items():
        ops = ["=", "!="] if column == "flag" else ["=", "!=", "<", "<=", ">", ">="]
        result += [Condition(column=column, op=op, value=one) for op in ops]
        result += [Condition(column=column, op=op, value=several) for op in ("in", "not_in")]
        result += [Condition(column=column, op=op) for op in ("is_null", "not_null")]
        if pair is not None:
            result.append(Condition(column=column, op="between", value=pair))
    return result


def test_every_operator_on_every_type(frame) -> None:
    conditions = cases()
    # One Spark job for all of them: a column per condition saying whether the row passes.
    # (apply_filter is df.filter(condition_column(...)), checked on its own below.)
    flags = [condition_column(frame, c).alias(f"c{i}") for i, c in enumerate(conditions)]
    rows = frame.select("id", *flags).collect()
    assert len(conditions) > 100
    for i, condition in enumerate(conditions):
        got = sorted(r["id"] for r in rows if r[f"c{i}"] is True)
        assert got == expected_ids(condition), condition
    one = conditions[5]
    assert sorted(r["id"] for r in apply_filter(frame, [one]).collect()) == expected_ids(one)


def test_conditions_combine_and_push_down_to_parquet(spark, tmp_path) -> None:
    path = str(tmp_path / "t")
    spark.createDataFrame(ROWS, SCHEMA).drop("odd.name`").write.parquet(path)
    conditions = [
        Condition(column="n", op=">=", value=5),
        Condition(column="s", op="=", value="s1"),
    ]
    df = apply_filter(spark.read.parquet(path), conditions)
    expected = sorted(set(expected_ids(conditions[0])) & set(expected_ids(conditions[1])))
    assert sorted(r["id"] for r in df.select("id").collect()) == expected
    plan = df._jdf.queryExecution().executedPlan().toString()
    assert "PushedFilters" in plan and "GreaterThanOrEqual(n,5)" in plan, plan


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (Condition(column="missing", op="=", value=1), "has no column 'missing'"),
        (Condition(column="n", op="=", value="4"), "does not fit its type int"),
        (Condition(column="n", op="=", value=4.5), "does not fit"),
        (Condition(column="n", op="=", value=True), "does not fit"),
        (Condition(column="s", op="in", value=["a", 1]), "does not fit its type string"),
        (Condition(column="flag", op="<", value=True), "not ordered"),
        (Condition(column="day", op="=", value="yesterday"), "does not fit its type date"),
        (Condition(column="ts", op=">", value="2024-01-01T00:00:00"), "needs a UTC offset"),
        (Condition(column="dec", op="=", value="1e"), "does not fit"),
    ],
)
def test_a_bad_filter_names_what_is_wrong(frame, condition, message) -> None:
    with pytest.raises(InvalidFilterError, match=message):
        apply_filter(frame, [condition])


@pytest.mark.parametrize(
    "raw",
    [
        {"column": "n", "op": "like", "value": "x"},
        {"column": "n", "op": "=", "value": None},
        {"column": "n", "op": "=", "value": [1]},
        {"column": "n", "op": "in", "value": []},
        {"column": "n", "op": "in", "value": 3},
        {"column": "n", "op": "between", "value": [1]},
        {"column": "n", "op": "is_null", "value": 1},
        {"column": "", "op": "is_null"},
        {"column": "n", "op": "=", "value": {"a": 1}},
        {"column": "n", "op": "=", "value": float("nan")},
        {"column": "n", "op": "=", "value": 1, "extra": 1},
    ],
)
def test_filter_shapes_are_checked_without_spark(raw) -> None:
    with pytest.raises(ValidationError):
        Condition.model_validate(raw)


def test_splits_are_disjoint_complete_stable_and_proportional(spark) -> None:
    df = spark.range(20_000).withColumnRenamed("id", "key")
    splits = Splits(by="key", seed=7, parts={"train": 0.9, "val": 0.08, "test": 0.02})
    parts = {name: {r["key"] for r in f.collect()} for name, f in split_frames(df, splits).items()}
    everything = [k for keys in parts.values() for k in keys]
    assert len(everything) == len(set(everything)) == 20_000  # each row in exactly one part
    for name, share in splits.parts.items():
        expected = share * 20_000
        # Binomial: within 5 standard deviations.
        assert abs(len(parts[name]) - expected) < 5 * (expected * (1 - share)) ** 0.5, name
    again = split_frames(spark.range(20_000).withColumnRenamed("id", "key"), splits)
    assert {r["key"] for r in again["val"].collect()} == parts["val"]  # stable across runs
    # A row's part does not depend on the other rows (appends keep their assignment).
    subset = spark.range(5_000, 6_000).withColumnRenamed("id", "key")
    sub = {r["key"] for r in split_frames(subset, splits)["val"].collect()}
    assert sub == {k for k in parts["val"] if 5_000 <= k < 6_000}
    other_seed = Splits(by="key", seed=8, parts=dict(splits.parts))
    assert {r["key"] for r in split_frames(df, other_seed)["val"].collect()} != parts["val"]


def test_split_by_several_columns(spark) -> None:
    df = spark.createDataFrame([(i % 50, f"u{i % 7}") for i in range(700)], "a int, b string")
    splits = Splits(by=["a", "b"], seed=1, parts={"x": 0.5, "y": 0.5})
    frames = split_frames(df, splits)
    x = Counter((r["a"], r["b"]) for r in frames["x"].collect())
    y = Counter((r["a"], r["b"]) for r in frames["y"].collect())
    assert not set(x) & set(y) and sum(x.values()) + sum(y.values()) == 700


@pytest.mark.parametrize(
    "raw",
    [
        {"by": "k", "parts": {"a": 0.5}},
        {"by": "k", "parts": {"a": 0.5, "b": 0.4}},
        {"by": "k", "parts": {"a": 0.5, "../b": 0.5}},
        {"by": [], "parts": {"a": 0.5, "b": 0.5}},
        {"by": ["k", "k"], "parts": {"a": 0.5, "b": 0.5}},
        {"by": "k", "parts": {"a": 1, "b": 0}},
        {"by": "k", "seed": -1, "parts": {"a": 0.5, "b": 0.5}},
        {"by": "k", "seed": "7", "parts": {"a": 0.5, "b": 0.5}},
    ],
)
def test_split_shapes_are_checked(raw) -> None:
    with pytest.raises(ValidationError):
        Splits.model_validate(raw)


def test_split_by_a_missing_column_is_refused(frame) -> None:
    with pytest.raises(InvalidFilterError, match="no column 'nope'"):
        split_frames(frame, Splits(by="nope", parts={"a": 0.5, "b": 0.5}))


def test_a_filtered_conversion_writes_only_the_kept_rows(spark, tmp_path) -> None:
    from tests.worker.conftest import read_ours
    from worker.convert.model import ConversionSpec
    from worker.convert.pipeline import convert_table

    path = tmp_path / "t"
    spark.createDataFrame(ROWS, SCHEMA).drop("odd.name`", "ts").write.parquet(str(path))
    conditions = (Condition(column="n", op="between", value=[2, 4]),)
    spec = ConversionSpec(
        source_table=f"parquet.`{path}`", target=str(tmp_path / "out"), run_id="r1",
        filter=conditions, null_policy="skip",
    )  # fmt: skip
    result = convert_table(spec, spark=spark)
    ids = sorted(int(sample["id"]) for sample in read_ours(tmp_path / "out"))
    assert ids == expected_ids(conditions[0]) and result.samples == len(ids)
    with pytest.raises(InvalidFilterError, match="no column 'ts'"):
        bad = (Condition(column="ts", op="is_null"),)
        convert_table(
            ConversionSpec(source_table=f"parquet.`{path}`", target=str(tmp_path / "o2"),
                           run_id="r2", filter=bad),
            spark=spark,
        )  # fmt: skip
    assert not (tmp_path / "o2").exists()
