"""ShardReader / DatasetReader: access, damage detection, hashes, unsafe types, golden data."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
from format_helpers import GOLDEN, assert_same_sample, assert_same_value, expected_decoded

from mdsloader.errors import (
    ChecksumError,
    HashError,
    ObjectNotFoundError,
    ShardFormatError,
    UnknownEncodingError,
    UnsafeTypeError,
)
from mdsloader.mds import (
    FileInfo,
    Index,
    MDSWriter,
    SampleDecoder,
    ShardReader,
    dump_index,
    open_local_dataset,
    read_index,
)
from mdsloader.mds.shard import config_json, encode_shard


def make(path, n=30, **kwargs) -> None:
    columns = kwargs.pop("columns", {"id": "int", "name": "str", "arr": "ndarray:int16"})
    with MDSWriter(columns=columns, out=str(path), **kwargs) as writer:
        for i in range(n):
            writer.write({"id": i, "name": f"n{i}", "arr": np.arange(i % 4 + 1, dtype=np.int16),
                          "obj": {"i": i}})


def test_random_access_iteration_and_negative_indexes(tmp_path):
    make(tmp_path, size_limit=300)
    with open_local_dataset(tmp_path) as dataset:
        assert len(dataset) == 30 and len(dataset.index.shards) > 3
        assert [s["id"] for s in dataset] == list(range(30))
        assert dataset[-1]["name"] == "n29" and dataset[7]["arr"].tolist() == [0, 1, 2, 3]
        assert dataset.locate(0) == (0, 0)
        with pytest.raises(IndexError):
            dataset[30]
        with pytest.raises(TypeError):
            dataset["1"]


def test_shard_reader_views(tmp_path):
    make(tmp_path, n=3)
    info = read_index(tmp_path).shards[0]
    with ShardReader(tmp_path / info.raw_data.basename, info) as shard:
        assert len(shard) == 3
        view = shard.sample_bytes(1)
        assert isinstance(view, memoryview)
        assert SampleDecoder(info).decode(view)["name"] == "n1"
        view.release()
        assert shard[-1]["id"] == 2
        with pytest.raises(IndexError):
            shard.sample_bytes(3)


def test_split_subdirectory(tmp_path):
    make(tmp_path / "train", n=5)
    assert len(open_local_dataset(tmp_path, "train")) == 5


def test_compressed_only_shards_are_decompressed_next_to_the_zip(tmp_path):
    make(tmp_path, compression="zstd", hashes=["xxh64"], size_limit=300)
    index = read_index(tmp_path)
    assert not any(name.endswith(".mds") for name in os.listdir(tmp_path))
    with open_local_dataset(tmp_path, validate_hash="xxh64") as dataset:
        assert [s["id"] for s in dataset] == list(range(30))
    for shard in index.shards:
        assert (tmp_path / shard.raw_data.basename).stat().st_size == shard.raw_data.bytes
        assert (tmp_path / shard.zip_data.basename).exists()
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]
    with open_local_dataset(tmp_path, validate_hash="xxh64") as dataset:  # raw present now
        assert dataset[29]["id"] == 29


def test_truncated_shard(tmp_path):
    make(tmp_path, n=5)
    path = tmp_path / "shard.00000.mds"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ShardFormatError, match="truncated"):
        open_local_dataset(tmp_path)[0]
    path.write_bytes(b"")
    with pytest.raises(ShardFormatError, match="empty"):
        open_local_dataset(tmp_path)[0]


def test_header_that_disagrees_with_the_index(tmp_path):
    make(tmp_path, n=5)
    path = tmp_path / "shard.00000.mds"
    data = bytearray(path.read_bytes())
    data[0] = 4
    path.write_bytes(bytes(data))
    with pytest.raises(ShardFormatError, match="holds 4 samples"):
        open_local_dataset(tmp_path)[0]


@pytest.mark.parametrize("compression", [None, "gz"])
def test_corrupted_shard_fails_its_checksum(tmp_path, compression):
    make(tmp_path, n=5, compression=compression, hashes=["sha1", "xxh64"])
    shard = read_index(tmp_path).shards[0]
    path = tmp_path / shard.file.basename
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=shard.file.basename):
        open_local_dataset(tmp_path, validate_hash="xxh64")[0]


def test_validate_hash_must_be_recorded(tmp_path):
    make(tmp_path, n=2, hashes=["md5"])
    with pytest.raises(HashError, match="'xxh64'"):
        open_local_dataset(tmp_path, validate_hash="xxh64")


def test_missing_shard_file(tmp_path):
    make(tmp_path, n=2, compression="bz2")
    os.remove(tmp_path / "shard.00000.mds.bz2")
    with pytest.raises(ObjectNotFoundError):
        open_local_dataset(tmp_path)[0]


def test_corrupt_compressed_data_without_hashes(tmp_path):
    make(tmp_path, n=2, compression="zstd")
    (tmp_path / "shard.00000.mds.zstd").write_bytes(b"not zstd at all")
    with pytest.raises(ShardFormatError, match="corrupt zstd"):
        open_local_dataset(tmp_path)[0]


def test_pickle_columns_are_refused_before_decoding(tmp_path):
    make(tmp_path, n=3, columns={"id": "int", "obj": "pkl"})
    with pytest.raises(UnsafeTypeError, match="column 'obj'"):
        open_local_dataset(tmp_path)
    info = read_index(tmp_path).shards[0]
    with pytest.raises(UnsafeTypeError, match="allow_unsafe_types"):
        ShardReader(tmp_path / info.raw_data.basename, info)
    assert open_local_dataset(tmp_path, allow_unsafe_types=True)[2]["obj"] == {"i": 2}


def test_empty_shards_are_tolerated(tmp_path):
    make(tmp_path, n=6, size_limit=300)
    index = read_index(tmp_path)
    raw = encode_shard(config_json({}), [], np.zeros(0, np.int64))
    (tmp_path / "empty.mds").write_bytes(raw)
    first = index.shards[0]
    empty = replace(first, samples=0, raw_data=FileInfo("empty.mds", len(raw), {}))
    (tmp_path / "index.json").write_bytes(dump_index(Index((empty, *index.shards, empty))))
    with open_local_dataset(tmp_path) as dataset:
        assert len(dataset) == 6
        assert [s["id"] for s in dataset] == list(range(6))
        assert dataset[0]["id"] == 0 and dataset[5]["id"] == 5


# --- golden files made by the reference -------------------------------------------------------


@pytest.fixture(params=["doc_example", "all_scalars", "ndarrays", "pil_bz2"])
def golden_name(request):
    return request.param


def test_our_writer_reproduces_the_golden_bytes(tmp_path, golden, golden_name):
    columns, kwargs = golden.DATASETS[golden_name]
    with MDSWriter(columns=columns, out=str(tmp_path), **kwargs) as writer:
        for sample in golden.samples(golden_name):
            writer.write(sample)
    expected = GOLDEN / golden_name
    assert sorted(os.listdir(tmp_path)) == sorted(os.listdir(expected))
    for name in os.listdir(expected):
        assert (tmp_path / name).read_bytes() == (expected / name).read_bytes(), name


def test_our_columnar_writer_reproduces_the_golden_bytes(tmp_path, golden, golden_name):
    columns, kwargs = golden.DATASETS[golden_name]
    samples = golden.samples(golden_name)
    with MDSWriter(columns=columns, out=str(tmp_path), **kwargs) as writer:
        writer.write_batch({name: [s[name] for s in samples] for name in columns})
    for name in os.listdir(GOLDEN / golden_name):
        assert (tmp_path / name).read_bytes() == (GOLDEN / golden_name / name).read_bytes(), name


def test_our_reader_decodes_the_golden_files(tmp_path, golden, golden_name):
    shutil.copytree(GOLDEN / golden_name, tmp_path / "ds")  # decompression writes next to zips
    columns, _ = golden.DATASETS[golden_name]
    with open_local_dataset(tmp_path / "ds") as dataset:
        decoded = list(dataset)
    samples = golden.samples(golden_name)
    assert len(decoded) == len(samples)
    for got, sample in zip(decoded, samples):
        for name, encoding in columns.items():
            value = sample[name]
            if encoding == "jpeg_array":
                assert [img.size for img in got[name]] == [(1, 1)] * len(value)
                continue
            if encoding in ("ndarray", "ndarray:int16", "ndarray:uint8:2,3", "ndarray:float64",
                            "ndarray:uint16"):
                assert_same_value(got[name], np.asarray(value), context=name)
            else:
                assert_same_value(got[name], expected_decoded(encoding, value), context=name)


def test_doc_example_hex(golden):
    data = (GOLDEN / "doc_example" / "shard.00000.mds").read_bytes()
    assert len(data) == 228
    assert data[202:216].hex() == "020000006162" + "0700000000000000"
    assert data[216:].hex() == "00000000" + "ff" * 8
    last = open_local_dataset(GOLDEN / "doc_example")[1]
    assert_same_sample(last, {"name": "", "x": np.int64(-1)})


def test_sample_decoder_detects_short_records(tmp_path):
    make(tmp_path, n=1)
    info = read_index(tmp_path).shards[0]
    decoder = SampleDecoder(info)
    with ShardReader(tmp_path / info.raw_data.basename, info) as shard:
        record = bytes(shard.sample_bytes(0))
    assert decoder.decode(record)["id"] == 0
    with pytest.raises(ShardFormatError, match="truncated in column"):
        decoder.decode(record[:-1])
    with pytest.raises(ShardFormatError, match="shorter than its header"):
        decoder.decode(record[:3])


def test_close_while_a_view_is_held(tmp_path):
    make(tmp_path, n=2)
    info = read_index(tmp_path).shards[0]
    shard = ShardReader(tmp_path / info.raw_data.basename, info)
    view = shard.sample_bytes(0)
    shard.close()  # does not raise; the mapping lives until the view is released
    assert len(bytes(view)) > 0
    view.release()


def test_readers_pickle_for_dataloader_workers(tmp_path):
    import pickle

    make(tmp_path, n=20, size_limit=300)
    dataset = open_local_dataset(tmp_path)
    assert dataset[3]["id"] == 3  # opens a shard (a memory map) before pickling
    copy = pickle.loads(pickle.dumps(dataset))
    assert [s["id"] for s in copy] == list(range(20))
    shard = dataset.shard(0)
    again = pickle.loads(pickle.dumps(shard))
    assert again[0] == shard[0] and len(again) == len(shard)


def test_unknown_encodings_fail_at_open_naming_the_column(tmp_path):
    make(tmp_path, n=2)
    text = (tmp_path / "index.json").read_text().replace('"ndarray:int16"', '"my_codec"')
    (tmp_path / "index.json").write_text(text)
    with pytest.raises(UnknownEncodingError, match=r"column 'arr'.*'my_codec'"):
        open_local_dataset(tmp_path)
