"""Regenerate tests/data/golden/ with the reference writer (mosaicml-streaming 0.13.0).

Run from the repository root:  .venv/bin/python tests/data/make_golden.py

Each dataset is small (a few KB) and deterministic: the samples come from ``samples(name)``
below, which the golden tests import too, so our writer can be compared with these bytes.
JPEG/PNG are left out on purpose: their bytes depend on the libjpeg/zlib build, not on us.
"""

from __future__ import annotations

import shutil
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

GOLDEN = Path(__file__).resolve().parent / "golden"

# A 1x1 grey JPEG, fixed here so jpeg_array samples do not depend on the local libjpeg.
TINY_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb00430050373c463c32504641465a55505f78c88278"
    "6e6e78f5afb991c8ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
    "ffffffc0000b080001000101011100ffc40014000100000000000000000000000000000004ffc40014100100"
    "000000000000000000000000000000ffda0008010100003f001bffd9"
)

# name -> (columns, writer keyword arguments)
DATASETS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    # The 228-byte example of mds-format.md 1.3.
    "doc_example": ({"x": "int64", "name": "str"}, {}),
    "all_scalars": (
        {
            "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
            "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
            "f16": "float16", "f32": "float32", "f64": "float64", "int": "int",
            "s": "str", "b": "bytes", "si": "str_int", "sf": "str_float", "sd": "str_decimal",
            "j": "json", "ja": "jpeg_array",
        },
        {"hashes": ["md5", "xxh64"], "size_limit": 1024},
    ),
    "ndarrays": (
        {
            "dyn": "ndarray", "dt": "ndarray:int16", "st": "ndarray:uint8:2,3",
            "wide": "ndarray:float64", "big": "ndarray:uint16",
        },
        {"compression": "zstd", "hashes": ["sha256", "xxh3_64"], "size_limit": 2048},
    ),
    "pil_bz2": ({"img": "pil", "label": "int32"}, {"compression": "bz2:1", "hashes": ["xxh32"]}),
}


def samples(name: str) -> list[dict[str, Any]]:
    """The samples of golden dataset ``name`` (deterministic)."""
    if name == "doc_example":
        return [{"x": 7, "name": "ab"}, {"x": -1, "name": ""}]
    if name == "all_scalars":
        return [_scalar_row(i) for i in range(12)]
    if name == "ndarrays":
        return [_ndarray_row(i) for i in range(10)]
    if name == "pil_bz2":
        return [_pil_row(i) for i in range(3)]
    raise KeyError(name)


def _scalar_row(i: int) -> dict[str, Any]:
    return {
        "i8": -i, "i16": -300 * i, "i32": 70000 * i, "i64": -(1 << 40) * i,
        "u8": 250 - i, "u16": 60000 + i, "u32": 4_000_000_000 + i, "u64": (1 << 63) + i,
        "f16": 0.5 * i, "f32": 1.25 / (i + 1), "f64": -1e300 / (i + 1), "int": -(i**9),
        "s": "héllo ✓" * (i % 4), "b": bytes(range(i * 3)), "si": 10**20 * i - 3,
        "sf": 1.0 / (i + 3), "sd": Decimal("1.10") * i, "j": {"k": [i, None, "v"], "ü": i % 2 == 0},
        "ja": [TINY_JPEG] * (1 + i % 2),
    }


def _ndarray_row(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    dyn_dtype = ["int8", "float32", "uint64"][i % 3]
    return {
        "dyn": rng.integers(-5, 5, size=(1 + i % 3, 2)).astype(dyn_dtype),
        "dt": np.arange(i + 1, dtype=np.int16),
        "st": rng.integers(0, 255, size=(2, 3)).astype(np.uint8),
        "wide": rng.random(3),
        "big": np.zeros(300 + i, np.uint16),  # a dim >= 256 needs the uint16 shape code
    }


def _pil_row(i: int) -> dict[str, Any]:
    from PIL import Image

    modes = ["RGB", "L", "RGBA"]
    size = (3 + i, 2)
    data = bytes((7 * i + k) % 256 for k in range(size[0] * size[1] * len(modes[i])))
    return {"img": Image.frombytes(modes[i], size, data), "label": i}


def main() -> None:
    from streaming import MDSWriter

    for name, (columns, kwargs) in DATASETS.items():
        out = GOLDEN / name
        shutil.rmtree(out, ignore_errors=True)
        with MDSWriter(columns=columns, out=str(out), **kwargs) as writer:
            for sample in samples(name):
                writer.write(sample)
        print(name, sorted(p.name for p in out.iterdir()), file=sys.stderr)


if __name__ == "__main__":
    main()
