"""The columnar batch encoder produces exactly the per-sample bytes."""

from __future__ import annotations

import sys
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mdsloader.errors import EncodingError
from mdsloader.mds.columnar import encode_batch
from mdsloader.mds.record import ColumnPlan, RecordEncoder

N = 300
RNG = np.random.default_rng(5)


def per_sample(plan: ColumnPlan, rows: list[dict]) -> tuple[bytes, list[int]]:
    encoder = RecordEncoder(plan)
    records = [encoder.encode(row) for row in rows]
    return b"".join(records), [len(r) for r in records]


def assert_batch_matches(columns: dict[str, str], batch, rows: list[dict]) -> None:
    plan = ColumnPlan.from_columns(columns)
    data, sizes = per_sample(plan, rows)
    out = encode_batch(plan, batch)
    assert out.sizes.tolist() == sizes
    assert out.data.tobytes() == data


def rows_of(columns: dict[str, list]) -> list[dict]:
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*columns.values())]


SCALAR_TYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64"]


@pytest.mark.parametrize("encoding", SCALAR_TYPES)
@pytest.mark.parametrize("source", ["numpy", "arrow", "list"])
def test_scalars(encoding, source):
    dtype = np.dtype(encoding)
    if dtype.kind == "f":
        values = RNG.normal(0, 100, N).astype(dtype)
    else:
        info = np.iinfo(dtype)
        values = RNG.integers(info.min, info.max, N, dtype=dtype, endpoint=True)
    py = values.tolist()
    batch = {"numpy": values, "arrow": pa.array(values), "list": py}[source]
    assert_batch_matches({"v": encoding}, {"v": batch}, [{"v": v} for v in py])


def test_int_encoding_from_numpy_and_arrow():
    values = RNG.integers(-(1 << 62), 1 << 62, N)
    rows = [{"v": int(v)} for v in values]
    assert_batch_matches({"v": "int"}, {"v": values}, rows)
    assert_batch_matches({"v": "int"}, {"v": pa.array(values)}, rows)
    assert_batch_matches({"v": "int"}, {"v": values.astype(np.int8)}, [
        {"v": int(v)} for v in values.astype(np.int8)])


def test_casts_match_per_sample():
    floats = RNG.normal(0, 1000, N)
    assert_batch_matches({"v": "int32"}, {"v": floats}, [{"v": float(f)} for f in floats])
    small = RNG.integers(0, 100, N)
    assert_batch_matches({"v": "uint8"}, {"v": small}, [{"v": int(v)} for v in small])
    assert_batch_matches({"v": "float16"}, {"v": small}, [{"v": int(v)} for v in small])
    flags = RNG.random(N) > 0.5
    assert_batch_matches({"v": "int16"}, {"v": flags}, [{"v": bool(v)} for v in flags])


@pytest.mark.parametrize(
    ("encoding", "values"),
    [("uint8", np.array([1, 256])), ("int8", np.array([-129])), ("int32", np.array([np.nan])),
     ("int", np.array([1.5])), ("uint64", [-1])],
)
def test_out_of_range_values_raise(encoding, values):
    with pytest.raises(EncodingError, match="column 'v'"):
        encode_batch(ColumnPlan.from_columns({"v": encoding}), {"v": values})


def texts(n: int) -> list[str]:
    return ["é✓x" * int(k) for k in RNG.integers(0, 40, n)]


@pytest.mark.parametrize("kind", ["list", "numpy", "string", "large_string", "sliced"])
def test_strings(kind):
    values = texts(N + 20)
    batch = {
        "list": values[:N], "numpy": np.array(values[:N]), "string": pa.array(values[:N]),
        "large_string": pa.array(values[:N], pa.large_string()),
        "sliced": pa.array(values).slice(20, N),
    }[kind]
    expected = values[20:] if kind == "sliced" else values[:N]
    assert_batch_matches({"s": "str"}, {"s": batch}, [{"s": v} for v in expected])


