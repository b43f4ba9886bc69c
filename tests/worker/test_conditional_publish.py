"""The commit of index.json is conditional: it never replaces an index it did not read.

Against a local directory and the moto S3 server on loopback (moto 5 honours ``If-None-Match: *``
and ``If-Match`` on PutObject: this module would fail if it did not).
"""

from __future__ import annotations

import pytest

from mdsloader.storage import open_storage
from tests.worker.test_publish_logic import write_partition
from worker.convert.conditional import PublishConflict, read_index, write_index
from worker.convert.publish import Publisher
from worker.errors import TargetExistsConversionError


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return open_storage(str(tmp_path / "ds"))
    bucket = request.getfixturevalue("s3_bucket")
    return open_storage(f"{bucket}/ds")


def test_a_new_index_is_never_written_over_one_that_appeared(storage) -> None:
    seen = read_index(storage)
    assert seen.data is None
    storage.write_bytes("index.json", b'{"other": 1}')
    with pytest.raises(PublishConflict):
        write_index(storage, b'{"ours": 1}', seen)
    assert storage.read_bytes("index.json") == b'{"other": 1}'


def test_a_replacement_needs_the_index_that_was_read(storage) -> None:
    storage.write_bytes("index.json", b'{"v": 1}')
    seen = read_index(storage)
    storage.write_bytes("index.json", b'{"v": 2}')  # someone else published meanwhile
    with pytest.raises(PublishConflict):
        write_index(storage, b'{"v": 3}', seen)
    assert storage.read_bytes("index.json") == b'{"v": 2}'
    write_index(storage, b'{"v": 3}', read_index(storage))
    assert storage.read_bytes("index.json") == b'{"v": 3}'


def test_a_write_that_already_landed_counts_as_done(storage) -> None:
    seen = read_index(storage)
    write_index(storage, b'{"v": 1}', seen)
    write_index(storage, b'{"v": 1}', seen)  # a retried commit after a lost response
    assert storage.read_bytes("index.json") == b'{"v": 1}'


def test_publisher_refuses_when_another_run_published_after_its_check(tmp_path) -> None:
    root = open_storage(str(tmp_path))
    late = Publisher(root, "late", "error")
    late.check_target()  # sees an empty target
    Publisher(open_storage(str(tmp_path)), "early", "error").publish(
        [write_partition(tmp_path, "early", 0, ["shard.00000.mds.zstd"])]
    )
    with pytest.raises(TargetExistsConversionError, match="another job published"):
        late.publish([write_partition(tmp_path, "late", 0, ["shard.00000.mds.zstd"])])
    index = read_index(root).data or b""
    assert b"early/00000" in index and b"late/" not in index
