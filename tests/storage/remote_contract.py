"""The Storage contract, written once and run against each remote backend (S3, GCS and Azure).

A backend's test module imports these tests (``from remote_contract import *``) and defines the
fixture ``store``: a storage rooted at a fresh prefix on that backend's emulator. The functions
are collected in the importing module, so each backend runs them all against its own server.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from storage_helpers import RecordingSink

from mdsloader.errors import ObjectNotFoundError
from mdsloader.storage import Storage, upload_many

__all__ = [
    "test_contract_concurrent_uploads_and_writes_from_threads",
    "test_contract_every_method_round_trips",
    "test_contract_keys_with_special_characters_round_trip",
    "test_contract_missing_objects_are_not_found_at_once",
    "test_contract_pickled_storage_works_in_a_spawned_process",
    "test_contract_range_reads_follow_slice_semantics",
    "test_contract_stream_to_delivers_bounded_pieces",
    "test_contract_used_before_a_fork_gets_a_fresh_client_in_the_child",
    "test_contract_write_replaces_an_object_whole",
]

MIB = 1 << 20


def payload(size: int, seed: int = 0) -> bytes:
    """Position-dependent bytes: a part in the wrong place or a shifted range cannot pass."""
    return bytes((i * 31 + seed) % 251 for i in range(size))


def test_contract_every_method_round_trips(store: Any, tmp_path: Path) -> None:
    assert isinstance(store, Storage)
    store.write_bytes("index.json", b'{"version": 2}')
    store.write_bytes("00001/shard.00000.mds", b"abcdefghij")
    src = tmp_path / "src.bin"
    src.write_bytes(b"uploaded")
    store.upload_file(str(src), "00001/shard.00001.mds")

    assert store.child_url("index.json") == f"{store.url}/index.json"
    assert store.read_bytes("index.json") == b'{"version": 2}'
    assert store.read_range("00001/shard.00000.mds", 2, 5) == b"cde"
    assert store.exists("index.json") and not store.exists("nope.json")
    assert store.size("00001/shard.00001.mds") == 8
    assert store.list() == ["00001/shard.00000.mds", "00001/shard.00001.mds", "index.json"]
    assert store.list("00001/") == ["00001/shard.00000.mds", "00001/shard.00001.mds"]
    assert store.list("0000") == ["00001/shard.00000.mds", "00001/shard.00001.mds"]

    dest = tmp_path / "deep" / "down.bin"
    store.download_file("00001/shard.00001.mds", str(dest))
    assert dest.read_bytes() == b"uploaded"
    assert os.listdir(dest.parent) == ["down.bin"]  # no temporary file left behind

    sub = store.sub("00001")
    assert sub.url == f"{store.url}/00001"
    assert sub.list() == ["shard.00000.mds", "shard.00001.mds"]
    assert sub.read_bytes("shard.00000.mds") == b"abcdefghij"

    store.delete("index.json")
    store.delete("index.json")  # missing is fine
    assert not store.exists("index.json")
    assert store.delete_prefix("00001/") == 2
    assert store.list() == []


def test_contract_write_replaces_an_object_whole(store: Any, tmp_path: Path) -> None:
    store.write_bytes("a.bin", b"old content that is longer")
    store.write_bytes("a.bin", b"new")
    assert store.read_bytes("a.bin") == b"new"
    big = payload(9 * MIB + 7)  # above GCS's single-request limit (8 MiB): a resumable upload
    src = tmp_path / "big.bin"
    src.write_bytes(big)
    store.upload_file(str(src), "a.bin")
    assert store.size("a.bin") == len(big)
    store.download_file("a.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == big


def test_contract_range_reads_follow_slice_semantics(store: Any) -> None:
    store.write_bytes("r.bin", b"0123456789")
    assert store.read_range("r.bin", 0, 10) == b"0123456789"
    assert store.read_range("r.bin", 7, 20) == b"789"
    assert store.read_range("r.bin", 10, 20) == b""
    assert store.read_range("r.bin", 4, 4) == b""
    with pytest.raises(ValueError, match="range"):
        store.read_range("r.bin", 5, 4)
    with pytest.raises(ObjectNotFoundError):
        store.read_range("missing.bin", 4, 4)


def test_contract_stream_to_delivers_bounded_pieces(store: Any) -> None:
    data = payload(3 * MIB + 5, seed=3)
    store.write_bytes("s.bin", data)
    sink = RecordingSink()
    assert store.stream_to("s.bin", sink, chunk_size=MIB) == len(data)
    assert sink.data == data and sink.restarts == 1
    assert max(len(piece) for piece in sink.pieces) <= MIB and len(sink.pieces) >= 4
    store.write_bytes("empty.bin", b"")
    empty = RecordingSink()
    assert store.stream_to("empty.bin", empty) == 0 and empty.data == b"" and empty.restarts == 1
    with pytest.raises(ValueError, match="chunk_size"):
        store.stream_to("s.bin", sink, chunk_size=0)
    failing = RecordingSink(fail_after=10)
    with pytest.raises(OSError, match="injected"):  # the sink's own error: not retried
        store.stream_to("s.bin", failing, chunk_size=MIB)
    assert failing.restarts == 1


def test_contract_missing_objects_are_not_found_at_once(store: Any, tmp_path: Path) -> None:
    started = time.monotonic()
    sink = RecordingSink()
    for call in (
        lambda: store.read_bytes("nope.bin"),
        lambda: store.read_range("nope.bin", 0, 4),
        lambda: store.size("nope.bin"),
        lambda: store.stream_to("nope.bin", sink),
        lambda: store.download_file("nope.bin", str(tmp_path / "x")),
    ):
        with pytest.raises(ObjectNotFoundError, match=r"nope\.bin"):
            call()
    assert os.listdir(tmp_path) == [] and sink.data == b""
    assert time.monotonic() - started < 5  # a 404 is final: no retries, no backoff


def test_contract_concurrent_uploads_and_writes_from_threads(store: Any, tmp_path: Path) -> None:
    items = []
    for i in range(12):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(payload(1000 + i, seed=i))
        items.append((str(path), f"shards/f{i:02d}.bin"))
    upload_many(store, items, max_workers=6)
    threads = [
        threading.Thread(target=store.write_bytes, args=(f"w/{i:02d}.bin", payload(500, seed=i)))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.list("shards/") == [f"shards/f{i:02d}.bin" for i in range(12)]
    assert all(store.read_bytes(rel) == Path(local).read_bytes() for local, rel in items)
    assert all(store.read_bytes(f"w/{i:02d}.bin") == payload(500, seed=i) for i in range(8))


def test_contract_keys_with_special_characters_round_trip(store: Any) -> None:
    names = ["a b/c+d.bin", "q?x#y=1.bin", "ünï/çødé.bin", "pct%20%25.bin", "t\u00e9st&.bin"]
    for i, name in enumerate(names):
        store.write_bytes(name, bytes([i]) * 3)
    assert store.list() == sorted(names)  # listings url-encode names; they must come back decoded
    assert [store.read_bytes(name) for name in names] == [bytes([i]) * 3 for i in range(5)]
    assert store.delete_prefix("") == len(names)


def _child_writes(storage: Any, relpath: str) -> None:
    # Runs in a spawned interpreter: the client must be rebuilt from the pickled settings.
    storage.write_bytes(relpath, storage.read_bytes("from-parent.txt") + b" and back")


def test_contract_pickled_storage_works_in_a_spawned_process(store: Any) -> None:
    store.write_bytes("from-parent.txt", b"there")
    state = store.__getstate__()
    assert "_clients" not in state and all(
        isinstance(v, str | int | float | type(None)) or hasattr(v, "__dataclass_fields__")
        for v in state.values()
    )  # settings only: no client, session or lock
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store and clone.read_bytes("from-parent.txt") == b"there"

    child = multiprocessing.get_context("spawn").Process(
        target=_child_writes, args=(store, "from-child.txt")
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    assert store.read_bytes("from-child.txt") == b"there and back"


def _child_after_fork(storage: Any) -> None:
    parent_pid = storage._clients._pid
    storage.write_bytes("forked.txt", b"child")
    # The parent's client (and its pooled sockets) must not be reused across the fork.
    assert storage._clients._pid == os.getpid() != parent_pid


def test_contract_used_before_a_fork_gets_a_fresh_client_in_the_child(store: Any) -> None:
    store.write_bytes("warm.txt", b"parent")  # the parent now holds a client
    child = multiprocessing.get_context("fork").Process(target=_child_after_fork, args=(store,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert store.read_bytes("forked.txt") == b"child"