@pytest.mark.parametrize("encoding", ["bytes", "str", "json", "pkl", "jpeg"])
def test_binary_passes_through_any_variable_encoding(encoding):
    blobs = [RNG.bytes(int(k)) for k in RNG.integers(0, 50, N)]
    rows = [{"b": b} for b in blobs]
    assert_batch_matches({"b": encoding}, {"b": pa.array(blobs, pa.binary())}, rows)
    assert_batch_matches({"b": encoding}, {"b": pa.array(blobs, pa.large_binary())}, rows)
    assert_batch_matches({"b": encoding}, {"b": blobs}, rows)


def test_binary_into_fixed_width_column_checks_the_width():
    blobs = [RNG.bytes(4) for _ in range(N)]
    assert_batch_matches({"b": "int32"}, {"b": pa.array(blobs)}, [{"b": b} for b in blobs])
    with pytest.raises(EncodingError, match="4 bytes"):
        encode_batch(ColumnPlan.from_columns({"b": "int32"}), {"b": pa.array([b"123"])})


@pytest.mark.parametrize("encoding", ["ndarray", "ndarray:float32", "ndarray:float32:3,4"])
def test_ndarray_from_3d_numpy(encoding):
    values = RNG.random((N, 3, 4), dtype=np.float32)
    assert_batch_matches({"a": encoding}, {"a": values}, [{"a": v} for v in values])


@pytest.mark.parametrize("encoding", ["ndarray", "ndarray:int64", "ndarray:int64:5"])
def test_ndarray_from_fixed_size_list(encoding):
    values = RNG.integers(-9, 9, (N, 5))
    arrow = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), 5)
    assert_batch_matches({"a": encoding}, {"a": arrow}, [{"a": v} for v in values])


@pytest.mark.parametrize("encoding", ["ndarray", "ndarray:uint16"])
@pytest.mark.parametrize("max_len", [5, 700])  # 700 mixes uint8 and uint16 shape codes
def test_ndarray_from_ragged_list_array(encoding, max_len):
    arrays = [RNG.integers(0, 1000, int(k)).astype(np.uint16) for k in
              RNG.integers(1, max_len, N)]
    arrow = pa.array([a.tolist() for a in arrays], pa.list_(pa.uint16()))
    rows = [{"a": a} for a in arrays]
    assert_batch_matches({"a": encoding}, {"a": arrow}, rows)
    assert_batch_matches({"a": encoding}, {"a": pa.array(
        [a.tolist() for a in arrays], pa.large_list(pa.uint16()))}, rows)
    assert_batch_matches({"a": encoding}, {"a": arrow.slice(7, 50)}, rows[7:57])


def test_ndarray_uniform_list_array_and_list_of_arrays():
    arrays = [RNG.random(4) for _ in range(N)]
    arrow = pa.array([a.tolist() for a in arrays], pa.list_(pa.float64()))
    assert_batch_matches({"a": "ndarray:float64:4"}, {"a": arrow}, [{"a": a} for a in arrays])
    assert_batch_matches({"a": "ndarray"}, {"a": arrays}, [{"a": a} for a in arrays])


@pytest.mark.parametrize(
    ("encoding", "values", "match"),
    [("ndarray:int32", pa.array([[1, 2]], pa.list_(pa.int64())), "wrong dtype"),
     ("ndarray:int64:3", pa.array([[1, 2], [1]], pa.list_(pa.int64())), "wrong shape"),
     ("ndarray:int64:3", np.zeros((2, 2), np.int64), "wrong shape"),
     ("ndarray", pa.array([[1, 2], []], pa.list_(pa.int64())), "0 elements"),
     ("ndarray", pa.array([[1], None], pa.list_(pa.int64())), "ndarray"),
     ("ndarray", np.zeros((2, 2), bool), "unsupported dtype")],
)
def test_ndarray_errors(encoding, values, match):
    with pytest.raises(EncodingError, match=match):
        encode_batch(ColumnPlan.from_columns({"a": encoding}), {"a": values})


