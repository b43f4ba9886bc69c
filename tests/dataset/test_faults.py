"""Faults and isolation: killed downloads, corrupt shards, unreachable S3, unsafe columns, several
datasets or users on one machine, cache limits."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from mdsloader.dataset import StreamingDataset
from mdsloader.errors import ChecksumError, StorageUnavailableError, UnsafeTypeError
from mdsloader.stream import Stream
from tests.dataset.conftest import write_dataset


def _ids(ds) -> list[int]:
    return sorted(int(s["id"]) for s in ds)


def _hang_in_download(remote: str, local: str, started) -> None:  # pragma: no cover - child
    from mdsloader.storage.local import LocalStorage

    def stuck(self, relpath: str, local_path: str) -> None:
        Path(local_path).write_bytes(b"torn")  # half a file under the temporary name
        started.set()
        time.sleep(60)

    LocalStorage.download_file = stuck
    ds = StreamingDataset(remote=remote, local=local, batch_size=2)
    list(ds)


def test_a_process_killed_mid_download_blocks_and_corrupts_nothing(tmp_path: Path):
    remote = str(write_dataset(tmp_path / "remote", [5, 5]))
    local = str(tmp_path / "local")
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=_hang_in_download, args=(remote, local, started))
    child.start()
    assert started.wait(20)
    os.kill(child.pid, signal.SIGKILL)  # dies holding the shard lock, a .part file on disk
    child.join()
    assert list(Path(local).rglob("*.part"))
    begin = time.monotonic()
    ds = StreamingDataset(remote=remote, local=local, batch_size=2)
    assert _ids(ds) == list(range(10))
    assert time.monotonic() - begin < 10
    assert not list(Path(local).rglob("*.part"))


def test_corrupted_shard_is_caught_by_validate_hash(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [5, 5], compression="zstd", hashes=["sha256"])
    victim = remote / "p0001" / "shard.00000.mds.zstd"
    victim.write_bytes(victim.read_bytes()[:-1] + b"\0")
    ds = StreamingDataset(
        remote=str(remote), local=str(tmp_path / "l"), batch_size=2, validate_hash="sha256"
    )
    with pytest.raises(ChecksumError, match=r"p0001/shard\.00000\.mds\.zstd"):
        list(ds)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_s3_fails_clearly_after_the_configured_retries(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    begin = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"index\.json"):
        StreamingDataset(
            remote="s3://nowhere/ds",
            local=str(tmp_path / "l"),
            batch_size=2,
            download_retry=1,
            download_timeout=2,
        )
    assert time.monotonic() - begin < 30


def test_pkl_columns_are_refused_without_allow_unsafe_types(tmp_path: Path):
    data = str(write_dataset(tmp_path / "d", [3], columns={"id": "int64", "obj": "pkl"}))
    with pytest.raises(UnsafeTypeError, match="obj"):
        StreamingDataset(local=data, batch_size=1)
    ds = StreamingDataset(local=data, batch_size=1, allow_unsafe_types=True)
    assert ds[2]["obj"] == {"id": 2}


def _read_all(remote: str, local: str | None, queue) -> None:  # pragma: no cover - child
    ds = StreamingDataset(remote=remote, local=local, batch_size=2, shuffle=True)
    queue.put(_ids(ds))


def test_two_datasets_sharing_a_cache_dir_at_once_never_collide(tmp_path: Path):
    remote = str(write_dataset(tmp_path / "remote", [7] * 6, compression="zstd"))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_read_all, args=(remote, str(tmp_path / "shared"), queue))
             for _ in range(3)]  # fmt: skip
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
    assert results == [list(range(42))] * 3


def test_default_cache_dirs_are_reusable_and_distinct_per_remote(tmp_path: Path):
    a = str(write_dataset(tmp_path / "a", [4]))
    b = str(write_dataset(tmp_path / "b", [4], start=100))
    first = StreamingDataset(remote=a, batch_size=2)
    again = StreamingDataset(remote=a, batch_size=2)  # the reference raises FileExistsError here
    other = StreamingDataset(remote=b, batch_size=2)
    assert first.streams[0].local == again.streams[0].local != other.streams[0].local
    assert f"mdsloader-{os.getuid()}" in first.streams[0].local
    try:
        assert _ids(again) == [0, 1, 2, 3] and _ids(other) == [100, 101, 102, 103]
    finally:
        for ds in (first, other):
            shutil.rmtree(Path(ds.streams[0].local), ignore_errors=True)


def test_cache_limit_construction_checks(tmp_path: Path):
    remote = str(write_dataset(tmp_path / "r", [40, 40], payload=200))
    with pytest.raises(ValueError, match="four times"):
        StreamingDataset(remote=remote, local=str(tmp_path / "l"), batch_size=2, cache_limit="10kb")
    with pytest.raises(ValueError, match="Minimum cache usage"):
        StreamingDataset(remote=remote, local=str(tmp_path / "l"), batch_size=2, cache_limit=10)


def test_iteration_under_a_tight_cache_limit_keeps_the_only_copy(tmp_path: Path):
    remote = write_dataset(tmp_path / "r", [30] * 8, payload=300)
    only = write_dataset(tmp_path / "only", [30] * 2, payload=300, start=1000)
    shard = (remote / "p0000" / "shard.00000.mds").stat().st_size
    streams = [Stream(remote=str(remote), local=str(tmp_path / "l")), Stream(local=str(only))]
    ds = StreamingDataset(streams=streams, batch_size=2, shuffle=True, cache_limit=6 * shard + 4096)
    assert _ids(ds) == list(range(240)) + list(range(1000, 1060))
    assert ds.cache.usage() <= ds.cache_limit
    assert all(ds.cache.is_local(s) for s in (8, 9))  # the local-only stream is intact
    assert sum(ds.cache.is_local(s) for s in range(8)) < 8  # something was evicted


def test_random_access_during_iteration_never_pulls_a_shard_from_under_it(tmp_path, monkeypatch):
    import mdsloader.dataset as dataset_module

    monkeypatch.setattr(dataset_module, "_OPEN_READERS", 1)  # every open closes another view
    data = str(write_dataset(tmp_path / "d", [10, 10, 10]))
    ds = StreamingDataset(local=data, batch_size=2)
    seen = []
    for k, sample in enumerate(ds):
        seen.append(int(sample["id"]))
        assert int(ds[(k * 7 + 13) % 30]["id"]) == (k * 7 + 13) % 30
    assert seen == list(range(30))


def test_a_read_only_local_dataset_is_read_without_writing_to_it(tmp_path: Path):
    data = write_dataset(tmp_path / "ro", [6, 6])
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*")}
    for path in [data, *data.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        ds = StreamingDataset(local=str(data), batch_size=2, shuffle=True)
        assert _ids(ds) == list(range(12))
        assert {p: p.stat().st_mtime_ns for p in data.rglob("*")} == before
    finally:
        for path in [data, *data.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
