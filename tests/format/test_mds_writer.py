"""MDSWriter: rollover, settings, the columnar path, failures and the commit marker."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdsloader.errors import (
    CompressionError,
    EncodingError,
    HashError,
    MissingExtraError,
    StorageError,
    TargetExistsError,
    UnknownEncodingError,
)
from mdsloader.mds import MDSWriter, open_local_dataset, read_index

COLUMNS = {"id": "int64", "text": "str", "vec": "ndarray:float32"}


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"id": i, "text": "t" * int(rng.integers(0, 60)), "vec": rng.random(3, dtype=np.float32)}
        for i in range(n)
    ]


def write(path, samples, **kwargs) -> list[int]:
    with MDSWriter(columns=kwargs.pop("columns", COLUMNS), out=str(path), **kwargs) as writer:
        for sample in samples:
            writer.write(sample)
    return [shard.samples for shard in read_index(path).shards]


def files(path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}


def test_rollover_keeps_every_shard_within_the_limit(tmp_path):
    counts = write(tmp_path, rows(200), size_limit=1000)
    index = read_index(tmp_path)
    assert sum(counts) == 200 and len(counts) > 5 and 0 not in counts
    assert all(shard.raw_data.bytes <= 1000 for shard in index.shards)
    assert [s.raw_data.basename for s in index.shards] == [
        f"shard.{i:05}.mds" for i in range(len(counts))]
    assert sorted(os.listdir(tmp_path)) == sorted(["index.json", *(
        s.raw_data.basename for s in index.shards)])


def test_rollover_boundary_is_inclusive(tmp_path):
    # Find the exact size of a 3-sample shard, then use it as the limit: 3 samples must fit.
    # (The limit is part of the embedded config, so the probe uses one of the same width.)
    samples = rows(6)
    write(tmp_path / "probe", samples[:3], size_limit=999)
    exact = read_index(tmp_path / "probe").shards[0].raw_data.bytes
    assert write(tmp_path / "eq", samples, size_limit=exact)[0] == 3
    assert write(tmp_path / "less", samples, size_limit=exact - 1)[0] == 2


def test_oversized_sample_gets_its_own_shard_and_no_empty_shard(tmp_path):
    samples = rows(4)
    samples[0]["text"] = samples[2]["text"] = "x" * 5000
    assert write(tmp_path, samples, size_limit=1000) == [1, 1, 1, 1]
    only_big = [dict(samples[0])]
    assert write(tmp_path / "one", only_big, size_limit=100) == [1]


def test_unlimited_size_gives_one_shard(tmp_path):
    for limit in (None, 0):
        assert write(tmp_path / str(limit), rows(300), size_limit=limit) == [300]
        assert read_index(tmp_path / str(limit)).shards[0].size_limit is None


def test_size_limit_strings_are_stored_in_bytes(tmp_path):
    write(tmp_path, rows(3), size_limit="1kb")
    assert read_index(tmp_path).shards[0].size_limit == 1024


def test_empty_writer_writes_an_empty_index(tmp_path):
    with MDSWriter(columns=COLUMNS, out=str(tmp_path)) as writer:
        pass
    assert (tmp_path / "index.json").read_bytes() == b'{"shards": [], "version": 2}'
    assert writer.finish().shards == ()


def test_compressed_output_holds_only_compressed_files(tmp_path):
    write(tmp_path, rows(50), compression="zstd:7", hashes=["md5", "xxh64"], size_limit=1000)
    index = read_index(tmp_path)
    assert all(os.path.exists(tmp_path / s.zip_data.basename) for s in index.shards)
    assert not any(name.endswith(".mds") for name in os.listdir(tmp_path))
    shard = index.shards[0]
    assert shard.compression == "zstd:7" and shard.zip_data.basename.endswith(".mds.zstd")
    assert set(shard.raw_data.hashes) == set(shard.zip_data.hashes) == {"md5", "xxh64"}


@pytest.mark.parametrize("limit", [None, 700, 5000])
@pytest.mark.parametrize("batch", [1, 7, 64, 500])
def test_write_batch_equals_write(tmp_path, limit, batch):
    samples = rows(300, seed=batch)
    write(tmp_path / "rows", samples, size_limit=limit, compression="zstd", hashes=["xxh64"])
    with MDSWriter(columns=COLUMNS, out=str(tmp_path / "cols"), size_limit=limit,
                   compression="zstd", hashes=["xxh64"]) as writer:
        for start in range(0, len(samples), batch):
            chunk = samples[start : start + batch]
            writer.write_batch({"id": np.array([s["id"] for s in chunk]),
                                "text": [s["text"] for s in chunk],
                                "vec": np.stack([s["vec"] for s in chunk])})
    assert files(tmp_path / "rows") == files(tmp_path / "cols")


def test_mixed_write_and_write_batch_keep_order(tmp_path):
    samples = rows(120)
    write(tmp_path / "rows", samples, size_limit=900)
    with MDSWriter(columns=COLUMNS, out=str(tmp_path / "mixed"), size_limit=900) as writer:
        for start in range(0, 120, 30):
            for sample in samples[start : start + 10]:
                writer.write(sample)
            chunk = samples[start + 10 : start + 30]
            writer.write_batch({key: [s[key] for s in chunk] for key in COLUMNS})
    assert files(tmp_path / "rows") == files(tmp_path / "mixed")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.tuples(st.integers(-(1 << 40), 1 << 40), st.binary(max_size=400)), max_size=60),
    st.sampled_from([None, 300, 1000]),
    st.integers(1, 25),
)
def test_writer_reader_roundtrip_property(tmp_path_factory, items, limit, batch):
    root = tmp_path_factory.mktemp("prop")
    columns = {"n": "int", "blob": "bytes"}
    samples = [{"n": n, "blob": blob} for n, blob in items]
    write(root / "rows", samples, columns=columns, size_limit=limit)
    with MDSWriter(columns=columns, out=str(root / "cols"), size_limit=limit) as writer:
        for start in range(0, len(samples), batch):
            chunk = samples[start : start + batch]
            writer.write_batch({"n": [s["n"] for s in chunk], "blob": [s["blob"] for s in chunk]})
    assert files(root / "rows") == files(root / "cols")
    with open_local_dataset(root / "rows") as dataset:
        assert list(dataset) == samples


def test_exist_ok(tmp_path):
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(TargetExistsError, match="not empty"):
        MDSWriter(columns=COLUMNS, out=str(tmp_path))
    write(tmp_path, rows(2), exist_ok=True)
    assert not (tmp_path / "old.txt").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [({"compression": "zstd:99"}, CompressionError, "zstd"),
     ({"hashes": ["sha1", "md5"]}, HashError, "sorted"),
     ({"hashes": ["nope"]}, HashError, "unknown"),
     ({"size_limit": 1 << 32}, ValueError, "2\\*\\*32"),
     ({"size_limit": "lots"}, ValueError, "size_limit"),
     ({"columns": {"a": "nope"}}, UnknownEncodingError, "column 'a'"),
     ({"columns": {}}, EncodingError, "non-empty"),
     ({"unknown_kwarg": 1}, TypeError, "unknown_kwarg")],
)
def test_invalid_settings(tmp_path, kwargs, error, match):
    kwargs = {"columns": COLUMNS, **kwargs}
    with pytest.raises(error, match=match):
        MDSWriter(out=str(tmp_path), **kwargs)


def test_bad_samples_name_the_column(tmp_path):
    with MDSWriter(columns=COLUMNS, out=str(tmp_path)) as writer:
        with pytest.raises(EncodingError, match="column 'id'"):
            writer.write({"id": "x", "text": "", "vec": np.zeros(1, np.float32)})
        with pytest.raises(EncodingError, match="no value for column 'vec'"):
            writer.write({"id": 1, "text": ""})
        with pytest.raises(EncodingError, match=r"column 'id'.*8 bytes"):
            writer.write({"id": b"123", "text": "", "vec": np.zeros(1, np.float32)})
        with pytest.raises(EncodingError, match=r"column 'vec'.*wrong dtype"):
            writer.write({"id": 1, "text": "", "vec": np.zeros(1, np.float64)})
        writer.write({"id": 1, "text": "ok", "vec": np.zeros(1, np.float32), "extra": object()})
    assert read_index(tmp_path).num_samples == 1


def test_exception_in_context_does_not_publish_the_index(tmp_path):
    with pytest.raises(RuntimeError, match="boom"), MDSWriter(
        columns=COLUMNS, out=str(tmp_path), size_limit=500
    ) as writer:
        for sample in rows(50):
            writer.write(sample)
        raise RuntimeError("boom")
    assert not (tmp_path / "index.json").exists()
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(rows(1)[0])


def test_finish_is_idempotent_and_closes(tmp_path):
    writer = MDSWriter(columns=COLUMNS, out=str(tmp_path))
    writer.write(rows(1)[0])
    first = writer.finish()
    assert writer.finish() is first and first.num_samples == 1
    assert writer.columns == {"id": "int64", "text": "str", "vec": "ndarray:float32"}
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(rows(1)[0])


def test_local_remote_pair_uploads_and_removes_local(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    with MDSWriter(columns=COLUMNS, out=(str(local), str(remote)), size_limit=800,
                   compression="gz", hashes=["sha256"]) as writer:
        for sample in rows(40):
            writer.write(sample)
    assert not local.exists()
    index = read_index(remote)
    assert sorted(os.listdir(remote)) == sorted(
        ["index.json", *(s.zip_data.basename for s in index.shards)])
    with open_local_dataset(remote, validate_hash="sha256") as dataset:
        assert [s["id"] for s in dataset] == list(range(40))


def test_keep_local_keeps_both_copies(tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    with MDSWriter(columns=COLUMNS, out=(str(local), str(remote)), keep_local=True) as writer:
        writer.write(rows(1)[0])
    assert files(local) == files(remote)


def test_failed_upload_fails_the_next_call_and_publishes_nothing(tmp_path):
    remote = tmp_path / "remote"
    remote.write_text("a file where the remote directory should be")
    writer = MDSWriter(columns=COLUMNS, out=(str(tmp_path / "local"), str(remote)),
                       size_limit=300, retry=1, max_workers=1)
    with pytest.raises(StorageError):
        for sample in rows(200):
            writer.write(sample)
        writer.finish()
    assert remote.read_text().startswith("a file")
    assert not (tmp_path / "local" / "index.json").exists()
    with pytest.raises(StorageError):
        writer.finish()


def test_index_is_written_last(tmp_path, monkeypatch):
    from mdsloader.storage import LocalStorage

    events = []
    real_upload, real_write = LocalStorage.upload_file, LocalStorage.write_bytes

    def upload(self, local_path, relpath):
        events.append(relpath)
        real_upload(self, local_path, relpath)

    def write_bytes(self, relpath, data):
        events.append(relpath)
        real_write(self, relpath, data)

    monkeypatch.setattr(LocalStorage, "upload_file", upload)
    monkeypatch.setattr(LocalStorage, "write_bytes", write_bytes)
    with MDSWriter(columns=COLUMNS, out=(str(tmp_path / "l"), str(tmp_path / "r")),
                   size_limit=400, max_workers=4) as writer:
        for sample in rows(100):
            writer.write(sample)
    assert events[-1] == "index.json" and len(events) > 5
    assert sorted(events[:-1]) == [f"shard.{i:05}.mds" for i in range(len(events) - 1)]


def test_index_json_is_the_reference_format(tmp_path):
    write(tmp_path, rows(2), hashes=["xxh64"])
    text = (tmp_path / "index.json").read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True)
    shard = json.loads(text)["shards"][0]
    assert sorted(shard) == ["column_encodings", "column_names", "column_sizes", "compression",
                             "format", "hashes", "raw_data", "samples", "size_limit", "version",
                             "zip_data"]


def test_progress_bar_counts_shards(tmp_path, capsys):
    write(tmp_path, rows(40), size_limit=500, progress_bar=True, max_workers=1)
    assert "shards written" in capsys.readouterr().err


def test_remote_url_writes_through_a_temporary_directory(tmp_path, monkeypatch):
    from mdsloader.storage import LocalStorage

    remote = LocalStorage(str(tmp_path / "bucket"))
    seen = {}

    def fake_open(url, retries):
        seen.update(url=url, retries=retries)
        return remote

    # Only the URL -> storage lookup is replaced; uploads go through a real LocalStorage.
    monkeypatch.setattr("mdsloader.mds.writer._open_remote", fake_open)
    writer = MDSWriter(columns=COLUMNS, out="s3://bucket/prefix", retry=3)
    local = writer.local
    for sample in rows(10):
        writer.write(sample)
    writer.finish()
    assert seen == {"url": "s3://bucket/prefix", "retries": 3}
    assert not os.path.exists(local)
    assert read_index(tmp_path / "bucket").num_samples == 10


@pytest.mark.parametrize(("compression", "module"), [("br", "brotli"), ("snappy", "snappy")])
def test_missing_codec_fails_at_construction(tmp_path, monkeypatch, compression, module):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError, match="codecs"):
        MDSWriter(columns=COLUMNS, out=str(tmp_path), compression=compression)


def test_failed_index_upload_can_be_retried(tmp_path, monkeypatch):
    from mdsloader.storage import LocalStorage

    real_write = LocalStorage.write_bytes
    calls = []

    def flaky_write(self, relpath, data):
        calls.append(relpath)
        if len(calls) == 1:
            raise StorageError("index upload failed")
        real_write(self, relpath, data)

    monkeypatch.setattr(LocalStorage, "write_bytes", flaky_write)
    writer = MDSWriter(columns=COLUMNS, out=(str(tmp_path / "l"), str(tmp_path / "r")))
    writer.write(rows(1)[0])
    with pytest.raises(StorageError, match="index upload failed"):
        writer.finish()
    assert not (tmp_path / "r" / "index.json").exists()
    assert writer.finish().num_samples == 1
    assert read_index(tmp_path / "r").num_samples == 1
    assert not (tmp_path / "l").exists()