def test_fallback_encodings_and_mixed_record_batch():
    n = 50
    columns = {"d": "str_decimal", "j": "json", "s": "str", "x": "int64", "v": "ndarray:int8",
               "f": "float64", "si": "str_int"}
    data = {
        "d": [Decimal(i) / 7 for i in range(n)], "j": [{"i": i} for i in range(n)],
        "s": texts(n), "x": list(range(n)), "v": [np.arange(i % 5 + 1, dtype=np.int8)
                                               for i in range(n)],
        "f": RNG.random(n).tolist(), "si": list(range(n)),
    }
    rows = rows_of(data)
    record_batch = pa.record_batch({
        "s": pa.array(data["s"]), "x": pa.array(data["x"]), "f": pa.array(data["f"]),
        "v": pa.array([v.tolist() for v in data["v"]], pa.list_(pa.int8())),
        "si": pa.array(data["si"]), "extra": pa.array(range(n)),
        "d": pa.array(data["d"]), "j": pa.array([str(i) for i in range(n)]),
    })
    plan = ColumnPlan.from_columns(columns)
    out = encode_batch(plan, record_batch)
    # Arrow gives every decimal of a column one scale, so its values are the reference here.
    arrow_decimals = record_batch.column("d").to_pylist()
    expected, _ = per_sample(
        plan, [{**r, "j": str(i), "d": arrow_decimals[i]} for i, r in enumerate(rows)])
    assert out.data.tobytes() == expected
    assert encode_batch(plan, pa.Table.from_batches([record_batch] * 2)).data.tobytes() == (
        expected * 2)
    assert_batch_matches(columns, data, rows)


def test_python_join_fallback_without_pyarrow(monkeypatch):
    values = texts(N)
    ints = RNG.integers(0, 9, N)
    expected_columns = {"s": "str", "x": "int64", "v": "ndarray"}
    arrays = [np.arange(k % 4 + 1, dtype=np.int32) for k in range(N)]
    rows = rows_of({"s": values, "x": ints.tolist(), "v": arrays})
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.compute", None)
    assert_batch_matches(expected_columns, {"s": values, "x": ints, "v": arrays}, rows)


def test_batch_errors():
    plan = ColumnPlan.from_columns({"a": "int64", "b": "str"})
    with pytest.raises(EncodingError, match="no column"):
        encode_batch(plan, {"a": [1]})
    with pytest.raises(EncodingError, match="different lengths"):
        encode_batch(plan, {"a": [1, 2], "b": ["x"]})
    with pytest.raises(EncodingError, match="column 'b'"):
        encode_batch(plan, {"a": [1], "b": pa.array([None], pa.string())})
    with pytest.raises(EncodingError, match="mapping"):
        encode_batch(plan, [1, 2])
    with pytest.raises(EncodingError, match="no column"):
        encode_batch(plan, pa.record_batch({"a": [1]}))
    assert len(encode_batch(plan, {"a": [], "b": []})) == 0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(-(1 << 31), (1 << 31) - 1),
            st.text(st.characters(exclude_categories=("Cs",)), max_size=20),
            st.binary(max_size=30),
            st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=300),
        ),
        max_size=30,
    )
)
def test_columnar_equals_per_sample_property(rows):
    columns = {"i": "int32", "s": "str", "b": "bytes", "v": "ndarray:float32", "w": "ndarray"}
    dict_rows = [{"i": i, "s": s, "b": b, "v": np.array(v, np.float32),
                  "w": np.array(v, np.float32)} for i, s, b, v in rows]
    batch = {
        "i": pa.array([r[0] for r in rows], pa.int32()),
        "s": pa.array([r[1] for r in rows], pa.string()),
        "b": pa.array([r[2] for r in rows], pa.binary()),
        "v": pa.array([r[3] for r in rows], pa.list_(pa.float32())),
        "w": pa.array([r[3] for r in rows], pa.list_(pa.float32())),
    }
    assert_batch_matches(columns, batch, dict_rows)


def test_plan_can_be_given_as_a_columns_mapping():
    by_plan = encode_batch(ColumnPlan.from_columns({"b": "str", "a": "int8"}), {
        "a": [1, 2], "b": ["x", "yz"]})
    by_mapping = encode_batch({"b": "str", "a": "int8"}, {"a": [1, 2], "b": ["x", "yz"]})
    assert by_plan.data.tobytes() == by_mapping.data.tobytes()
    assert by_plan.sizes.tolist() == by_mapping.sizes.tolist() == [6, 7]
