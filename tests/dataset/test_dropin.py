"""Drop-in behaviour the reference's users rely on (issue 17): manual cache control, a cache whose
files are the remote's, resolved stream weights, derived ``local``, warnings, exception types and
the key phrases of messages. Each test states the behaviour; the reference is only an oracle."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

from mdsloader import MDSWriter, Stream, StreamingDataset
from mdsloader.errors import (
    EmptyDatasetError,
    IndexDecodeError,
    IndexNotFoundError,
    MDSError,
    UnsafeTypeError,
)
from mdsloader.locks import file_lock
from mdsloader.stream import LOCK_DIR, default_local_dir, lock_dir_for


def write_flat(out: Path, samples: int, *, per_shard: int = 10, **kwargs) -> Path:
    """An MDS dataset of ``{"id": i}`` written by our writer: flat ``shard.NNNNN.mds[.zstd]``,
    about ``per_shard`` samples a shard."""
    limit = 12 * per_shard + 200  # 8 bytes of int64 and 4 of offset a sample, plus the header
    with MDSWriter(columns={"id": "int64"}, out=str(out), size_limit=limit, **kwargs) as writer:
        for i in range(samples):
            writer.write({"id": i})
    return out


def ids(dataset) -> list[int]:
    return [int(sample["id"]) for sample in dataset]


# ---- manual cache control, and a cache that lists exactly the remote's files -----------------


@pytest.mark.parametrize("keep_zip", [False, True])
def test_prepare_and_evict_shards_leave_only_dataset_files_in_the_cache(tmp_path, keep_zip):
    remote = write_flat(tmp_path / "remote", 40, compression="zstd")
    local = tmp_path / "local"
    ds = StreamingDataset(remote=str(remote), local=str(local), batch_size=4, keep_zip=keep_zip)
    assert len(ds.shards) == ds.num_shards >= 3
    assert ds.shards[0].compression == "zstd"
    assert sum(shard.samples for shard in ds.shards) == 40
    raws = {shard.raw_data.basename for shard in ds.shards}
    zips = {shard.zip_data.basename for shard in ds.shards}
    expected = {"index.json"} | raws | (zips if keep_zip else set())

    for shard_id in range(ds.num_shards):
        ds.prepare_shard(shard_id)
    assert set(os.listdir(local)) == expected
    if keep_zip:  # the remote's own file list, as mirroring tools compare it
        assert set(os.listdir(local)) - raws == set(os.listdir(remote))

    for shard_id in range(ds.num_shards):
        ds.evict_shard(shard_id)
    assert os.listdir(local) == ["index.json"]

    assert [ds[i]["id"] for i in range(ds.num_samples)] == list(range(40))
    assert set(os.listdir(local)) == expected
    # The locks are beside the cache directory, not in it.
    assert lock_dir_for(local) == tmp_path / LOCK_DIR / "local"
    assert list((tmp_path / LOCK_DIR / "local").glob("*.lock"))


def test_cache_limit_evictions_leave_no_foreign_file_in_the_cache(tmp_path):
    remote = write_flat(tmp_path / "remote", 2000, per_shard=200)
    local = tmp_path / "local"
    limit = (remote / "index.json").stat().st_size + 5 * (remote / "shard.00000.mds").stat().st_size
    ds = StreamingDataset(remote=str(remote), local=str(local), batch_size=4, cache_limit=limit)
    for _ in range(2):
        assert sorted(ids(ds)) == list(range(2000))
    listing = set(os.listdir(local))
    assert listing < set(os.listdir(remote))  # a strict subset: some shards were evicted
    ds.close()


def test_prepare_shard_without_blocking_returns_while_another_prepares_it(tmp_path):
    remote = write_flat(tmp_path / "remote", 20)
    ds = StreamingDataset(remote=str(remote), local=str(tmp_path / "local"), batch_size=2)
    raw = tmp_path / "local" / ds.shards[1].raw_data.basename
    with file_lock(ds.cache._shard_lock(1)):  # another preparer holds the shard
        ds.prepare_shard(1, blocking=False)
        assert not raw.exists()
    ds.prepare_shard(1, blocking=False)
    assert raw.exists()


def test_evict_shard_never_deletes_the_only_copy(tmp_path):
    data = write_flat(tmp_path / "data", 20)
    ds = StreamingDataset(local=str(data), batch_size=2)
    ds.evict_shard(0)
    assert (data / "shard.00000.mds").exists()
    assert ds[3] == {"id": 3}


def test_locks_stay_inside_a_cache_that_is_a_mount_or_has_an_unwritable_parent(
    tmp_path, monkeypatch
):
    (tmp_path / "cache").mkdir()
    assert lock_dir_for(tmp_path / "cache") == tmp_path / LOCK_DIR / "cache"
    assert lock_dir_for("/") == Path("/") / LOCK_DIR
    with monkeypatch.context() as patch:  # permissions cannot be tested as root: pretend
        patch.setattr(os, "access", lambda path, mode: False)
        assert lock_dir_for(tmp_path / "cache") == tmp_path / "cache" / LOCK_DIR
    with monkeypatch.context() as patch:  # a volume mounted at the cache: its parent is private
        patch.setattr(os.path, "ismount", lambda path: Path(path) == tmp_path / "cache")
        assert lock_dir_for(tmp_path / "cache") == tmp_path / "cache" / LOCK_DIR


def test_one_cache_directory_named_two_ways_shares_its_locks(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    a = Stream(remote="s3://b/p", local=str(tmp_path / "real"), split="train")
    b = Stream(remote="s3://b/p", local=str(tmp_path / "alias" / "train"))
    for stream in (a, b):
        stream.apply_default({})
    assert a.lock_dir == b.lock_dir == tmp_path / "real" / LOCK_DIR / "train"


# ---- a cached shard deleted while the dataset runs ---------------------------------------------


def test_a_cached_shard_deleted_while_open_is_downloaded_again_next_epoch(tmp_path):
    remote = write_flat(tmp_path / "remote", 40)
    local = tmp_path / "local"
    ds = StreamingDataset(remote=str(remote), local=str(local), batch_size=4)
    victim = local / "shard.00002.mds"
    assert ids(ds) == list(range(40))  # every shard is now open
    epoch = iter(ds)
    seen = [int(next(epoch)["id"])]
    victim.unlink()  # mid-epoch: the open map still holds the whole file
    seen += ids(epoch)
    assert seen == list(range(40))
    assert not victim.exists()
    assert ids(ds) == list(range(40))  # the next epoch makes the shard local again
    assert victim.exists()
    victim.unlink()
    assert ds[25] == {"id": 25}  # random access keeps reading the open map
    assert ids(ds) == list(range(40)) and victim.exists()


def test_a_cached_shard_replaced_under_an_open_map_is_reopened(tmp_path):
    remote = write_flat(tmp_path / "remote", 20)
    local = tmp_path / "local"
    ds = StreamingDataset(remote=str(remote), local=str(local), batch_size=4)
    assert ids(ds) == list(range(20))
    opened = ds._readers[0]
    shutil.copy(local / "shard.00000.mds", local / "copy")
    os.replace(local / "copy", local / "shard.00000.mds")  # a new inode at the same name
    assert not opened.is_current()
    assert ids(ds) == list(range(20))
    assert ds._readers[0] is not opened and ds._readers[0].is_current()


# ---- where the index comes from -----------------------------------------------------------------


def test_a_local_index_is_used_when_the_remote_has_none(tmp_path):
    local = write_flat(tmp_path / "local", 30)
    empty = tmp_path / "remote"
    empty.mkdir()
    ds = StreamingDataset(local=str(local), remote=str(empty), batch_size=3)
    assert ids(ds) == list(range(30))


def test_a_missing_local_index_without_remote_is_a_runtime_error(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(RuntimeError, match="No `remote` provided, but local file") as caught:
        StreamingDataset(streams=[Stream(local=str(tmp_path / "data"))], batch_size=1)
    assert isinstance(caught.value, IndexNotFoundError | FileNotFoundError)


def test_a_corrupted_index_is_a_json_decode_error(tmp_path):
    data = write_flat(tmp_path / "data", 10)
    (data / "index.json").write_text('{"shards": [')
    with pytest.raises(json.JSONDecodeError, match="empty or corrupted") as caught:
        StreamingDataset(local=str(data), batch_size=1)
    assert isinstance(caught.value, IndexDecodeError)
    (data / "index.json").write_text("")
    with pytest.raises(ValueError, match="empty or corrupted"):
        StreamingDataset(local=str(data), batch_size=1)


def test_an_index_without_samples_is_a_runtime_error(tmp_path):
    data = tmp_path / "data"
    with MDSWriter(columns={"id": "int64"}, out=str(data)):
        pass
    for kind in (RuntimeError, ValueError, EmptyDatasetError):
        with pytest.raises(kind, match="Stream contains no samples"):
            StreamingDataset(local=str(data), batch_size=1)


# ---- streams ------------------------------------------------------------------------------------


def test_stream_local_is_derived_at_construction():
    assert Stream(remote="s3://b/p").local == default_local_dir("s3://b/p", "")
    assert Stream(remote="s3://b/p", split="train").local == default_local_dir("s3://b/p", "train")
    assert Stream(remote="s3://b/p", local="/x").local == "/x"
    assert Stream(local="/x").local == "/x"
    assert Stream().local is None  # nothing to derive it from (the dataset refuses it)


WEIGHTINGS = [
    ({"proportion": 1.0}, {"proportion": 3.0}, None),
    ({"proportion": 0.2}, {"proportion": 0.3}, 70),
    ({"repeat": 2.0}, {"choose": 7}, None),
    ({"repeat": 0.5}, {}, None),
    ({}, {}, 33),
    ({}, {}, None),
]


@pytest.mark.parametrize(("first", "second", "epoch_size"), WEIGHTINGS)
def test_stream_weights_read_back_as_the_reference_resolves_them(
    tmp_path, reference, clean_reference_shm, first, second, epoch_size
):
    write_flat(tmp_path / "a", 30)
    write_flat(tmp_path / "b", 50)
    specs = [{"local": str(tmp_path / "a"), **first}, {"local": str(tmp_path / "b"), **second}]
    ours = [Stream(**spec) for spec in specs]
    ds = StreamingDataset(streams=ours, epoch_size=epoch_size, batch_size=2)
    theirs = [reference.Stream(**spec) for spec in specs]
    ref = reference.StreamingDataset(streams=theirs, epoch_size=epoch_size, batch_size=2)
    assert ds.epoch_size == ref.epoch_size
    for mine, its in zip(ours, theirs):
        assert mine.choose == int(its.choose) and isinstance(mine.choose, int)
        assert mine.proportion == pytest.approx(float(its.proportion))
        assert mine.repeat == pytest.approx(float(its.repeat))
    # Unlike the reference's, the streams can build another dataset: the given weights decide.
    again = StreamingDataset(streams=ours, epoch_size=epoch_size, batch_size=2)
    assert again.epoch_size == ds.epoch_size
    assert [s.choose for s in ours] == [int(s.choose) for s in theirs]


def test_a_weight_set_by_hand_reads_back_until_a_dataset_resolves_it(tmp_path):
    write_flat(tmp_path / "a", 30)
    stream = Stream(local=str(tmp_path / "a"))
    assert (stream.proportion, stream.repeat, stream.choose) == (None, None, None)
    stream.repeat = 2
    assert stream.repeat == 2
    ds = StreamingDataset(streams=[stream], batch_size=2)
    assert ds.epoch_size == 60 and stream.choose == 60 and stream.proportion == 1.0


# ---- warnings and messages ----------------------------------------------------------------------


def test_predownload_below_batch_size_warns(tmp_path):
    data = write_flat(tmp_path / "data", 10)
    with pytest.warns(UserWarning, match="predownload < batch_size"):
        StreamingDataset(local=str(data), batch_size=8, predownload=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        StreamingDataset(local=str(data), batch_size=8, predownload=8)
        StreamingDataset(local=str(data), batch_size=8)


def test_messages_keep_the_reference_key_phrases(tmp_path):
    data = write_flat(tmp_path / "data", 1)
    with pytest.raises(ValueError, match="Invalid sampling method: 'fixedd'"):
        StreamingDataset(local=str(data), batch_size=1, sampling_method="fixedd")
    tiny = StreamingDataset(local=str(data), batch_size=1, shuffle=True, num_canonical_nodes=2)
    with (
        pytest.warns(UserWarning, match="Trying to partition 1 samples over 2 canonical nodes"),
        pytest.raises(ValueError, match="The number of samples assigned to a canonical node"),
    ):
        ids(tiny)

    unsafe = tmp_path / "unsafe"
    with MDSWriter(columns={"obj": "pkl"}, out=str(unsafe)) as writer:
        writer.write({"obj": {"a": 1}})
    with pytest.raises(UnsafeTypeError, match="contains an unsafe type"):
        StreamingDataset(local=str(unsafe), batch_size=1)


def test_a_failed_local_download_names_the_missing_file(tmp_path):
    remote = write_flat(tmp_path / "remote", 20)
    (remote / "shard.00001.mds").unlink()
    ds = StreamingDataset(remote=str(remote), local=str(tmp_path / "local"), batch_size=2)
    with pytest.raises(FileNotFoundError, match=r"No such file or directory: .*shard\.00001\.mds"):
        ids(ds)
    with pytest.raises(MDSError):
        ds[15]


def test_order_settings_read_back_like_the_reference(tmp_path) -> None:
    """batching_method, shuffle, shuffle_algo, partition_algo and the sampling settings are
    attributes of the reference's dataset; training code reads them back."""
    from mdsloader import MDSWriter, StreamingDataset

    with MDSWriter(out=str(tmp_path / "d"), columns={"x": "int"}) as writer:
        for i in range(8):
            writer.write({"x": i})
    ds = StreamingDataset(local=str(tmp_path / "d"), batch_size=2, shuffle=True,
                          shuffle_algo="py1br", batching_method="per_stream",
                          partition_algo="relaxed", sampling_method="fixed",
                          sampling_granularity=2)  # fmt: skip
    assert (ds.batching_method, ds.shuffle, ds.shuffle_algo, ds.partition_algo) == (
        "per_stream", True, "py1br", "relaxed",
    )  # fmt: skip
    assert (ds.sampling_method, ds.sampling_granularity) == ("fixed", 2)
