"""Every Spark type of the policy table (mds-format.md 2.7) converts and reads back exactly,
through our reader and through mosaicml-streaming; what cannot be stored fails before writing."""

from __future__ import annotations

import datetime as dt
import decimal
import json

import numpy as np
import pytest

from tests.worker.conftest import files_under, read_ours, read_reference
from worker.convert.pipeline import dataframe_to_mds
from worker.errors import (
    ColumnOverrideError,
    NullValuesError,
    PermanentConversionError,
    UnsupportedTypeError,
)

pytestmark = pytest.mark.integration

UTC = dt.UTC
ROWS = [
    {
        "b": -128, "sh": -32768, "i": -7, "l": -(2**62), "f": -1.5, "d": 2.25,
        "dec": decimal.Decimal("-12.30"), "s": "héllo ☃", "bin": b"\x00\xff",
        "bo": True, "day": dt.date(1969, 12, 31),
        "ts": dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        "ntz": dt.datetime(2024, 2, 29, 12, 0, 0, 1),
        "arr": [1.0, -2.5], "arr_nullable": [3, 4, 5], "bytes_arr": [-1, 1],
        "nested": [[1, 2, 3], [4, 5, 6]],
        "m": {"k": 1}, "st": {"x": 10, "y": "why"}, "strs": ["a", "b"],
    },
    {
        "b": 127, "sh": 32767, "i": 2**31 - 1, "l": 2**63 - 1, "f": 3.0, "d": -0.0,
        "dec": decimal.Decimal("99999999.99"), "s": "", "bin": b"",
        "bo": False, "day": dt.date(2000, 1, 1),
        "ts": dt.datetime(2000, 1, 1, tzinfo=UTC), "ntz": dt.datetime(1970, 1, 1),
        "arr": [0.5], "arr_nullable": [6], "bytes_arr": [127],
        "nested": [[7]],
        "m": {}, "st": {"x": -1, "y": ""}, "strs": [],
    },
]


def all_types_frame(spark):
    from pyspark.sql import types as T

    schema = T.StructType([
        T.StructField("b", T.ByteType(), False), T.StructField("sh", T.ShortType(), False),
        T.StructField("i", T.IntegerType(), False), T.StructField("l", T.LongType(), False),
        T.StructField("f", T.FloatType(), False), T.StructField("d", T.DoubleType(), False),
        T.StructField("dec", T.DecimalType(10, 2), False),
        T.StructField("s", T.StringType(), False), T.StructField("bin", T.BinaryType(), False),
        T.StructField("bo", T.BooleanType(), False), T.StructField("day", T.DateType(), False),
        T.StructField("ts", T.TimestampType(), False),
        T.StructField("ntz", T.TimestampNTZType(), False),
        T.StructField("arr", T.ArrayType(T.FloatType(), False), False),
        T.StructField("arr_nullable", T.ArrayType(T.LongType(), True), True),
        T.StructField("bytes_arr", T.ArrayType(T.ByteType(), False), False),
        T.StructField("nested", T.ArrayType(T.ArrayType(T.IntegerType(), False), False), False),
        T.StructField("m", T.MapType(T.StringType(), T.IntegerType()), False),
        T.StructField("st", T.StructType([
            T.StructField("x", T.LongType()), T.StructField("y", T.StringType())
        ]), False),
        T.StructField("strs", T.ArrayType(T.StringType()), False),
    ])
    ordered = [tuple(row[f.name] for f in schema.fields) for row in ROWS]
    return spark.createDataFrame(ordered, schema)


EXPECTED_ENCODINGS = {
    "b": "int8", "sh": "int16", "i": "int32", "l": "int64", "f": "float32", "d": "float64",
    "dec": "str_decimal", "s": "str", "bin": "bytes", "bo": "uint8", "day": "int32",
    "ts": "int64", "ntz": "int64", "arr": "ndarray:float32", "arr_nullable": "ndarray:int64",
    "bytes_arr": "ndarray:int8", "nested": "ndarray:int32", "m": "json", "st": "json",
    "strs": "json",
}


