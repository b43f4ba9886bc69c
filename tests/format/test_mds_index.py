"""index.json: strict parsing, byte-identical dumping, merging."""

from __future__ import annotations

import copy
import json

import pytest

from mdsloader.errors import IndexFormatError, UnsupportedShardFormatError
from mdsloader.mds.index import (
    FileInfo,
    Index,
    ShardInfo,
    dump_index,
    merge_shards,
    parse_index,
    read_index,
)

DOC_INDEX = (
    '{"shards": [{"column_encodings": ["str", "int64"], "column_names": ["name", "x"], '
    '"column_sizes": [null, 8], "compression": null, "format": "mds", "hashes": [], '
    '"raw_data": {"basename": "shard.00000.mds", "bytes": 228, "hashes": {}}, "samples": 2, '
    '"size_limit": 67108864, "version": 2, "zip_data": null}], "version": 2}'
)


def shard_obj() -> dict:
    return copy.deepcopy(json.loads(DOC_INDEX)["shards"][0])


def index_bytes(*shards: dict, version: object = 2) -> bytes:
    return json.dumps({"shards": list(shards), "version": version}).encode()


def test_doc_example_roundtrips_byte_for_byte():
    index = parse_index(DOC_INDEX.encode(), source="doc")
    shard = index.shards[0]
    assert shard.column_names == ("name", "x") and shard.column_sizes == (None, 8)
    assert shard.raw_data == FileInfo("shard.00000.mds", 228, {})
    assert shard.file is shard.raw_data and index.num_samples == 2
    assert dump_index(index) == DOC_INDEX.encode()


def test_sort_keys_false_gives_the_merge_index_form():
    index = parse_index(DOC_INDEX.encode(), source="doc")
    text = dump_index(index, sort_keys=False).decode()
    assert text.startswith('{"version": 2, "shards": [{"column_encodings"')
    assert json.loads(text) == json.loads(DOC_INDEX)


def test_non_ascii_basenames_are_escaped_like_json_dump():
    shard = shard_obj()
    shard["raw_data"]["basename"] = "é/shard.00000.mds"
    index = parse_index(index_bytes(shard), source="x")
    assert dump_index(index) == json.dumps(json.loads(index_bytes(shard)), sort_keys=True).encode()


def test_zip_data_and_hashes_roundtrip():
    shard = shard_obj()
    shard.update(compression="zstd:7", hashes=["xxh64"])
    shard["zip_data"] = {"basename": "shard.00000.mds.zstd", "bytes": 99, "hashes": {"xxh64": "ab"}}
    index = parse_index(index_bytes(shard), source="x")
    assert index.shards[0].file.basename == "shard.00000.mds.zstd"
    assert json.loads(dump_index(index)) == json.loads(index_bytes(shard))
    assert ShardInfo.from_json(index.shards[0].to_json(), where="again") == index.shards[0]


@pytest.mark.parametrize(
    ("data", "match"),
    [(b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"[]", "JSON object"),
     (index_bytes(version=1), "version 1"), (index_bytes(version="2"), "version '2'"),
     (b'{"version": 2}', "'shards' must be a list"), (index_bytes(version=True), "version")],
)
def test_malformed_indexes(data, match):
    with pytest.raises(IndexFormatError, match=match):
        parse_index(data, source="idx.json")


def broken(key: str, value: object) -> dict:
    shard = shard_obj()
    if value is KeyError:
        del shard[key]
    else:
        shard[key] = value
    return shard


@pytest.mark.parametrize(
    ("shard", "match"),
    [(broken("samples", KeyError), r"missing key\(s\) \['samples'\]"),
     (broken("extra", 1), r"unexpected key\(s\) \['extra'\]"),
     (broken("samples", -1), "'samples'"), (broken("samples", "2"), "'samples'"),
     (broken("samples", True), "'samples'"), (broken("version", 3), "'version'"),
     (broken("column_names", ["a"]), "differ in length"),
     (broken("column_sizes", [None, "8"]), "'column_sizes'"),
     (broken("column_encodings", "str"), "'column_encodings'"),
     (broken("compression", 5), "'compression'"), (broken("hashes", [1]), "'hashes'"),
     (broken("size_limit", -5), "'size_limit'"), (broken("raw_data", None), "'raw_data'"),
     (broken("raw_data", {"basename": "a", "bytes": 1}), "'raw_data'"),
     (broken("raw_data", {"basename": "", "bytes": 1, "hashes": {}}), "basename"),
     (broken("raw_data", {"basename": "a", "bytes": 1, "hashes": {"x": 1}}), "hashes"),
     (broken("raw_data", {"basename": "a", "bytes": -1, "hashes": {}}), "raw_data.bytes"),
     (broken("zip_data", []), "'zip_data'"), (broken("format", "parquet"), "'parquet'"),
     ("not a dict", "JSON object")],
)
def test_malformed_shards_name_the_shard_and_key(shard, match):
    with pytest.raises(IndexFormatError, match=match) as info:
        parse_index(index_bytes(shard_obj(), shard), source="idx.json")
    assert "idx.json shard 1" in str(info.value)


@pytest.mark.parametrize("fmt", ["json", "csv", "tsv", "xsv"])
def test_other_shard_formats_are_unsupported(fmt):
    shard = shard_obj()
    shard["format"] = fmt
    with pytest.raises(UnsupportedShardFormatError, match=f"'{fmt}' is not supported"):
        parse_index(index_bytes(shard), source="x")


def test_empty_index_and_top_level_extras():
    assert parse_index(b'{"shards": [], "version": 2, "note": "hi"}', source="x") == Index(())
    assert dump_index(Index(())) == b'{"shards": [], "version": 2}'


def test_read_index_file_or_directory(tmp_path):
    (tmp_path / "index.json").write_text(DOC_INDEX)
    assert read_index(tmp_path) == read_index(tmp_path / "index.json")


def test_merge_shards_prefixes_basenames():
    one = parse_index(DOC_INDEX.encode(), source="a")
    shard = shard_obj()
    shard["zip_data"] = {"basename": "shard.00000.mds.gz", "bytes": 9, "hashes": {}}
    shard["compression"] = "gz"
    two = parse_index(index_bytes(shard, shard_obj()), source="b")
    merged = merge_shards([("0", one), ("17/", two)])
    assert [s.raw_data.basename for s in merged.shards] == [
        "0/shard.00000.mds", "17/shard.00000.mds", "17/shard.00000.mds"]
    assert merged.shards[1].zip_data.basename == "17/shard.00000.mds.gz"
    assert merged.shards[2].zip_data is None
    assert merge_shards([("", one)]) == one
