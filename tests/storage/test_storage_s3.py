"""S3Storage against the real S3 server on loopback: the storage contract (remote_contract.py),
and what is S3's own: multipart, pagination, batched deletes, pickled state, missing buckets,
anonymous reads and the memory of a stream."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import tracemalloc
from pathlib import Path

import boto3
import pytest
from remote_contract import *  # noqa: F403 - the shared contract tests run against this backend
from remote_contract import payload
from storage_helpers import fast_options

from mdsloader.errors import ObjectNotFoundError
from mdsloader.storage import S3Storage, open_storage
from mdsloader.storage import s3 as s3_module

pytestmark = pytest.mark.integration

MIB = 1 << 20


@pytest.fixture
def store(s3: S3Storage) -> S3Storage:
    """The contract's storage: ``s3://<fresh bucket>/root`` on the loopback S3 server."""
    return s3


def test_multipart_upload_and_download_round_trip(s3_endpoint: str, s3_bucket: str, tmp_path):
    options = fast_options(s3_endpoint, multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    store = S3Storage(s3_bucket.removeprefix("s3://"), "mp", options=options)
    data = payload(12 * MIB)
    src = tmp_path / "big.bin"
    src.write_bytes(data)

    store.upload_file(str(src), "big.bin")
    store.write_bytes("big2.bin", data)

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for key in ("mp/big.bin", "mp/big2.bin"):
        etag = client.head_object(Bucket=store.bucket, Key=key)["ETag"]
        assert etag.strip('"').endswith("-3"), f"{key} was not uploaded in 3 parts: {etag}"
    assert store.size("big.bin") == len(data)
    dest = tmp_path / "back.bin"
    store.download_file("big.bin", str(dest))  # ranged, concurrent GETs above the threshold
    assert dest.read_bytes() == data
    assert store.read_bytes("big2.bin") == data
    start, end = 5 * MIB - 10, 5 * MIB + 10  # across a part boundary
    assert store.read_range("big.bin", start, end) == data[start:end]


def test_listing_follows_pagination(s3_endpoint: str, s3_bucket: str) -> None:
    store = S3Storage(
        s3_bucket.removeprefix("s3://"), "", options=fast_options(s3_endpoint, page_size=2)
    )
    names = [f"d/{i:02d}.bin" for i in range(7)] + ["e/x.bin", "dz.bin"]
    for name in names:
        store.write_bytes(name, name.encode())
    assert store.list() == sorted(names)
    assert store.list("d/") == [f"d/{i:02d}.bin" for i in range(7)]
    assert store.list("d") == sorted([*(f"d/{i:02d}.bin" for i in range(7)), "dz.bin"])
    assert store.url == s3_bucket


def test_delete_prefix_deletes_in_batches(s3: S3Storage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_module, "DELETE_BATCH", 3)
    for i in range(7):
        s3.write_bytes(f"job/{i}.bin", b"x")
    s3.write_bytes("keep.bin", b"k")
    assert s3.delete_prefix("job/") == 7
    assert s3.list() == ["keep.bin"]
    assert s3.delete_prefix("job/") == 0


def test_pickled_state_is_the_settings_only(s3: S3Storage) -> None:
    assert s3.url.endswith("/root")
    assert set(s3.__getstate__()) == {"bucket", "prefix", "options"}  # no client, no lock
    clone = pickle.loads(pickle.dumps(s3))
    assert (clone.bucket, clone.prefix, clone.options) == (s3.bucket, s3.prefix, s3.options)


def test_missing_bucket_raises_object_not_found_naming_it(s3_endpoint: str) -> None:
    store = S3Storage("no-such-bucket-4c1d", "p", options=fast_options(s3_endpoint))
    with pytest.raises(ObjectNotFoundError, match="no-such-bucket-4c1d"):
        store.read_bytes("index.json")
    with pytest.raises(ObjectNotFoundError, match="bucket 'no-such-bucket-4c1d' does not exist"):
        store.list()
    with pytest.raises(ObjectNotFoundError, match="no-such-bucket-4c1d"):
        store.write_bytes("a", b"x")


def test_missing_local_file_on_upload_names_the_local_path(s3: S3Storage, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFoundError, match=r"absent\.bin"):
        s3.upload_file(str(tmp_path / "absent.bin"), "a.bin")


def test_open_storage_reads_the_endpoint_from_the_environment(s3_bucket: str) -> None:
    store = open_storage(f"{s3_bucket}/x/y/", retries=1, timeout=5)
    assert isinstance(store, S3Storage)
    assert store.url == f"{s3_bucket}/x/y"
    assert store.options.endpoint_url == os.environ["S3_ENDPOINT_URL"]
    assert (store.options.retries, store.options.timeout) == (1, 5)
    store.write_bytes("k", b"v")
    assert store.list() == ["k"]


def test_without_credentials_public_objects_are_read_anonymously(
    s3: S3Storage, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s3.write_bytes("public.txt", b"open data")
    client = boto3.client("s3", endpoint_url=s3.options.endpoint_url)
    client.put_object_acl(Bucket=s3.bucket, Key="root/public.txt", ACL="public-read")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probing
    anonymous = pickle.loads(pickle.dumps(s3))  # a fresh client, built without credentials
    assert anonymous.read_bytes("public.txt") == b"open data"
    assert anonymous == s3
    assert hash(anonymous) == hash(s3)


class _CountingSink:
    def __init__(self) -> None:
        self.total = 0

    def restart(self) -> None:
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)


def _peak_allocations(storage: S3Storage, relpath: str, whole: bool, queue) -> None:
    # Runs in a spawned interpreter, so that the S3 server's own buffers (it lives in the test
    # process) are not counted: only the client's Python allocations are traced.
    storage.size(relpath)  # the client and its connection exist before measuring
    sink = _CountingSink()
    tracemalloc.start()
    if whole:
        sink.write(storage.read_bytes(relpath))
    else:
        storage.stream_to(relpath, sink, chunk_size=MIB)
    queue.put((sink.total, tracemalloc.get_traced_memory()[1]))


def test_stream_to_holds_a_piece_not_the_whole_object(s3: S3Storage) -> None:
    size = 24 * MIB
    s3.write_bytes("huge.bin", os.urandom(size))
    ctx = multiprocessing.get_context("spawn")
    peaks = {}
    for whole in (True, False):
        queue = ctx.Queue()
        child = ctx.Process(target=_peak_allocations, args=(s3, "huge.bin", whole, queue))
        child.start()
        delivered, peaks[whole] = queue.get(timeout=60)
        child.join(timeout=60)
        assert child.exitcode == 0 and delivered == size
    assert peaks[True] >= size  # the measurement does see a whole-object read...
    assert peaks[False] < 4 * MIB  # ...and streaming never holds more than a few pieces
