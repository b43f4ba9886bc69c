"""Helpers for the MDS format tests: the golden-data module and value comparison."""

from __future__ import annotations

import importlib.util
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data"
GOLDEN = DATA / "golden"


def load_golden_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_value(ours: Any, theirs: Any, *, context: str = "") -> None:
    """Value-for-value and type-for-type equality, understanding numpy arrays and PIL images."""
    assert type(ours) is type(theirs), f"{context}: {type(ours)} != {type(theirs)}"
    if isinstance(ours, np.ndarray):
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, context
        np.testing.assert_array_equal(ours, theirs, err_msg=context)
    elif isinstance(ours, (np.generic, float)) and np.isnan(ours):
        assert np.isnan(theirs), context
    elif isinstance(ours, np.generic):
        assert ours.dtype == theirs.dtype and ours == theirs, context
    elif isinstance(ours, list):
        assert len(ours) == len(theirs), context
        for a, b in zip(ours, theirs):
            assert_same_value(a, b, context=context)
    elif hasattr(ours, "tobytes") and hasattr(ours, "mode"):  # PIL image
        assert (ours.mode, ours.size) == (theirs.mode, theirs.size), context
        assert ours.tobytes() == theirs.tobytes(), context
    else:
        assert ours == theirs, context


def assert_same_sample(ours: dict[str, Any], theirs: dict[str, Any], where: str = "") -> None:
    assert sorted(ours) == sorted(theirs), where
    for key in ours:
        assert_same_value(ours[key], theirs[key], context=f"{where} column {key}")


def expected_decoded(encoding: str, value: Any) -> Any:
    """What reading back ``value`` written under ``encoding`` gives (the reader's types)."""
    if encoding in {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                    "float16", "float32", "float64"}:
        return np.dtype(encoding).type(value)
    if encoding == "str_decimal":
        return Decimal(str(value))
    return value
