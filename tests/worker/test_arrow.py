"""Executor-side Arrow conversion: pure pyarrow/numpy, checked against the loader's encodings."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pyarrow as pa
import pytest

from mdsloader.mds.encodings import get_encoding
from worker.convert.arrow import convert_batch, convert_column
from worker.convert.schema import ColumnPlan
from worker.errors import ColumnOverrideError, UnsupportedTypeError


def plan(kind: str, arrow_type: str, encoding: str, shape=None) -> ColumnPlan:
    return ColumnPlan(
        name="c", spark_type="t", encoding=encoding, kind=kind, arrow_type=arrow_type, shape=shape
    )


def test_scalars_become_mds_compatible_arrow_types() -> None:
    utc = dt.UTC
    cases = [
        (pa.array([True, False]), plan("scalar", "uint8", "uint8"), [1, 0]),
        (pa.array([dt.date(1970, 1, 2), dt.date(1969, 12, 31)]), plan("scalar", "int32", "int32"),
         [1, -1]),
        (pa.array([dt.date(2024, 2, 29)]), plan("scalar", "string", "str"), ["2024-02-29"]),
        (pa.array([dt.datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=utc)], pa.timestamp("us", "UTC")),
         plan("scalar", "int64", "int64"), [1_000_005]),
        (pa.array([dt.datetime(1969, 12, 31, 23, 59, 59)], pa.timestamp("us")),
         plan("scalar", "int64", "int64"), [-1_000_000]),
        (pa.array([decimal.Decimal("1.10"), decimal.Decimal("-0.05")], pa.decimal128(10, 2)),
         plan("scalar", "binary", "str_decimal"), [b"1.10", b"-0.05"]),
        (pa.array([-5, 7], pa.int8()), plan("scalar", "int64", "int64"), [-5, 7]),
        (pa.array(["x"], pa.large_string()), plan("scalar", "string", "str"), ["x"]),
    ]
    for array, column_plan, expected in cases:
        out = convert_column(array, column_plan)
        assert out.type == pa.type_for_alias(column_plan.arrow_type)
        assert out.to_pylist() == expected


def test_one_dimensional_arrays_keep_their_values_and_honour_slices() -> None:
    array = pa.array([[9.0], [1.0, 2.0], [3.0]], pa.list_(pa.float32())).slice(1)
    out = convert_column(array, plan("ndarray", "float64", "ndarray:float64"))
    assert out.type == pa.list_(pa.float64())
    assert out.to_pylist() == [[1.0, 2.0], [3.0]]


def test_static_shape_is_checked_per_row() -> None:
    array = pa.array([[1, 2], [3, 4]], pa.list_(pa.int32()))
    out = convert_column(array, plan("ndarray", "int32", "ndarray:int32:2", (2,)))
    assert out.type == pa.list_(pa.int32(), 2)
    bad = pa.array([[1, 2], [3]], pa.list_(pa.int32()))
    with pytest.raises(ColumnOverrideError, match=r"'c'.*row 1"):
        convert_column(bad, plan("ndarray", "int32", "ndarray:int32:2", (2,)))


def test_empty_arrays_are_refused_naming_the_column() -> None:
    with pytest.raises(UnsupportedTypeError, match=r"'c'.*row 0"):
        empty = pa.array([[]], pa.list_(pa.int64()))
        convert_column(empty, plan("ndarray", "int64", "ndarray:int64"))


def test_nested_arrays_encode_exactly_like_the_loader_ndarray_encoding() -> None:
    rows = [[[1, 2, 3], [4, 5, 6]], [[7]], [[300] * 300] * 2]
    array = pa.array([[[0]], *rows], pa.list_(pa.list_(pa.int16()))).slice(1)
    out = convert_column(array, plan("ndarray2d", "int16", "ndarray:int16"))
    encoding = get_encoding("ndarray:int16")
    assert out.to_pylist() == [encoding.encode(np.array(r, np.int16)) for r in rows]
    decoded = encoding.decode(out[2].as_py())
    assert decoded.shape == (2, 300)


def test_ragged_nested_arrays_are_refused_naming_row_and_column() -> None:
    array = pa.array([[[1, 2]], [[1, 2], [3]]], pa.list_(pa.list_(pa.int32())))
    with pytest.raises(UnsupportedTypeError, match=r"'c'.*row 1.*different lengths"):
        convert_column(array, plan("ndarray2d", "int32", "ndarray:int32"))


def test_nested_arrays_with_a_static_shape_become_fixed_size_lists() -> None:
    array = pa.array([[[1, 2], [3, 4]]], pa.list_(pa.list_(pa.int32())))
    out = convert_column(array, plan("ndarray2d", "int32", "ndarray:int32:2,2", (2, 2)))
    assert out.to_pylist() == [[1, 2, 3, 4]]


def test_convert_batch_keeps_plan_order() -> None:
    batch = pa.RecordBatch.from_pydict({"b": [1], "a": ["x"]})
    plans = [
        ColumnPlan(name="a", spark_type="s", encoding="str", kind="scalar", arrow_type="string"),
        ColumnPlan(name="b", spark_type="l", encoding="int64", kind="scalar", arrow_type="int64"),
    ]
    assert convert_batch(batch, plans).schema.names == ["a", "b"]
