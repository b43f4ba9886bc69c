"""Column encodings: round trips, exact bytes, validation errors, missing Pillow."""

from __future__ import annotations

import io
import pickle
import sys
from decimal import Decimal

import numpy as np
import pytest
from format_helpers import assert_same_value
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from mdsloader.errors import EncodingError, MissingExtraError, UnknownEncodingError
from mdsloader.mds.encodings import (
    NDARRAY_DTYPES,
    encoding_names,
    get_encoding,
    is_unsafe,
    validate_encoding,
)

SCALARS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64"]


def roundtrip(name: str, value: object) -> object:
    coder = get_encoding(name)
    data = coder.encode(value)
    if coder.size is not None:
        assert len(data) == coder.size
    return coder.decode(data)


def test_registry_has_every_reference_name():
    assert encoding_names() == {
        "bytes", "str", "int", "ndarray", *SCALARS, "str_int", "str_float", "str_decimal",
        "pil", "jpeg", "jpeg_array", "jpegarray", "png", "list[pil]", "list[jpeg]", "list[png]",
        "pkl", "json",
    }


@pytest.mark.parametrize("name", SCALARS)
def test_scalar_roundtrip_gives_numpy_scalar(name):
    out = roundtrip(name, 7)
    assert type(out) is np.dtype(name).type and out == 7
    assert get_encoding(name).size == np.dtype(name).itemsize


def test_simple_encodings_exact_bytes():
    assert get_encoding("int").encode(-1) == b"\xff" * 8
    assert get_encoding("int32").encode(258) == b"\x02\x01\x00\x00"
    assert get_encoding("float16").encode(1.5) == np.float16(1.5).tobytes()
    assert get_encoding("str").encode("é") == "é".encode()
    assert get_encoding("str_int").encode(-12) == b"-12"
    assert get_encoding("str_float").encode(0.1) == b"0.1"
    assert get_encoding("str_decimal").encode(Decimal("1.10")) == b"1.10"
    assert get_encoding("json").encode({"a": 0}) == b'{"a": 0}'
    assert get_encoding("json").encode(np.arange(2)) == b"[0, 1]"
    assert get_encoding("pkl").encode({"a": 1}) == pickle.dumps({"a": 1})


@pytest.mark.parametrize(
    ("name", "value"),
    [("int", 5), ("int", True), ("str", "héllo"), ("bytes", b"\x00\x01"), ("str_int", 10**30),
     ("str_float", 1e-300), ("str_decimal", Decimal("-3.140")), ("json", [1, {"x": None}]),
     ("pkl", {"set": {1, 2}})],
)
def test_variable_roundtrip(name, value):
    out = roundtrip(name, value)
    assert out == value and type(out) is type(value if name != "int" else 1)


def test_int_decodes_python_int_and_refuses_numpy_ints():
    assert type(roundtrip("int", 3)) is int
    with pytest.raises(EncodingError, match="'int'"):
        get_encoding("int").encode(np.int64(3))


def test_scalar_casts_like_numpy():
    assert roundtrip("int32", 3.7) == 3
    assert roundtrip("float32", 1e300) == np.inf  # overflow becomes inf, as in the reference
    assert roundtrip("float16", 0.1) == np.float16(0.1)
    assert roundtrip("uint64", (1 << 64) - 1) == np.uint64((1 << 64) - 1)


@pytest.mark.parametrize(
    ("name", "value"),
    [("str", 5), ("str", None), ("int", 1.5), ("int", "1"), ("int", 1 << 63), ("uint8", -1),
     ("uint8", 256), ("int32", None), ("int32", "x"), ("str_int", 1.0), ("str_int", True),
     ("str_float", 1), ("str_decimal", 1.5), ("json", {1, 2}), ("json", object()),
     ("ndarray", [1, 2]), ("pil", "img"), ("png", 3), ("jpeg", None), ("list[pil]", "x"),
     ("jpeg_array", [1, 2]), ("bytes", "text"), ("pkl", lambda: 0)],
)
def test_wrong_python_type_raises_encoding_error_naming_encoding(name, value):
    with pytest.raises(EncodingError, match=repr(name).replace("[", r"\[").replace("]", r"\]")):
        get_encoding(name).encode(value)


