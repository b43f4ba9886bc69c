"""Streaming from the S3 server on loopback (moto): cold cache, splits, stale index, DataLoader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from s3_child import ensure_peak

from mdsloader.dataloader import StreamingDataLoader
from mdsloader.dataset import StreamingDataset
from tests.dataset.conftest import write_dataset

pytestmark = pytest.mark.integration


def upload(bucket: str, root: Path, prefix: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
    name = bucket.removeprefix("s3://")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), name, f"{prefix}/{path.relative_to(root)}")
    return f"{bucket}/{prefix}"


def test_cold_cache_streams_every_sample_from_s3(s3_bucket, tmp_path: Path):
    data = write_dataset(
        tmp_path / "data" / "train", [20, 31, 9], compression="zstd", hashes=["xxh64"]
    )
    remote = upload(s3_bucket, tmp_path / "data", "ds")
    ds = StreamingDataset(
        remote=remote,
        split="train",
        local=str(tmp_path / "cache"),
        batch_size=4,
        shuffle=True,
        validate_hash="xxh64",
    )
    loader = StreamingDataLoader(ds, batch_size=4, num_workers=2)
    ids = sorted(int(i) for batch in loader for i in batch["id"])
    assert ids == list(range(60))
    assert (tmp_path / "cache" / "train" / "p0001" / "shard.00000.mds").exists()
    assert data.exists()


def test_a_changed_remote_index_replaces_the_cached_dataset(s3_bucket, tmp_path: Path):
    remote = upload(s3_bucket, write_dataset(tmp_path / "v1", [5, 5], hashes=["xxh64"]), "ds")
    local = str(tmp_path / "cache")
    first = StreamingDataset(remote=remote, local=local, batch_size=2)
    assert sorted(int(s["id"]) for s in first) == list(range(10))
    upload(s3_bucket, write_dataset(tmp_path / "v2", [4, 4, 4], start=500, hashes=["xxh64"]), "ds")
    second = StreamingDataset(remote=remote, local=local, batch_size=2)
    assert sorted(int(s["id"]) for s in second) == list(range(500, 512))


def test_a_large_shard_downloads_in_bounded_memory(s3_bucket, tmp_path: Path):
    import multiprocessing

    import zstandard

    # 24 incompressible MiB: a whole-shard read, or a compressed copy in memory, would show.
    data = write_dataset(
        tmp_path / "data", [24], compression="zstd", hashes=["xxh64"], payload=1 << 20
    )
    remote = upload(s3_bucket, data, "big")
    ctx = multiprocessing.get_context("spawn")  # the S3 server's buffers stay in this process
    queue = ctx.Queue()
    child = ctx.Process(target=ensure_peak, args=(remote, str(tmp_path / "cache"), queue))
    child.start()
    path, peak = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    zipped = (data / "p0000" / "shard.00000.mds.zstd").read_bytes()
    assert len(zipped) > 24 << 20
    assert Path(path).read_bytes() == zstandard.ZstdDecompressor().decompress(zipped)
    # ~3 MiB: a piece off the socket, its copy, and a piece of output (the old s3transfer path: 11).
    assert peak < 4.5 * (1 << 20), f"peak Python allocations {peak / (1 << 20):.1f} MiB"
