"""mdsloader._batch_columns (C) against the pure-Python fallbacks in mdsloader.transfer."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pytest

from mdsloader import transfer
from tests.conftest import require
from tests.dataset.conftest import python_columns


def _variants() -> list[Any]:
    """Lists of sample dicts, and near misses of each rule columns_of checks."""
    key, other = "k", "".join(["k"])  # equal, not identical (built at run time)
    array, scalar = np.arange(3.0), np.int64(5)
    one = {"a": np.int64(1), "b": "x", key: array}
    return [
        [dict(one), dict(one)],
        [{"a": 1}, {"a": 2}, {"a": None}],
        [{"a": 1, "b": 2}, {"b": 2, "a": 1}],  # another key order
        [{key: 1}, {other: 2}],  # equal keys, other objects
        [{1: "x"}, {True: "y"}],
        [one, one],  # a dict twice
        [{"a": 1}],  # fewer than two
        ({"a": 1}, {"a": 2}),  # not a list
        [{"a": 1}, collections.OrderedDict(a=2)],  # a dict subclass
        [{}, {}],  # no keys
        [{"a": 1}, {"a": 1, "b": 2}],
        [{"a": scalar}, {"a": scalar}],  # a value twice: columns_of itself allows it
        [{"a": np.int64(1)}, {"a": np.int32(1)}],  # mixed types
        [{"a": 1}, {"a": 1.0}, {"a": "s"}],
    ]


@pytest.mark.parametrize("index", range(len(_variants())))
def test_columns_of_and_all_distinct_agree_with_python(index, monkeypatch):
    require(transfer._c_columns_of is not None, "the loader was installed without its C extensions")
    batch = _variants()[index]
    compiled = transfer.columns_of(batch)
    distinct = transfer.all_distinct(batch, *(compiled[1] if compiled else ()))
    python_columns(monkeypatch)
    python = transfer.columns_of(batch)
    assert compiled == python
    assert distinct == transfer.all_distinct(batch, *(python[1] if python else ()))
    if python is not None:
        keys, columns, _ = python
        rebuilt = transfer.dicts_of(keys, [list(column) for column in columns])
        monkeypatch.undo()
        assert transfer.dicts_of(keys, [list(column) for column in columns]) == rebuilt == batch
