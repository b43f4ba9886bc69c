"""The Spark type -> MDS encoding table and override rules (pyspark types only, no session)."""

from __future__ import annotations

import pytest
from pyspark.sql import types as T

from worker.convert.schema import plan_columns
from worker.errors import ColumnOverrideError, UnsupportedTypeError


def one(dtype: T.DataType, override: str | None = None):
    schema = T.StructType([T.StructField("c", dtype)])
    return plan_columns(schema, None if override is None else {"c": override})[0]


@pytest.mark.parametrize(
    ("dtype", "encoding", "kind"),
    [
        (T.ByteType(), "int8", "scalar"), (T.ShortType(), "int16", "scalar"),
        (T.IntegerType(), "int32", "scalar"), (T.LongType(), "int64", "scalar"),
        (T.FloatType(), "float32", "scalar"), (T.DoubleType(), "float64", "scalar"),
        (T.DecimalType(38, 10), "str_decimal", "scalar"), (T.StringType(), "str", "scalar"),
        (T.VarcharType(5), "str", "scalar"), (T.CharType(3), "str", "scalar"),
        (T.BinaryType(), "bytes", "scalar"), (T.BooleanType(), "uint8", "scalar"),
        (T.DateType(), "int32", "scalar"), (T.TimestampType(), "int64", "scalar"),
        (T.TimestampNTZType(), "int64", "scalar"),
        (T.ArrayType(T.FloatType(), False), "ndarray:float32", "ndarray"),
        (T.ArrayType(T.ShortType(), True), "ndarray:int16", "ndarray"),
        (T.ArrayType(T.ArrayType(T.DoubleType())), "ndarray:float64", "ndarray2d"),
        (T.ArrayType(T.StringType()), "json", "json"),
        (T.ArrayType(T.BooleanType()), "json", "json"),
        (T.MapType(T.StringType(), T.LongType()), "json", "json"),
        (T.StructType([T.StructField("a", T.DateType())]), "json", "json"),
    ],
)
def test_inferred_encodings_follow_the_policy_table(dtype, encoding, kind) -> None:
    plan = one(dtype)
    assert (plan.encoding, plan.kind) == (encoding, kind)


def test_ml_vectors_become_float64_arrays() -> None:
    from pyspark.ml.linalg import VectorUDT

    plan = one(VectorUDT())
    assert (plan.encoding, plan.source) == ("ndarray:float64", "vector")


@pytest.mark.parametrize(
    "dtype",
    [T.NullType(), T.DayTimeIntervalType(), T.YearMonthIntervalType(), T.CalendarIntervalType(),
     T.ArrayType(T.NullType()), T.MapType(T.StringType(), T.DayTimeIntervalType())],
)
def test_unstorable_types_are_rejected_naming_column_and_type(dtype) -> None:
    with pytest.raises(UnsupportedTypeError, match=f"'c' has type {dtype.simpleString()}"):
        one(dtype)


@pytest.mark.parametrize(
    ("dtype", "override"),
    [
        (T.IntegerType(), "int64"), (T.ByteType(), "float32"), (T.BooleanType(), "int32"),
        (T.DateType(), "str"), (T.DateType(), "int64"), (T.DecimalType(5, 2), "str"),
        (T.BinaryType(), "jpeg"), (T.BinaryType(), "pkl"), (T.FloatType(), "float64"),
        (T.ArrayType(T.FloatType()), "ndarray:float32:8,8"),
        (T.ArrayType(T.IntegerType()), "ndarray:int64"), (T.ArrayType(T.IntegerType()), "json"),
        (T.ArrayType(T.ArrayType(T.IntegerType())), "ndarray:int32:2,3"),
    ],
)
def test_lossless_overrides_are_accepted(dtype, override) -> None:
    assert one(dtype, override).encoding == override


@pytest.mark.parametrize(
    ("dtype", "override"),
    [
        (T.LongType(), "int32"), (T.ByteType(), "uint8"), (T.IntegerType(), "float32"),
        (T.StringType(), "int64"), (T.DoubleType(), "float32"), (T.BinaryType(), "str"),
        (T.MapType(T.StringType(), T.StringType()), "str"), (T.TimestampType(), "int32"),
        (T.ArrayType(T.FloatType()), "ndarray:int32"), (T.ArrayType(T.FloatType()), "ndarray"),
        (T.ArrayType(T.ArrayType(T.IntegerType())), "ndarray:int32:6"), (T.IntegerType(), "x"),
    ],
)
def test_overrides_that_cannot_hold_the_type_are_refused(dtype, override) -> None:
    with pytest.raises(ColumnOverrideError, match="'c'"):
        one(dtype, override)


def test_selection_keeps_only_the_named_columns_and_refuses_unknown_ones() -> None:
    schema = T.StructType([T.StructField("a", T.LongType()), T.StructField("b", T.StringType())])
    assert [p.name for p in plan_columns(schema, {"b": None})] == ["b"]
    with pytest.raises(ColumnOverrideError, match="unknown column"):
        plan_columns(schema, {"z": None})
