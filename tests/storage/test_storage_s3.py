"""S3Storage against the real S3 server on loopback: every Storage method, multipart, ranges,
pagination, threads, pickling into a spawned process, and missing objects and buckets."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import tracemalloc
from pathlib import Path

import boto3
import pytest
from storage_helpers import RecordingSink, fast_options

from mdsloader.errors import ObjectNotFoundError
from mdsloader.storage import S3Storage, Storage, open_storage, upload_many
from mdsloader.storage import s3 as s3_module

pytestmark = pytest.mark.integration

MIB = 1 << 20


def _payload(size: int, seed: int = 0) -> bytes:
    # Position-dependent bytes, so a part in the wrong place or a shifted range cannot pass.
    return bytes((i * 31 + seed) % 251 for i in range(size))


def test_round_trip_of_every_method(s3: S3Storage, tmp_path: Path) -> None:
    assert isinstance(s3, Storage)
    s3.write_bytes("index.json", b'{"version": 2}')
    s3.write_bytes("00001/shard.00000.mds", b"abcdefghij")
    src = tmp_path / "src.bin"
    src.write_bytes(b"uploaded")
    s3.upload_file(str(src), "00001/shard.00001.mds")

    assert s3.url.endswith("/root")
    assert s3.child_url("index.json") == f"{s3.url}/index.json"
    assert s3.read_bytes("index.json") == b'{"version": 2}'
    assert s3.read_range("00001/shard.00000.mds", 2, 5) == b"cde"
    assert s3.exists("index.json")
    assert not s3.exists("nope.json")
    assert s3.size("00001/shard.00001.mds") == 8
    assert s3.list() == ["00001/shard.00000.mds", "00001/shard.00001.mds", "index.json"]
    assert s3.list("00001/") == ["00001/shard.00000.mds", "00001/shard.00001.mds"]

    dest = tmp_path / "deep" / "down.bin"
    s3.download_file("00001/shard.00001.mds", str(dest))
    assert dest.read_bytes() == b"uploaded"
    assert os.listdir(dest.parent) == ["down.bin"]  # no temporary file left behind

    sub = s3.sub("00001")
    assert sub.url == f"{s3.url}/00001"
    assert sub.list() == ["shard.00000.mds", "shard.00001.mds"]
    assert sub.read_bytes("shard.00000.mds") == b"abcdefghij"

    s3.delete("index.json")
    s3.delete("index.json")  # missing is fine
    assert not s3.exists("index.json")
    assert s3.delete_prefix("00001/") == 2
    assert s3.list() == []


def test_write_bytes_replaces_an_object(s3: S3Storage) -> None:
    s3.write_bytes("a.bin", b"old")
    s3.write_bytes("a.bin", b"new content")
    assert s3.read_bytes("a.bin") == b"new content"


def test_read_range_follows_slice_semantics(s3: S3Storage) -> None:
    s3.write_bytes("r.bin", b"0123456789")
    assert s3.read_range("r.bin", 0, 10) == b"0123456789"
    assert s3.read_range("r.bin", 7, 20) == b"789"
    assert s3.read_range("r.bin", 10, 20) == b""
    assert s3.read_range("r.bin", 4, 4) == b""
    with pytest.raises(ValueError, match="range"):
        s3.read_range("r.bin", 5, 4)
    with pytest.raises(ObjectNotFoundError):
        s3.read_range("missing.bin", 3, 3)


def test_multipart_upload_and_download_round_trip(s3_endpoint: str, s3_bucket: str, tmp_path):
    options = fast_options(s3_endpoint, multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    store = S3Storage(s3_bucket.removeprefix("s3://"), "mp", options=options)
    data = _payload(12 * MIB)
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


def test_concurrent_uploads_from_threads(s3: S3Storage, tmp_path: Path) -> None:
    items = []
    for i in range(24):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(_payload(1000 + i, seed=i))
        items.append((str(path), f"up/{i:02d}.bin"))
    upload_many(s3, items, max_workers=8)

    def write(i: int) -> None:
        s3.write_bytes(f"w/{i:02d}.bin", _payload(500, seed=i))

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(s3.list("up/")) == 24
    assert all(s3.read_bytes(f"up/{i:02d}.bin") == _payload(1000 + i, seed=i) for i in range(24))
    assert all(s3.read_bytes(f"w/{i:02d}.bin") == _payload(500, seed=i) for i in range(8))


def _child_writes(storage: S3Storage, relpath: str) -> None:
    # Runs in a spawned interpreter: the client must be rebuilt from the pickled settings.
    storage.write_bytes(relpath, storage.read_bytes("from-parent.txt") + b" and back")


def test_pickled_storage_works_in_a_spawned_process(s3: S3Storage) -> None:
    s3.write_bytes("from-parent.txt", b"there")
    state = s3.__getstate__()
    assert set(state) == {"bucket", "prefix", "options"}  # no client, no lock
    clone = pickle.loads(pickle.dumps(s3))
    assert clone.read_bytes("from-parent.txt") == b"there"

    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_child_writes, args=(s3, "from-child.txt"))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert s3.read_bytes("from-child.txt") == b"there and back"


def _child_after_fork(storage: S3Storage) -> None:
    parent_pid = storage._clients._pid
    storage.write_bytes("forked.txt", b"child")
    # The parent's client (and its pooled sockets) must not be reused across the fork.
    assert storage._clients._pid == os.getpid() != parent_pid


def test_storage_used_before_a_fork_gets_a_fresh_client_in_the_child(s3: S3Storage) -> None:
    s3.write_bytes("warm.txt", b"parent")  # the parent now holds a client
    child = multiprocessing.get_context("fork").Process(target=_child_after_fork, args=(s3,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert s3.read_bytes("forked.txt") == b"child"


def test_missing_object_raises_object_not_found(s3: S3Storage, tmp_path: Path) -> None:
    for call in (
        lambda: s3.read_bytes("nope.bin"),
        lambda: s3.read_range("nope.bin", 0, 4),
        lambda: s3.size("nope.bin"),
        lambda: s3.download_file("nope.bin", str(tmp_path / "x")),
    ):
        with pytest.raises(ObjectNotFoundError, match=r"nope\.bin"):
            call()
    assert os.listdir(tmp_path) == []


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


def test_keys_with_special_characters_round_trip(s3: S3Storage) -> None:
    names = sorted(
        ["a b.bin", "hash#q?x=1.bin", "plus+and%25.bin", "ünïcødé/ß.bin", "t\u00e9st&.bin"]
    )
    for name in names:
        s3.write_bytes(name, name.encode())
    assert s3.list() == names  # ListObjectsV2 url-encodes keys; they must come back decoded
    assert [s3.read_bytes(name) for name in names] == [name.encode() for name in names]
    assert s3.delete_prefix("") == len(names)


def test_stream_to_delivers_the_object_in_bounded_pieces(s3: S3Storage) -> None:
    data = _payload(3 * MIB + 7)
    s3.write_bytes("big.bin", data)
    sink = RecordingSink()
    assert s3.stream_to("big.bin", sink, chunk_size=MIB) == len(data)
    assert sink.data == data
    assert max(len(piece) for piece in sink.pieces) <= MIB
    assert len(sink.pieces) >= 4
    assert sink.restarts == 1
    empty = RecordingSink()
    s3.write_bytes("empty.bin", b"")
    assert s3.stream_to("empty.bin", empty) == 0 and empty.data == b"" and empty.restarts == 1


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


def test_stream_to_reports_a_missing_object(s3: S3Storage) -> None:
    sink = RecordingSink()
    with pytest.raises(ObjectNotFoundError, match=r"nope\.bin"):
        s3.stream_to("nope.bin", sink)
    assert sink.data == b""
