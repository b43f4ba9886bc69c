"""Null counting against a per-row count done in Python, including the rows that defeat the
fast null-element test (arrays holding both probe values, where only the exact test can tell)."""

from __future__ import annotations

import pytest
from pyspark.sql import types as T

from worker.convert.nulls import count_nulls
from worker.convert.schema import plan_columns

pytestmark = pytest.mark.integration

NAN, INF = float("nan"), float("inf")
# Per element type: rows of one array column. The probes are min/max (ints) and NaN/-inf
# (floats), so each list has rows with one, both or neither probe, with and without
# a null element, plus a null array and an empty one.
CASES = {
    T.FloatType(): [[1.0, None], [NAN, None], [NAN, -INF], [NAN, -INF, None], [None, -INF],
                    [2.0, 3.0], None, [], [None]],
    T.DoubleType(): [[NAN, -INF, None], [NAN, -INF], [-INF, 1.0], [None], None, [0.5]],
    T.ByteType(): [[-128, 127, None], [-128, 127], [-128, None], [5, None], [1], None, []],
    T.IntegerType(): [[-(2**31), 2**31 - 1, None], [-(2**31), 2**31 - 1], [None, 2**31 - 1],
                      [3], None],
    T.LongType(): [[-(2**63), 2**63 - 1, None], [-(2**63), 2**63 - 1], [-(2**63), None], [7]],
}


def _expected(rows: list[list[object] | None]) -> tuple[int, int]:
    missing = sum(1 for row in rows if not row)  # null or empty
    holes = sum(1 for row in rows if row is not None and any(x is None for x in row))
    return missing, holes


@pytest.mark.parametrize("element", list(CASES), ids=lambda t: t.simpleString())
def test_null_elements_are_counted_exactly(spark, element: T.DataType) -> None:
    rows = CASES[element]
    schema = T.StructType([T.StructField("a", T.ArrayType(element, containsNull=True))])
    df = spark.createDataFrame([(row,) for row in rows], schema)
    counts = count_nulls(df, plan_columns(df.schema, None))
    missing, holes = _expected(rows)
    assert counts.missing.get("a", 0) == missing
    assert counts.null_elements.get("a", 0) == holes


def test_null_elements_of_nested_arrays_are_counted_exactly(spark) -> None:
    rows = [
        [[NAN, -INF, None], [1.0, 2.0, 3.0]],  # both probes and a null: only the exact test
        [[NAN, -INF], [1.0, 2.0]],
        [[1.0], [None]],
        [[1.0, 2.0]],
    ]
    schema = T.StructType([T.StructField(
        "g", T.ArrayType(T.ArrayType(T.DoubleType(), containsNull=True), containsNull=True)
    )])
    df = spark.createDataFrame([(row,) for row in rows], schema)
    counts = count_nulls(df, plan_columns(df.schema, None))
    assert counts.null_elements.get("g", 0) == 2
    assert not counts.missing.get("g", 0)


def test_a_null_array_is_missing_not_a_null_element(spark) -> None:
    schema = T.StructType([T.StructField("a", T.ArrayType(T.FloatType(), containsNull=True))])
    df = spark.createDataFrame([([1.0],), (None,), (None,)], schema)
    counts = count_nulls(df, plan_columns(df.schema, None))
    assert counts.missing == {"a": 2}
    assert counts.null_elements == {}


@pytest.mark.parametrize("element", list(CASES), ids=lambda t: t.simpleString())
def test_executor_tally_counts_like_the_spark_predicates(element: T.DataType) -> None:
    import pyarrow as pa

    from worker.convert.null_tally import NullTally

    rows = CASES[element]
    schema = T.StructType([T.StructField("a", T.ArrayType(element, containsNull=True))])
    arrow_type = {"float": pa.float32(), "double": pa.float64(), "tinyint": pa.int8(),
                  "int": pa.int32(), "bigint": pa.int64()}[element.simpleString()]
    batch = pa.record_batch({"a": pa.array(rows, pa.list_(arrow_type))})
    tally = NullTally()
    for piece in (batch.slice(0, 2), batch.slice(2)):  # sliced batches keep their offsets
        tally.add_batch(piece, plan_columns(schema, None))
    missing, holes = _expected(rows)
    assert tally.missing.get("a", 0) == missing
    assert tally.null_elements.get("a", 0) == holes


def test_executor_tally_of_nested_arrays() -> None:
    import pyarrow as pa

    from worker.convert.null_tally import NullTally

    rows = [[[1.0, None], [2.0, 3.0]], [[1.0], []], [[1.0], None], [[1.0, 2.0]], [], None]
    schema = T.StructType([T.StructField(
        "g", T.ArrayType(T.ArrayType(T.DoubleType(), containsNull=True), containsNull=True)
    )])
    tally = NullTally()
    tally.add_batch(pa.record_batch({"g": pa.array(rows, pa.list_(pa.list_(pa.float64())))}),
                    plan_columns(schema, None))
    assert tally.to_dict() == {"missing": {"g": 2}, "null_elements": {"g": 3}}