def expected_value(name: str, row: dict):
    value = row[name]
    if name == "bo":
        return int(value)
    if name == "day":
        return (value - dt.date(1970, 1, 1)).days
    if name == "ts":
        return (value - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)
    if name == "ntz":
        return (value - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    return value


def assert_sample_matches(sample: dict, row: dict) -> None:
    assert set(sample) == set(EXPECTED_ENCODINGS)
    for name in EXPECTED_ENCODINGS:
        got, want = sample[name], expected_value(name, row)
        if isinstance(got, np.ndarray):
            np.testing.assert_array_equal(got, np.array(want, dtype=got.dtype))
            assert got.shape == np.array(want).shape
        elif isinstance(want, float):
            assert float(got) == want and np.signbit(got) == np.signbit(want), name
        else:
            assert got == want, name


def test_every_policy_type_round_trips_through_both_readers(spark, scratch, reference) -> None:
    out = scratch / "ds"
    result = dataframe_to_mds(all_types_frame(spark), str(out), partitions=1)

    assert result.columns == EXPECTED_ENCODINGS
    assert (result.samples, result.shards) == (2, 1)
    ours = read_ours(out)
    theirs = read_reference(reference, local=out)
    for samples in (ours, theirs):
        for sample, row in zip(samples, ROWS, strict=True):
            assert_sample_matches(sample, row)
    assert isinstance(ours[0]["dec"], decimal.Decimal)


def test_vectors_become_float64_ndarrays(spark, scratch, reference) -> None:
    from pyspark.ml.linalg import Vectors

    df = spark.createDataFrame(
        [(Vectors.dense([1.0, 2.0]),), (Vectors.sparse(3, [1], [5.0]),)], ["v"]
    )
    out = scratch / "vec"
    assert dataframe_to_mds(df, str(out), partitions=1).columns == {"v": "ndarray:float64"}
    for samples in (read_ours(out), read_reference(reference, local=out)):
        assert [s["v"].tolist() for s in samples] == [[1.0, 2.0], [0.0, 5.0, 0.0]]


@pytest.mark.parametrize(
    ("ddl", "column", "type_name"),
    [
        ("select 1 as ok, null as nothing", "nothing", "void"),
        ("select 1 as ok, interval '1' day as gap", "gap", "interval day"),
        ("select 1 as ok, map('a', interval '1' day) as deep", "deep", "interval day"),
    ],
)
def test_unsupported_types_fail_before_any_file_naming_the_column(
    spark, scratch, ddl, column, type_name
) -> None:
    with pytest.raises(UnsupportedTypeError, match=column) as caught:
        dataframe_to_mds(spark.sql(ddl), str(scratch / "x"))
    assert type_name in str(caught.value)
    assert files_under(scratch) == []


def test_ragged_nested_arrays_fail_naming_the_column_and_publish_nothing(spark, scratch) -> None:
    df = spark.sql("select array(array(1, 2), array(3)) as grid")
    with pytest.raises(UnsupportedTypeError, match=r"'grid'.*different lengths"):
        dataframe_to_mds(df, str(scratch / "x"))
    assert files_under(scratch) == []


def test_nulls_fail_before_writing_naming_columns_and_counts(spark, scratch) -> None:
    df = spark.sql(
        "select * from values (1, 'a', array(1.0)), (null, null, array(cast(null as double))),"
        " (3, null, array()) as t(n, s, a)"
    )
    with pytest.raises(NullValuesError) as caught:
        dataframe_to_mds(df, str(scratch / "x"))
    message = str(caught.value)
    assert "'n': 1 null" in message and "'s': 2 null" in message
    assert "'a': 1 null or empty" in message and "'a': 1 with null elements" in message
    assert files_under(scratch) == []


def test_skip_drops_rows_with_nulls(spark, scratch) -> None:
    df = spark.sql("select * from values (1, 'a'), (null, 'b'), (3, null) as t(n, s)")
    out = scratch / "skip"
    result = dataframe_to_mds(df, str(out), null_policy="skip", partitions=1)
    assert result.samples == 1
    assert [(int(s["n"]), s["s"]) for s in read_ours(out)] == [(1, "a")]


def test_fill_replaces_nulls_with_validated_values(spark, scratch) -> None:
    df = spark.sql(
        "select * from values (1, 'a', array(1, 2)), (null, null, null) as t(n, s, a)"
    )
    out = scratch / "fill"
    dataframe_to_mds(
        df, str(out), null_policy="fill", fill_values={"n": -1, "s": "?", "a": [0, 0]},
        partitions=1,
    )
    got = [(int(s["n"]), s["s"], s["a"].tolist()) for s in read_ours(out)]
    assert got == [(1, "a", [1, 2]), (-1, "?", [0, 0])]
    with pytest.raises(PermanentConversionError, match=r"'n' \(int\): need an int32") as caught:
        dataframe_to_mds(df, str(scratch / "bad"), null_policy="fill",
                         fill_values={"n": "x", "s": "?", "a": [0]})
    assert caught.value.code == "invalid_fill_value"


def test_overrides_are_validated_against_the_spark_type(spark, scratch) -> None:
    df = spark.sql(
        "select cast(5 as int) as n, date'2024-02-29' as day, array(1.5f, 2.5f) as v"
    )
    out = scratch / "over"
    result = dataframe_to_mds(
        df, str(out), columns={"n": "int64", "day": "str", "v": "ndarray:float32:2"}
    )
    assert result.columns == {"n": "int64", "day": "str", "v": "ndarray:float32:2"}
    sample = read_ours(out)[0]
    assert (sample["n"], sample["day"], sample["v"].tolist()) == (5, "2024-02-29", [1.5, 2.5])

    for columns, fragment in [
        ({"n": "int8"}, "'n' of type int cannot be written as 'int8'"),
        ({"day": "float32"}, "'day' of type date cannot be written as 'float32'"),
        ({"v": "ndarray:int32"}, "'v' of type array<float> cannot be written"),
        ({"n": "bogus"}, "unknown encoding"),
        ({"missing": None}, "unknown column"),
    ]:
        with pytest.raises(ColumnOverrideError, match=fragment):
            dataframe_to_mds(df, str(scratch / "bad"), columns=columns)
    assert not (scratch / "bad").exists() or files_under(scratch / "bad") == []


def test_static_shape_mismatch_fails_naming_the_column(spark, scratch) -> None:
    df = spark.sql("select array(1.5f, 2.5f, 3.5f) as v")
    with pytest.raises(ColumnOverrideError, match=r"'v'.*row 0"):
        dataframe_to_mds(df, str(scratch / "x"), columns={"v": "ndarray:float32:2"})
    assert files_under(scratch) == []


def test_json_columns_decode_to_the_same_objects(spark, scratch, reference) -> None:
    df = spark.sql("select named_struct('a', 1, 'b', array('x', 'y'), 'c', map('k', 2.5)) as j")
    out = scratch / "json"
    dataframe_to_mds(df, str(out))
    want = json.loads('{"a": 1, "b": ["x", "y"], "c": {"k": 2.5}}')
    assert read_ours(out)[0]["j"] == want
    assert read_reference(reference, local=out)[0]["j"] == want