@pytest.mark.parametrize("name", ["int", "str", "int32", "ndarray:uint8:4", "json", "pkl", "png"])
def test_bytes_pass_through_any_encoding(name):
    assert get_encoding(name).encode(b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04"


@pytest.mark.parametrize(
    "name", ["foo", "int:3", "str:", "ndarray::3,4", "ndarray:bool", "ndarray:int32:0",
             "ndarray:int32:a", "ndarray:int32:3:4", "ndarray:int32:", "list[str]", "", "INT"],
)
def test_unknown_encodings(name):
    with pytest.raises(UnknownEncodingError):
        validate_encoding(name)
    with pytest.raises(UnknownEncodingError, match="column 'c'"):
        get_encoding(name, column="c")


def test_is_unsafe_only_pickle():
    assert is_unsafe("pkl")
    assert not any(is_unsafe(n) for n in encoding_names() - {"pkl"})


# --- ndarray ---------------------------------------------------------------------------------


def test_ndarray_documented_bytes():
    assert get_encoding("ndarray:int32").encode(np.arange(1, dtype=np.int32)) == bytes.fromhex(
        "040100000000"
    )
    dyn = get_encoding("ndarray").encode(np.zeros((2, 3), np.uint8))
    assert dyn == bytes([8, (2 << 2) | 0, 2, 3]) + bytes(6)
    wide = get_encoding("ndarray:uint8").encode(np.zeros(300, np.uint8))
    assert wide[:3] == bytes([(1 << 2) | 1]) + (300).to_bytes(2, "little")


def test_ndarray_static_size():
    assert get_encoding("ndarray:uint8:2,3").size == 6
    assert get_encoding("ndarray:float64:4").size == 32
    assert get_encoding("ndarray:int16").size is None
    assert get_encoding("ndarray").size is None
    assert get_encoding("ndarray:").size is None  # the reference accepts an empty parameter


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [("ndarray:int32", np.zeros(2, np.int64), "wrong dtype"),
     ("ndarray:int32:2", np.zeros(3, np.int32), "wrong shape"),
     ("ndarray", np.zeros(0, np.int32), "0 elements"),
     ("ndarray", np.array(5, np.int32), "0-d"),
     ("ndarray", np.zeros(2, bool), "unsupported dtype"),
     ("ndarray", np.zeros(2, np.complex64), "unsupported dtype")],
)
def test_ndarray_mismatches(name, value, match):
    with pytest.raises(EncodingError, match=match):
        get_encoding(name).encode(value)


def test_ndarray_big_endian_is_normalised():
    big = np.arange(3, dtype=">i4")
    assert get_encoding("ndarray:int32").encode(big) == get_encoding("ndarray:int32").encode(
        big.astype("<i4")
    )


def test_ndarray_fortran_order_stored_as_c_order():
    arr = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    np.testing.assert_array_equal(roundtrip("ndarray:int16", arr), arr)


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from(sorted(NDARRAY_DTYPES)),
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6),
    ),
    st.sampled_from(["dyn", "dtype", "static"]),
)
def test_ndarray_roundtrip_property(arr, form):
    name = {"dyn": "ndarray", "dtype": f"ndarray:{arr.dtype.name}",
            "static": f"ndarray:{arr.dtype.name}:{','.join(map(str, arr.shape))}"}[form]
    out = roundtrip(name, arr)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()
    assert not out.flags.writeable


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_str_roundtrip_property(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(EncodingError):
            get_encoding("str").encode(text)
        return
    assert roundtrip("str", text) == text


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1), st.sampled_from(SCALARS))
def test_int_property_matches_numpy(value, name):
    dtype = np.dtype(name)
    if dtype.kind in "iu" and not np.iinfo(dtype).min <= value <= np.iinfo(dtype).max:
        with pytest.raises(EncodingError):
            get_encoding(name).encode(value)
        return
    with np.errstate(over="ignore"):
        expected = dtype.type(value)
    assert get_encoding(name).encode(value) == expected.tobytes()
    assert roundtrip("int", value) == value
    assert roundtrip("str_int", value) == value


