"""Decoded sample values -> short, JSON-safe values for the dataset preview.

Numbers, booleans and short strings pass as they are. Everything large or not JSON (bytes, arrays,
images, long strings and JSON documents, non-finite floats) becomes a small object that names its
type and shape and shows only a head, so a preview of 100 samples stays a few hundred KB whatever
the dataset holds.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

import numpy as np

MAX_STR = 200  # characters of a string (or JSON document) shown in full
BYTES_HEAD = 16  # bytes shown (as hex) of a binary value
ARRAY_HEAD = 8  # elements shown of an array or list
UNSAFE_NOTE = "pickled value: not unpickled (unpickling can run code)"


def json_safe(value: Any, encoding: str) -> Any:
    """The preview form of one decoded value of a column encoded as ``encoding``."""
    if encoding == "pkl":  # handed over undecoded (see app.datasets), never unpickled
        return {"type": "pkl", "length": len(value), "note": UNSAFE_NOTE}
    if encoding == "json":
        return _json_document(value)
    return _value(value)


def _value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return _string(value) if isinstance(value, str) else value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _float(float(value))
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bytes(bytes(value))
    if isinstance(value, np.ndarray):
        return _array(value)
    if isinstance(value, (list, tuple)):
        return _list(list(value))
    if hasattr(value, "size") and hasattr(value, "mode"):  # a PIL image (lazily opened)
        width, height = value.size
        return {"type": "image", "format": value.format, "mode": value.mode,
                "size": [width, height]}
    return {"type": type(value).__name__, "text": _string(repr(value))}


def _float(value: float) -> float | str:
    # JSON has no NaN or infinity: say them as text.
    return value if math.isfinite(value) else str(value)


def _string(text: str) -> str | dict[str, Any]:
    if len(text) <= MAX_STR:
        return text
    return {"type": "str", "length": len(text), "head": text[:MAX_STR], "truncated": True}


def _bytes(data: bytes) -> dict[str, Any]:
    return {
        "type": "bytes",
        "length": len(data),
        "head": data[:BYTES_HEAD].hex(),
        "truncated": len(data) > BYTES_HEAD,
    }


def _array(array: np.ndarray) -> dict[str, Any]:
    flat = array.reshape(-1)[:ARRAY_HEAD]
    return {
        "type": "ndarray",
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "head": [_value(item) for item in flat.tolist()],
        "truncated": array.size > ARRAY_HEAD,
    }


def _list(items: list[Any]) -> dict[str, Any]:
    return {
        "type": "list",
        "length": len(items),
        "head": [_value(item) for item in items[:ARRAY_HEAD]],
        "truncated": len(items) > ARRAY_HEAD,
    }


def _json_document(value: Any) -> Any:
    text = json.dumps(value, default=str)  # NaN and Infinity (accepted by json.loads) pass
    if len(text) <= MAX_STR and "NaN" not in text and "Infinity" not in text:
        return value
    return {"type": "json", "length": len(text), "head": text[:MAX_STR],
            "truncated": len(text) > MAX_STR}
