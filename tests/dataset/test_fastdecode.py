"""The generated decoder returns exactly what the format package's SampleDecoder returns."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from mdsloader.errors import ShardFormatError
from mdsloader.fastdecode import build_decoder, decoder_for
from mdsloader.mds.record import ColumnPlan, RecordEncoder, SampleDecoder

COLUMNS = {
    "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64", "i8": "int8",
    "i16": "int16", "i32": "int32", "i64": "int64", "f16": "float16", "f32": "float32",
    "f64": "float64", "int": "int", "s": "str", "b": "bytes", "si": "str_int",
    "sf": "str_float", "sd": "str_decimal", "j": "json", "nd": "ndarray",
    "nd_t": "ndarray:int16", "nd_ts": "ndarray:float32:2,3", "nd_s": "ndarray:uint8:4",
}  # fmt: skip


def sample(i: int) -> dict:
    rng = np.random.default_rng(i)
    return {
        "u8": 255 - i, "u16": 65535, "u32": 2**32 - 1 - i, "u64": 2**64 - 1, "i8": -128 + i,
        "i16": -i, "i32": 2**31 - 1, "i64": -(2**63) + i, "f16": float("nan") if i else 1.5,
        "f32": 0.1 * i, "f64": -1e300 * i, "int": 2**62 - i, "s": "é" * i, "b": bytes(i),
        "si": 10**20 + i, "sf": 1 / (i + 3), "sd": Decimal("1.10") * i, "j": {"a": [i, None]},
        "nd": rng.standard_normal((i + 1, 2)), "nd_t": np.arange(i + 1, dtype=np.int16),
        "nd_ts": rng.standard_normal((2, 3)).astype(np.float32),
        "nd_s": np.arange(i, i + 4, dtype=np.uint8),
    }  # fmt: skip


def same(a: object, b: object) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return (a.dtype == b.dtype and a.shape == b.shape and a.flags.writeable == b.flags.writeable
                and np.array_equal(a, b, equal_nan=True))
    if isinstance(a, np.floating) and np.isnan(a):
        return bool(np.isnan(b))
    return a == b


@pytest.mark.parametrize("i", [0, 1, 7])
def test_generated_decoder_matches_sample_decoder_for_every_encoding(i: int):
    plan = ColumnPlan.from_columns(COLUMNS)
    info = type("Info", (), {"column_names": plan.names, "column_encodings": plan.encodings,
                             "column_sizes": plan.sizes})()  # fmt: skip
    record = RecordEncoder(plan).encode(sample(i))
    fast, slow = build_decoder(info)(record), SampleDecoder(info).decode(record)
    assert list(fast) == list(slow)
    for key in slow:
        assert same(fast[key], slow[key]), key
    assert decoder_for(info) is decoder_for(info)


def test_truncated_record_raises_the_format_error():
    plan = ColumnPlan.from_columns({"s": "str", "x": "int64"})
    info = type("Info", (), {"column_names": plan.names, "column_encodings": plan.encodings,
                             "column_sizes": plan.sizes})()  # fmt: skip
    record = RecordEncoder(plan).encode({"s": "hello", "x": 3})
    with pytest.raises(ShardFormatError):
        build_decoder(info)(record[:-3])
    with pytest.raises(ShardFormatError):
        build_decoder(info)(record[:2])


@pytest.mark.parametrize(
    ("columns", "value"),
    [({"v": "ndarray:int16"}, np.arange(5, dtype=np.int16)),
     ({"v": "ndarray:float32:2,3"}, np.ones((2, 3), np.float32)),
     ({"v": "ndarray:int16", "s": "str"}, np.arange(5, dtype=np.int16))],
)
def test_damaged_typed_ndarray_raises_what_the_sample_decoder_raises(columns, value):
    plan = ColumnPlan.from_columns(columns)
    info = type("Info", (), {"column_names": plan.names, "column_encodings": plan.encodings,
                             "column_sizes": plan.sizes})()  # fmt: skip
    record = RecordEncoder(plan).encode({name: {"v": value, "s": "abc"}[name] for name in columns})
    for cut in range(1, len(record)):
        for damaged in (record[:-cut], record[:cut]):
            try:
                expected = SampleDecoder(info).decode(damaged)
            except Exception as exc:
                with pytest.raises(type(exc)):
                    build_decoder(info)(damaged)
            else:
                got = build_decoder(info)(damaged)
                assert all(same(got[key], expected[key]) for key in expected)