@settings(max_examples=60, deadline=None)
@given(st.floats(allow_nan=False), st.sampled_from(["float16", "float32", "float64"]))
def test_float_property_matches_numpy(value, name):
    with np.errstate(over="ignore"):
        expected = np.dtype(name).type(value)
    assert get_encoding(name).encode(value) == expected.tobytes()
    assert roundtrip("str_float", value) == value


@settings(max_examples=40, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids), max_leaves=8))
def test_json_property(value):
    assert roundtrip("json", value) == value


# --- images -----------------------------------------------------------------------------------


def image(mode: str = "RGB", size: tuple[int, int] = (5, 4)) -> Image.Image:
    data = bytes(i % 251 for i in range(size[0] * size[1] * len(mode)))
    return Image.frombytes(mode, size, data)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "I;16"])
def test_pil_roundtrip_and_layout(mode):
    img = image(mode)
    data = get_encoding("pil").encode(img)
    assert np.frombuffer(data[:12], "<u4").tolist() == [5, 4, len(mode)]
    assert_same_value(get_encoding("pil").decode(data), img)


@pytest.mark.parametrize("name", ["png", "list[png]", "list[pil]"])
def test_lossless_image_roundtrip(name):
    img = image()
    value = [img, image("L", (2, 2))] if name.startswith("list") else img
    out = get_encoding(name).decode(get_encoding(name).encode(value))
    if name.startswith("list"):
        assert [o.tobytes() for o in out] == [v.tobytes() for v in value]
    else:
        assert out.tobytes() == img.tobytes()


def test_image_list_layout():
    data = get_encoding("list[png]").encode([image(), image()])
    header = np.frombuffer(data[:16], "<u4").tolist()
    assert header[:2] == [0, 2] and sum(header[2:]) + 16 == len(data)


def test_jpeg_copies_the_original_file(tmp_path):
    path = tmp_path / "a.jpg"
    image().save(path, format="JPEG", quality=50)
    with Image.open(path) as img:
        assert get_encoding("jpeg").encode(img) == path.read_bytes()
    decoded = get_encoding("jpeg").decode(path.read_bytes())
    assert decoded.size == (5, 4) and decoded.format == "JPEG"


def test_jpeg_reencodes_in_memory_images():
    data = get_encoding("jpeg").encode(image())
    assert data[:2] == b"\xff\xd8"
    assert get_encoding("list[jpeg]").decode(get_encoding("list[jpeg]").encode([image()]))[0].size


def test_jpeg_array_layout_and_errors():
    out = io.BytesIO()
    image().save(out, format="JPEG")
    jpeg = out.getvalue()
    data = get_encoding("jpeg_array").encode([jpeg, jpeg])
    assert np.frombuffer(data[:12], "<u4").tolist() == [2, len(jpeg), len(jpeg)]
    assert [i.size for i in get_encoding("jpegarray").decode(data)] == [(5, 4), (5, 4)]
    with pytest.raises(EncodingError, match="no images"):
        get_encoding("jpeg_array").decode(get_encoding("jpeg_array").encode([]))
    with pytest.raises(EncodingError, match="truncated"):
        get_encoding("jpeg_array").decode(data[:-3])


@pytest.mark.parametrize("name", ["pil", "png", "jpeg", "list[pil]"])
def test_missing_pillow_names_the_images_extra(monkeypatch, name):
    for module in [m for m in sys.modules if m == "PIL" or m.startswith("PIL.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "PIL", None)
    coder = get_encoding(name)  # the index can still be read without Pillow
    with pytest.raises(MissingExtraError, match=r"mds-loader\[images\]"):
        coder.encode([object()] if name.startswith("list") else object())
    one_empty_element = np.array([0, 1, 0], "<u4").tobytes()
    with pytest.raises(MissingExtraError, match="images"):
        coder.decode(one_empty_element if name.startswith("list") else b"\x00" * 16)


@pytest.mark.parametrize(
    ("name", "data"),
    [("str", b"\xff"), ("int32", b"\x00\x00"), ("str_int", b"x"), ("json", b"{"),
     ("ndarray", bytes([99, 4, 1, 0])), ("str_decimal", b"1..0"), ("pkl", b"not a pickle")],
)
def test_undecodable_bytes_raise_encoding_error(name, data):
    with pytest.raises(EncodingError, match="decode"):
        get_encoding(name).decode(data)
