"""The generated decoder returns exactly what the format package's SampleDecoder returns."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from mdsloader.errors import EncodingError, ShardFormatError
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
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and a.flags.writeable == b.flags.writeable
            and np.array_equal(a, b, equal_nan=True)
        )
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
    [
        ({"v": "ndarray:int16"}, np.arange(5, dtype=np.int16)),
        ({"v": "ndarray:float32:2,3"}, np.ones((2, 3), np.float32)),
        ({"v": "ndarray:int16", "s": "str"}, np.arange(5, dtype=np.int16)),
    ],
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


# ---- the inline paths: typed dynamic-shape arrays, grouped scalars --------------------------


def _info(plan: ColumnPlan) -> object:
    return type("Info", (), {"column_names": plan.names, "column_encodings": plan.encodings,
                             "column_sizes": plan.sizes})()  # fmt: skip


def identical(a: object, b: object) -> bool:
    """``same``, and numpy scalars bit for bit (``-0.0 == 0.0`` and NaN payloads count)."""
    if isinstance(a, np.generic) and type(a) is type(b):
        return a.tobytes() == b.tobytes()
    return same(a, b)


def decode_both(columns: dict[str, str], record: bytes) -> tuple[object, object]:
    """What the generated decoder and SampleDecoder make of ``record``: a dict or an error."""
    info = _info(ColumnPlan.from_columns(columns))
    results = []
    for decode in (build_decoder(info), SampleDecoder(info).decode):
        try:
            results.append(decode(record))
        except Exception as exc:  # the error itself is what is compared
            results.append(exc)
    return results[0], results[1]


def assert_same_outcome(columns: dict[str, str], record: bytes) -> None:
    fast, slow = decode_both(columns, record)
    if isinstance(slow, Exception):
        assert type(fast) is type(slow) and str(fast) == str(slow), (record, fast, slow)
        return
    assert isinstance(fast, dict), (record, fast)
    assert list(fast) == list(slow)
    for key in slow:
        assert identical(fast[key], slow[key]), (key, fast[key], slow[key])


def _root(array: np.ndarray) -> object:
    while isinstance(array, np.ndarray):
        array = array.base
    return array


ARRAYS = [
    np.arange(1, dtype=np.float32),
    np.arange(255, dtype=np.int16),  # shape code 0 (uint8 dims)
    np.arange(256, dtype=np.float64),  # code 1
    np.arange(70_000, dtype=np.uint8),  # code 2
    np.arange(12, dtype=np.int32).reshape(3, 4),  # 2-D, code 0
    np.arange(600, dtype=np.float32).reshape(300, 2),  # 2-D, code 1
    np.arange(140_000, dtype=np.uint16).reshape(2, 70_000),  # 2-D, code 2
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),  # 3-D: the generic path
]


@pytest.mark.parametrize("value", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
@pytest.mark.parametrize("before", [None, "str"])
def test_typed_dynamic_shape_arrays_decode_in_place(value: np.ndarray, before: str | None):
    columns = {"v": f"ndarray:{value.dtype}"}
    if before:  # a variable-size column before it: the array starts at a dynamic position
        columns["a"] = before
    record = RecordEncoder(ColumnPlan.from_columns(columns)).encode({"v": value, "a": "xyz"})
    fast, slow = decode_both(columns, record)
    assert identical(fast["v"], slow["v"]) and np.array_equal(fast["v"], value)
    assert fast["v"].shape == value.shape and not fast["v"].flags.writeable
    if value.ndim <= 2:  # viewed in place, no copy
        assert _root(fast["v"]) is record
    else:  # the generic decoder views a copy of the column
        assert type(_root(fast["v"])) is bytes


@pytest.mark.parametrize("value", ARRAYS[:7], ids=lambda a: f"{a.dtype}{a.shape}")
def test_every_damaged_array_header_byte_gives_the_sample_decoders_outcome(value: np.ndarray):
    columns = {"s": "str", "v": f"ndarray:{value.dtype}"}
    record = RecordEncoder(ColumnPlan.from_columns(columns)).encode({"s": "ab", "v": value})
    start = 8 + 2  # two lengths, then "ab", then the array's header byte and dims
    dims_bytes = (1 << (record[start] & 3)) * value.ndim
    for at in range(start, start + 1 + dims_bytes):
        for byte in range(256):
            damaged = record[:at] + bytes([byte]) + record[at + 1 :]
            assert_same_outcome(columns, damaged)


@pytest.mark.parametrize("delta", [-5, -4, -1, 1, 3, 4])
def test_an_array_that_does_not_fill_its_column_gives_the_sample_decoders_outcome(delta: int):
    columns = {"s": "str", "v": "ndarray:float32"}
    record = RecordEncoder(ColumnPlan.from_columns(columns)).encode(
        {"s": "ab", "v": np.ones(10, np.float32)}
    )
    length = int.from_bytes(record[4:8], "little")
    damaged = record[:4] + (length + delta).to_bytes(4, "little") + record[8:]
    for tail in (b"", bytes(8)):  # as it is, and with spare bytes after the record
        assert_same_outcome(columns, damaged + tail)
    assert_same_outcome(columns, record + bytes(4))


GROUPED = {
    "a": "int8", "b": "uint64", "c": "str", "d": "float32", "e": "int", "f": "float64",
    "g": "bytes", "h": "int16", "i": "uint32",
}  # fmt: skip


def _grouped(k: int) -> dict:
    floats = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, 3.4e38, -1.5]
    return {
        "a": [-128, 127, 0, -1][k % 4], "b": [0, 2**64 - 1, 2**63, 7][k % 4], "c": "é" * k,
        "d": floats[k % 8], "e": [-(2**63), 2**63 - 1, 0, -7][k % 4], "f": floats[(k + 3) % 8],
        "g": bytes(k), "h": [-(2**15), 2**15 - 1, 0, 1][k % 4], "i": [0, 2**32 - 1, 5, 9][k % 4],
    }  # fmt: skip


@pytest.mark.parametrize("k", range(8))
def test_grouped_scalars_are_bit_identical(k: int):
    record = RecordEncoder(ColumnPlan.from_columns(GROUPED)).encode(_grouped(k))
    assert_same_outcome(GROUPED, record)
    fast, _ = decode_both(GROUPED, record)
    assert type(fast["e"]) is int and type(fast["d"]) is np.float32 and type(fast["b"]) is np.uint64


@pytest.mark.parametrize("bits", [0x7FC00001, 0xFFC12345, 0x7F800001, 0x80000000, 0x00000001])
def test_float_bit_patterns_survive_like_in_the_sample_decoder(bits: int):
    columns = {"x": "float32", "y": "str", "z": "float32"}  # one at a constant, one at p
    raw = bits.to_bytes(4, "little")  # a bytes value is stored verbatim
    record = RecordEncoder(ColumnPlan.from_columns(columns)).encode({"x": raw, "y": "", "z": raw})
    assert_same_outcome(columns, record)


@pytest.mark.parametrize(
    ("columns", "values"),
    [
        (GROUPED, _grouped(3)),
        (
            {"a": "int64", "b": "float64", "c": "ndarray:int8:3"},
            {"a": 1, "b": 2.0, "c": np.ones(3, np.int8)},
        ),
        ({"s": "str", "t": "bytes"}, {"s": "é", "t": b"x"}),
        (
            {"s": "str", "v": "ndarray:int32"},
            {"s": "é", "v": np.arange(6, dtype=np.int32).reshape(2, 3)},
        ),
    ],
)
def test_truncated_or_overlong_records_give_the_sample_decoders_outcome(columns, values):
    record = RecordEncoder(ColumnPlan.from_columns(columns)).encode(values)
    for cut in range(len(record)):
        assert_same_outcome(columns, record[:cut])
    assert_same_outcome(columns, record + b"\0")


def test_the_numpy_identity_trick_is_taken_for_every_struct_scalar():
    from mdsloader.fastdecode import _identity_zero

    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("NumPy 1.x promotes by value: the decoder uses the constructors")
    for name in ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                 "float32", "float64"):  # fmt: skip
        zero = _identity_zero(np.dtype(name).newbyteorder("<"))
        assert zero is not None and type(zero) is np.dtype(name).type, name


@pytest.mark.parametrize("raw", [b"\xff", b"ok\xc3", b"\xed\xa0\x80", "é".encode()])
def test_text_that_is_not_utf8_gives_the_sample_decoders_error(raw: bytes):
    columns = {"s": "str", "x": "int32"}
    record = RecordEncoder(ColumnPlan.from_columns(columns)).encode({"s": raw, "x": 1})
    assert_same_outcome(columns, record)
    _, slow = decode_both(columns, record)
    if raw != "é".encode():
        assert isinstance(slow, EncodingError) and "column 's'" in str(slow)
