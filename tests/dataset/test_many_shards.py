"""Index handling at many shards: the catalog, the cache and the index parser keep per-shard data
in arrays and build per-shard objects only when asked, while staying as strict as before."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mdsloader.errors import HashError, IndexFormatError
from mdsloader.mds.index import ShardInfo, ShardTable, parse_index, parse_shard_table
from mdsloader.mds.writer import MDSWriter
from mdsloader.stream import Stream

SHARDS = 3000


def linked_dataset(root: Path, shards: int, *, per_shard: int = 10) -> Path:
    """``shards`` hard links of one written shard, each listed under its own name."""
    template = root / "template"
    with MDSWriter(columns={"id": "int64"}, out=str(template), hashes=["xxh64"]) as writer:
        writer.write_batch({"id": np.arange(per_shard, dtype=np.int64)})
    entry = json.loads((template / "index.json").read_bytes())["shards"][0]
    out = root / "data"
    out.mkdir()
    entries = []
    for number in range(shards):
        name = f"shard.{number:05}.mds"
        os.link(template / entry["raw_data"]["basename"], out / name)
        entries.append({**entry, "raw_data": {**entry["raw_data"], "basename": name}})
    (out / "index.json").write_text(json.dumps({"shards": entries, "version": 2}, sort_keys=True))
    return out


def test_construction_builds_no_per_shard_objects(tmp_path: Path):
    from mdsloader.dataset import StreamingDataset

    data = linked_dataset(tmp_path, SHARDS)
    ds = StreamingDataset(local=str(data), shuffle=True, batch_size=4)
    table = ds._catalog.shards
    assert isinstance(table, ShardTable) and table is ds.shards and len(table) == SHARDS
    for array in (table.samples, table.raw_bytes, table.zip_bytes, table.layout_of):
        assert isinstance(array, np.ndarray) and array.shape == (SHARDS,)
    assert len(table.layouts) == 1
    # Neither the table nor the cache holds a per-shard list of entries or paths.
    for holder in (table, ds.cache):
        for value in vars(holder).values():
            if isinstance(value, list) and len(value) == SHARDS:
                assert not any(isinstance(v, ShardInfo | Path) for v in value[:10])
    assert ds.cache.raw_path(SHARDS - 1) == data / f"shard.{SHARDS - 1:05}.mds"
    # Entries are still there on demand, equal to the strict parser's.
    strict = parse_index((data / "index.json").read_bytes(), source="x")
    assert ds.shards[7] == strict.shards[7] and ds.shards[-1] == strict.shards[-1]
    assert ds.shards == strict.shards and list(ds.shards[2:4]) == list(strict.shards[2:4])
    assert ds.num_shards == SHARDS and ds.size == 10 * SHARDS
    assert ds[10 * SHARDS - 1]["id"] == 9


def shard(number: int, *, zipped: bool = False, columns: int = 1) -> dict:
    names = ["a", "b"][:columns]
    raw = {"basename": f"shard.{number:05}.mds", "bytes": 100 + number, "hashes": {"xxh64": "ab"}}
    return {
        "column_encodings": ["int64"] * columns, "column_names": names,
        "column_sizes": [8] * columns, "compression": "zstd" if zipped else None,
        "format": "mds", "hashes": ["xxh64"], "raw_data": raw, "samples": number % 7,
        "size_limit": 1 << 20, "version": 2,
        "zip_data": {**raw, "basename": raw["basename"] + ".zstd", "bytes": 50}
        if zipped else None,
    }  # fmt: skip


def encode(shards: list[dict]) -> bytes:
    return json.dumps({"shards": shards, "version": 2}).encode()


def strict(data: bytes) -> list:
    """The per-shard parser's entries (what the bulk path must agree with)."""
    return [ShardInfo.from_json(s, where="x") for s in json.loads(data)["shards"]]


def test_bulk_table_equals_the_strict_parse_across_layout_changes():
    shards = [shard(i, zipped=i % 3 == 0, columns=1 + (i // 5) % 2) for i in range(40)]
    data = encode(shards)
    table = parse_shard_table(data, source="x")
    assert list(table) == strict(data)
    assert len(table.layouts) == 4  # (1 or 2 columns) x (zipped or not)
    assert table.has_zip.tolist() == [i % 3 == 0 for i in range(40)]
    assert table.zip_bytes.tolist() == [50 if i % 3 == 0 else 0 for i in range(40)]
    merged = ShardTable.concat([table, parse_shard_table(encode(shards[:5]), source="y")])
    assert list(merged) == strict(data) + strict(encode(shards[:5]))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.update(samples=-1), "shard 30: key 'samples'"),
        (lambda s: s.update(column_sizes=[8.0]), "shard 30: key 'column_sizes'"),  # 8.0 == 8
        (lambda s: s.update(column_sizes=[True]), "shard 30: key 'column_sizes'"),
        (lambda s: s.update(column_names="a"), "shard 30: key 'column_names'"),
        (lambda s: s["raw_data"].update(bytes="9"), "shard 30: key 'raw_data.bytes'"),
        (lambda s: s["raw_data"]["hashes"].update(xxh64=1), "shard 30: key 'raw_data'"),
        (lambda s: s.update(extra=1), "shard 30: unexpected key"),
    ],
)
def test_a_bad_shard_deep_in_a_uniform_index_is_named(change, match):
    shards = [shard(i) for i in range(60)]
    change(shards[30])
    with pytest.raises(IndexFormatError, match=match):
        parse_shard_table(encode(shards), source="x")
    with pytest.raises(IndexFormatError, match=match):
        parse_index(encode(shards), source="x")


def test_validate_hash_names_the_first_shard_without_the_digest(tmp_path: Path):
    from mdsloader.cache import ShardCache
    from mdsloader.catalog import load_catalog

    shards = [shard(i) for i in range(20)]
    for entry in shards[12:]:
        entry["hashes"], entry["raw_data"]["hashes"] = [], {}
    (tmp_path / "index.json").write_bytes(encode(shards))
    stream = Stream(local=str(tmp_path), validate_hash="xxh64")
    stream.apply_default({})
    catalog = load_catalog([stream], allow_unsafe_types=False)
    with pytest.raises(HashError, match=r"'shard\.00012\.mds' only records hashes \[\]"):
        ShardCache([stream], catalog.shards, catalog.stream_of_shard)
    # A plain list of entries is still accepted.
    cache = ShardCache([stream], list(catalog.shards)[:12], catalog.stream_of_shard[:12])
    assert cache.shard_bytes(11) == 111
