"""The node-local shard cache against a real directory remote: once-per-node downloads, torn
files, hash validation, stale indexes and cache_limit eviction."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from mdsloader.cache import ShardCache
from mdsloader.catalog import load_catalog
from mdsloader.errors import (
    ChecksumError,
    CompressionError,
    HashError,
    ObjectNotFoundError,
    ShardFormatError,
    UnsafeTypeError,
)
from mdsloader.stream import Stream
from tests.dataset.conftest import write_dataset


def make_cache(remote: Path | None, local: Path, **stream_kw) -> ShardCache:
    limit = stream_kw.pop("cache_limit", None)
    stream = Stream(remote=None if remote is None else str(remote), local=str(local), **stream_kw)
    stream.apply_default({})
    catalog = load_catalog([stream], allow_unsafe_types=False)
    return ShardCache([stream], catalog.shards, catalog.stream_of_shard, limit)


def test_shard_is_downloaded_validated_and_decompressed(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [4, 5], compression="zstd", hashes=["xxh64"])
    cache = make_cache(remote, tmp_path / "local", validate_hash="xxh64")
    path = cache.ensure(1)
    assert path == tmp_path / "local" / "p0001" / "shard.00000.mds"
    assert path.stat().st_size == cache.shards[1].raw_data.bytes
    assert not (path.parent / "shard.00000.mds.zstd").exists()  # keep_zip defaults to False
    assert not cache.is_local(0)
    assert not list((tmp_path / "local").rglob("*.part"))


def test_keep_zip_keeps_the_compressed_file(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [4], compression="zstd")
    cache = make_cache(remote, tmp_path / "local", keep_zip=True)
    raw = cache.ensure(0)
    assert raw.with_name("shard.00000.mds.zstd").exists()


def test_corrupted_shard_fails_validate_hash_naming_the_shard(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [4, 4], compression="zstd", hashes=["xxh64"])
    victim = remote / "p0001" / "shard.00000.mds.zstd"
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF
    victim.write_bytes(bytes(data))
    cache = make_cache(remote, tmp_path / "local", validate_hash="xxh64")
    cache.ensure(0)
    with pytest.raises(ChecksumError, match=r"p0001/shard\.00000\.mds\.zstd"):
        cache.ensure(1)
    # Nothing unvalidated is left under a trusted name.
    assert not (tmp_path / "local" / "p0001" / "shard.00000.mds.zstd").exists()
    assert not cache.is_local(1)


def test_validate_hash_must_be_recorded(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [4], hashes=["xxh64"])
    with pytest.raises(HashError, match="sha256"):
        make_cache(remote, tmp_path / "local", validate_hash="sha256")


def test_torn_download_is_never_trusted(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [4])
    local = tmp_path / "local"
    cache = make_cache(remote, local)
    # What a process killed mid-download leaves behind: a partial temp file.
    torn = local / "p0000" / "shard.00000.mds.12345.abcdef.part"
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"\0" * 10)
    assert not cache.is_local(0)
    path = cache.ensure(0)
    assert path.read_bytes() == (remote / "p0000" / "shard.00000.mds").read_bytes()
    assert not torn.exists()


def _ensure_all(local: str, remote: str, queue) -> None:  # pragma: no cover - child process
    cache = make_cache(Path(remote), Path(local))
    for shard in range(len(cache.shards)):
        cache.ensure(shard)
    queue.put(os.getpid())


def test_each_shard_is_downloaded_once_per_node(tmp_path: Path, monkeypatch):
    remote = write_dataset(tmp_path / "remote", [3] * 6)
    local = tmp_path / "local"
    make_cache(remote, local)  # installs the index
    log = tmp_path / "downloads.log"
    from mdsloader.storage.local import LocalStorage

    original = LocalStorage.download_file

    def counting(self, relpath: str, local_path: str) -> None:
        with open(log, "a") as handle:
            handle.write(relpath + "\n")
        original(self, relpath, local_path)

    monkeypatch.setattr(LocalStorage, "download_file", counting)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    args = (str(local), str(remote), queue)
    procs = [ctx.Process(target=_ensure_all, args=args) for _ in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    lines = log.read_text().split()
    assert sorted(lines) == sorted(f"p{n:04d}/shard.00000.mds" for n in range(6))


def test_stale_local_index_is_refreshed_and_its_shards_dropped(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [4, 4], hashes=["xxh64"])
    local = tmp_path / "local"
    cache = make_cache(remote, local)
    old_shard = cache.ensure(0)
    assert old_shard.exists()
    shutil.rmtree(remote)
    write_dataset(remote, [6, 2], start=100, hashes=["xxh64"])  # same names, new contents
    cache = make_cache(remote, local)
    assert (local / "index.json").read_bytes() == (remote / "index.json").read_bytes()
    assert not old_shard.exists()
    assert cache.ensure(0).read_bytes() == (remote / "p0000" / "shard.00000.mds").read_bytes()


def test_local_only_dataset_missing_shard_is_a_clear_error(tmp_path: Path):
    data = write_dataset(tmp_path / "data", [4, 4])
    (data / "p0001" / "shard.00000.mds").unlink()
    cache = make_cache(None, data)
    assert cache.ensure(0).exists()
    with pytest.raises(ObjectNotFoundError, match="no remote"):
        cache.ensure(1)


def test_local_only_zip_is_decompressed_in_place_and_kept(tmp_path: Path):
    data = write_dataset(tmp_path / "data", [4], compression="zstd")
    cache = make_cache(None, data)
    raw = cache.ensure(0)
    assert raw.exists() and raw.with_name("shard.00000.mds.zstd").exists()


def test_cache_limit_evicts_lru_but_never_the_only_copy(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [50] * 6)
    only = write_dataset(tmp_path / "only", [50] * 2)
    s_remote = Stream(remote=str(remote), local=str(tmp_path / "local"))
    s_only = Stream(local=str(only))
    for stream in (s_remote, s_only):
        stream.apply_default({})
    catalog = load_catalog([s_remote, s_only], allow_unsafe_types=False)
    shard_bytes = catalog.shards[0].raw_data.bytes
    fixed = catalog.index_bytes + 2 * shard_bytes  # the local-only stream's shards
    limit = fixed + 3 * shard_bytes
    cache = ShardCache([s_remote, s_only], catalog.shards, catalog.stream_of_shard, limit)
    for shard in range(6):
        cache.ensure(shard)
        os.utime(cache.raw_path(shard), ns=(shard * 10**9, shard * 10**9))  # strict LRU order
        assert cache.usage() <= limit
    assert [cache.is_local(s) for s in range(6)] == [False, False, False, True, True, True]
    assert cache.is_local(6) and cache.is_local(7)  # local-only: never evicted
    assert cache.evict(6) == 0 and cache.is_local(6)


def test_pkl_columns_are_refused_before_any_decode(tmp_path: Path):
    data = write_dataset(tmp_path / "data", [3], columns={"id": "int64", "obj": "pkl"})
    stream = Stream(local=str(data))
    stream.apply_default({})
    with pytest.raises(UnsafeTypeError, match="'obj'"):
        load_catalog([stream], allow_unsafe_types=False)
    assert load_catalog([stream], allow_unsafe_types=True).num_samples == 3


def test_index_json_is_untouched_when_unchanged(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [4])
    local = tmp_path / "local"
    make_cache(remote, local)
    before = (local / "index.json").stat().st_mtime_ns
    make_cache(remote, local)
    assert (local / "index.json").stat().st_mtime_ns == before
    assert json.loads((local / "index.json").read_text())["version"] == 2


# ---- compressed shards stream from the remote straight into the raw file ---------------------


def _no_zip_download(monkeypatch) -> None:
    from mdsloader.storage.local import LocalStorage

    def refuse(self, relpath: str, local_path: str) -> None:
        raise AssertionError(f"{relpath} was downloaded whole instead of streamed")

    monkeypatch.setattr(LocalStorage, "download_file", refuse)


@pytest.mark.parametrize("keep_zip", [False, True])
def test_a_zstd_shard_is_decompressed_while_it_downloads(tmp_path: Path, monkeypatch, keep_zip):
    import zstandard

    remote = write_dataset(tmp_path / "remote", [6, 7], compression="zstd", hashes=["xxh64"])
    _no_zip_download(monkeypatch)
    cache = make_cache(remote, tmp_path / "local", validate_hash="xxh64", keep_zip=keep_zip)
    raw = cache.ensure(1)
    remote_zip = (remote / "p0001" / "shard.00000.mds.zstd").read_bytes()
    assert raw.read_bytes() == zstandard.ZstdDecompressor().decompress(remote_zip)
    local_zip = raw.with_name("shard.00000.mds.zstd")
    assert local_zip.exists() == keep_zip
    if keep_zip:
        assert local_zip.read_bytes() == remote_zip
    assert not list((tmp_path / "local").rglob("*.part"))


class _FlakyStorage:
    """Wraps a storage; the first stream attempt delivers garbage, then restarts for real."""

    def __init__(self, inner) -> None:
        self.inner, self.attempts = inner, 0

    def stream_to(self, relpath: str, sink, *, chunk_size: int = 1 << 20) -> int:
        self.attempts += 1
        sink.restart()
        sink.write(self.inner.read_bytes(relpath)[:40] + b"\x00garbage")
        return self.inner.stream_to(relpath, sink, chunk_size=chunk_size)


def test_a_retried_stream_starts_the_shard_over(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [9], compression="zstd", hashes=["sha256"])
    cache = make_cache(remote, tmp_path / "local", validate_hash="sha256", keep_zip=True)
    stream = cache.streams[0]
    stream._storage = flaky = _FlakyStorage(stream.storage)
    raw = cache.ensure(0)
    assert flaky.attempts == 1
    # The digest, the decompressor and both files forgot the first attempt's bytes.
    assert raw.stat().st_size == cache.shards[0].raw_data.bytes
    zipped = raw.with_name("shard.00000.mds.zstd")
    assert zipped.read_bytes() == (remote / "p0000" / "shard.00000.mds.zstd").read_bytes()


def _corrupt(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def test_invalid_zstd_is_a_compression_error_and_leaves_nothing(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [4], compression="zstd", hashes=["xxh64"])
    _corrupt(remote / "p0000" / "shard.00000.mds.zstd", b"this is not zstd" * 100)
    cache = make_cache(remote, tmp_path / "local")
    with pytest.raises(CompressionError, match=r"p0000/shard\.00000\.mds\.zstd"):
        cache.ensure(0)
    assert not cache.is_local(0)
    assert not list((tmp_path / "local" / "p0000").iterdir())


def test_invalid_zstd_under_validate_hash_reports_the_checksum(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [4], compression="zstd", hashes=["xxh64"])
    _corrupt(remote / "p0000" / "shard.00000.mds.zstd", b"this is not zstd" * 100)
    cache = make_cache(remote, tmp_path / "local", validate_hash="xxh64")
    with pytest.raises(ChecksumError, match=r"p0000/shard\.00000\.mds\.zstd"):
        cache.ensure(0)
    assert not list((tmp_path / "local").rglob("shard.*"))


def test_a_truncated_zstd_shard_is_a_size_error(tmp_path: Path):
    remote = write_dataset(tmp_path / "remote", [50], compression="zstd")
    victim = remote / "p0000" / "shard.00000.mds.zstd"
    _corrupt(victim, victim.read_bytes()[:-20])
    cache = make_cache(remote, tmp_path / "local")
    with pytest.raises(ShardFormatError, match="decompresses to"):
        cache.ensure(0)
    assert not list((tmp_path / "local").rglob("shard.*"))


def test_stream_decompressor_matches_whole_decompression_for_any_split():
    import io
    import random

    from mdsloader.mds.compression import get_codec

    codec = get_codec("zstd:3")
    payload = random.Random(0).randbytes(300_000) + bytes(2_000_000) + b"tail" * 1000
    frames = codec.compress(payload[:500_000]) + codec.compress(payload[500_000:])  # two frames
    rng = random.Random(1)
    for _ in range(5):
        out = io.BytesIO()
        decompressor = codec.stream_decompressor(out)
        pos = 0
        while pos < len(frames):
            step = rng.randint(1, 70_000)
            decompressor.write(frames[pos : pos + step])
            pos += step
        decompressor.flush()
        assert out.getvalue() == payload == codec.decompress(frames)
    with pytest.raises(ValueError, match="gz"):
        get_codec("gz").stream_decompressor(io.BytesIO())
    with pytest.raises(CompressionError):
        codec.stream_decompressor(io.BytesIO()).write(b"not zstd at all")


def test_stream_decompressor_hands_over_bounded_pieces_of_a_compressible_shard():
    from mdsloader.mds.compression import StreamDecompressor, get_codec

    pieces: list[int] = []

    class Target:
        def write(self, data: bytes) -> int:
            pieces.append(len(data))
            return len(data)

    zeros = get_codec("zstd").compress(bytes(64 << 20))  # ~2 KiB that expand 30,000-fold
    decompressor = StreamDecompressor(Target(), write_size=1 << 20)
    decompressor.write(zeros)
    decompressor.flush()
    assert sum(pieces) == 64 << 20
    assert max(pieces) <= 1 << 20
