"""MDSWriter and index parsing as the reference's users call them (issue 17): ``get_config()``,
refused keywords, the phrases of its errors, and a corrupt index as a ``JSONDecodeError``."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from mdsloader import MDSWriter
from mdsloader.errors import IndexDecodeError, IndexFormatError, InvalidArgumentError
from mdsloader.mds.index import parse_index

COLUMNS = {"id": "int64", "text": "str", "vec": "ndarray:float32:4"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"compression": "zstd:7", "hashes": ["sha1", "xxh64"], "size_limit": "1mb"},
        {"size_limit": None},
        {"compression": "gz", "size_limit": 32},
    ],
)
def test_get_config_equals_the_reference(tmp_path, reference, kwargs):
    ours = MDSWriter(columns=COLUMNS, out=str(tmp_path / "ours"), **kwargs)
    theirs = reference.MDSWriter(columns=COLUMNS, out=str(tmp_path / "ref"), **kwargs)
    try:
        assert ours.get_config() == theirs.get_config()
    finally:
        ours.abort()
        theirs.finish()


def test_get_config_is_the_config_of_every_shard(tmp_path):
    with MDSWriter(columns=COLUMNS, out=str(tmp_path), compression="zstd") as writer:
        writer.write({"id": 1, "text": "a", "vec": np.zeros(4, "float32")})
        config = writer.get_config()
    shard = json.loads((tmp_path / "index.json").read_text())["shards"][0]
    assert {key: shard[key] for key in config} == config


def test_an_unknown_keyword_is_a_value_error_and_a_type_error(tmp_path):
    out = tmp_path / "out"
    for kind in (ValueError, TypeError, InvalidArgumentError):
        with pytest.raises(kind, match=r"Invalid Writer argument\(s\): \['min_workers'\]"):
            MDSWriter(columns=COLUMNS, out=str(out), min_workers=1)
    assert not out.exists()  # refused before anything is created


def test_errors_keep_the_reference_phrases(tmp_path):
    with pytest.raises(ValueError, match="`size_limit` must be less than 2\\*\\*32"):
        MDSWriter(columns=COLUMNS, out=str(tmp_path / "a"), size_limit=2**32)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old").write_text("x")
    with pytest.raises(FileExistsError, match="Directory is not empty"):
        MDSWriter(columns=COLUMNS, out=str(tmp_path / "b"))


@pytest.mark.parametrize("data", [b"", b'{"shards": [', b"nope"])
def test_a_corrupt_index_is_a_json_decode_error(data):
    with pytest.raises(json.JSONDecodeError) as caught:
        parse_index(data, source="/x/index.json")
    error = caught.value
    assert isinstance(error, IndexDecodeError | IndexFormatError)
    assert "Index file at /x/index.json is empty or corrupted" in str(error)
    expected = _reference_error(data)
    assert (error.pos, error.lineno, error.colno) == (expected.pos, expected.lineno, expected.colno)
    again = pickle.loads(pickle.dumps(error))  # crosses DataLoader worker boundaries
    assert type(again) is IndexDecodeError and again.pos == error.pos


def _reference_error(data: bytes) -> json.JSONDecodeError:
    try:
        json.loads(data)
    except json.JSONDecodeError as exc:
        return exc
    raise AssertionError("the data was valid JSON")


def test_a_size_limit_string_and_unlimited_read_back(tmp_path):
    writer = MDSWriter(columns=COLUMNS, out=str(tmp_path / "a"), size_limit="64kb")
    assert writer.get_config()["size_limit"] == 64 * 1024
    writer.abort()
    writer = MDSWriter(columns=COLUMNS, out=str(tmp_path / "b"), size_limit=0)
    assert writer.get_config()["size_limit"] is None
    writer.abort()
    assert not os.listdir(tmp_path / "b")
