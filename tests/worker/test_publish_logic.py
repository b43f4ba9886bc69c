"""Publication and error mapping without Spark: a LocalStorage and hand-made partition indexes."""

from __future__ import annotations

import pytest

from mdsloader.mds.index import FileInfo, Index, ShardInfo, read_index
from mdsloader.storage import open_storage
from worker.convert.failures import to_conversion_error
from worker.convert.partitions import executor_failure
from worker.convert.publish import PartitionOutput, Publisher, check_run_dir
from worker.errors import (
    ColumnOverrideError,
    PermanentConversionError,
    TargetExistsConversionError,
    TransientConversionError,
)


def shard(name: str, samples: int = 1) -> ShardInfo:
    return ShardInfo(
        column_encodings=("int64",), column_names=("x",), column_sizes=(8,), compression="zstd",
        hashes=(), raw_data=FileInfo(name.removesuffix(".zstd"), 20), samples=samples,
        size_limit=1 << 26, zip_data=FileInfo(name, 10),
    )


def write_partition(root, run: str, partition: int, names: list[str]) -> PartitionOutput:
    for name in [*names, "index.json"]:
        path = root / run / f"{partition:05d}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    index = Index(tuple(shard(n) for n in names))
    return PartitionOutput(partition, len(names), index)


def files(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_publish_merges_in_partition_order_and_removes_orphans(tmp_path) -> None:
    outputs = [
        write_partition(tmp_path, "r", 1, ["shard.00000.mds.zstd"]),
        write_partition(tmp_path, "r", 0, ["shard.00000.mds.zstd", "shard.00001.mds.zstd"]),
    ]
    (tmp_path / "r" / "00000" / "shard.00002.mds.zstd").write_bytes(b"orphan of a failed try")
    (tmp_path / "r" / "00007").mkdir()
    (tmp_path / "r" / "00007" / "shard.00000.mds.zstd").write_bytes(b"partition gone on re-run")
    publisher = Publisher(open_storage(str(tmp_path)), "r", "error")
    publisher.check_target()
    index = publisher.publish(outputs)

    assert [s.file.basename for s in index.shards] == [
        "r/00000/shard.00000.mds.zstd", "r/00000/shard.00001.mds.zstd",
        "r/00001/shard.00000.mds.zstd",
    ]
    assert read_index(tmp_path) == index
    assert files(tmp_path) == [
        "index.json", "r/00000/index.json", "r/00000/shard.00000.mds.zstd",
        "r/00000/shard.00001.mds.zstd", "r/00001/index.json", "r/00001/shard.00000.mds.zstd",
    ]


def test_error_mode_refuses_another_runs_dataset_but_not_its_own(tmp_path) -> None:
    Publisher(open_storage(str(tmp_path)), "a", "error").publish(
        [write_partition(tmp_path, "a", 0, ["shard.00000.mds.zstd"])]
    )
    with pytest.raises(TargetExistsConversionError):
        Publisher(open_storage(str(tmp_path)), "b", "error").check_target()
    Publisher(open_storage(str(tmp_path)), "a", "error").check_target()


def overwrite(tmp_path, run: str) -> None:
    publisher = Publisher(open_storage(str(tmp_path)), run, "overwrite")
    publisher.check_target()
    publisher.publish([write_partition(tmp_path, run, 0, ["shard.00000.mds.zstd"])])


def retired_paths(tmp_path) -> list[str]:
    from worker.convert.publish import read_retired

    return [e.path for e in read_retired(open_storage(str(tmp_path)))]


def test_overwrite_retires_the_replaced_generations_for_housekeeping(tmp_path) -> None:
    Publisher(open_storage(str(tmp_path)), "old", "error").publish(
        [write_partition(tmp_path, "old", 0, ["shard.00000.mds.zstd"])]
    )
    overwrite(tmp_path, "new")
    assert read_index(tmp_path).shards[0].file.basename == "new/00000/shard.00000.mds.zstd"
    # A reader mid-epoch on the old index still finds its shards after the swap ...
    assert "old/00000/shard.00000.mds.zstd" in files(tmp_path)
    overwrite(tmp_path, "newer")
    # ... even after another overwrite: housekeeping removes retired generations after a grace
    # period (worker.housekeeping), publication never does.
    names = files(tmp_path)
    assert "old/00000/shard.00000.mds.zstd" in names
    assert "new/00000/shard.00000.mds.zstd" in names
    assert retired_paths(tmp_path) == ["old/", "new/"]
    assert read_index(tmp_path).shards[0].file.basename == "newer/00000/shard.00000.mds.zstd"


def test_overwrite_retires_loose_shards_of_a_dataset_written_in_place(tmp_path) -> None:
    (tmp_path / "shard.00000.mds").write_bytes(b"x")
    (tmp_path / "index.json").write_bytes(
        b'{"shards": [{"column_encodings": ["int64"], "column_names": ["id"], "column_sizes": [8],'
        b' "compression": null, "format": "mds", "hashes": [], "raw_data": {"basename":'
        b' "shard.00000.mds", "bytes": 1, "hashes": {}}, "samples": 1, "size_limit": null,'
        b' "version": 2, "zip_data": null}], "version": 2}'
    )
    overwrite(tmp_path, "a")
    assert "shard.00000.mds" in files(tmp_path)
    overwrite(tmp_path, "b")
    names = files(tmp_path)
    assert "shard.00000.mds" in names and "a/00000/shard.00000.mds.zstd" in names
    assert retired_paths(tmp_path) == ["shard.00000.mds", "a/"]


def test_discard_removes_the_whole_run(tmp_path) -> None:
    write_partition(tmp_path, "r", 0, ["shard.00000.mds.zstd"])
    Publisher(open_storage(str(tmp_path)), "r", "error").discard()
    assert files(tmp_path) == []


@pytest.mark.parametrize("run_id", ["", "..", "a/b", "x y", "../up"])
def test_run_ids_must_be_one_safe_segment(run_id) -> None:
    with pytest.raises(PermanentConversionError):
        check_run_dir(run_id)


def test_executor_errors_come_back_as_the_same_worker_error() -> None:
    from mdsloader.errors import AccessDeniedError, StorageUnavailableError

    cases = [
        (ColumnOverrideError("column 'v' has the wrong shape"), ColumnOverrideError,
         "invalid_column_encoding"),
        (StorageUnavailableError("503 slow down"), TransientConversionError, "transient_failure"),
        (AccessDeniedError("403"), PermanentConversionError, "access_denied"),
        (ValueError("boom"), PermanentConversionError, "conversion_failed"),
    ]
    from mdsloader.errors import ObjectNotFoundError

    missing = ObjectNotFoundError("NoSuchBucket")
    cases.append((missing, PermanentConversionError, "target_not_found"))
    for raised, cls, code in cases:
        spark_text = f"Job aborted: PythonException: Traceback ...\n{executor_failure(raised)}\n"
        error = to_conversion_error(RuntimeError(spark_text))
        assert type(error) is cls and error.code == code
        assert str(raised) in error.message


def test_storage_and_network_failures_on_the_driver_are_transient() -> None:
    from mdsloader.errors import StorageUnavailableError

    assert to_conversion_error(StorageUnavailableError("down")).retryable
    assert to_conversion_error(ConnectionRefusedError("no")).retryable
    assert to_conversion_error(RuntimeError("ExecutorLostFailure (executor 1 exited)")).retryable
    assert not to_conversion_error(RuntimeError("something else")).retryable


def test_an_unreachable_s3_target_is_a_transient_failure_before_writing() -> None:
    from mdsloader.errors import StorageError
    from tests.conftest import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    storage = open_storage("s3://bucket/ds", retries=0, endpoint_url=endpoint)
    with pytest.raises(StorageError) as caught:
        Publisher(storage, "r", "error").check_target()
    error = to_conversion_error(caught.value)
    assert isinstance(error, TransientConversionError) and error.retryable


class FlakyIndexWrite:
    """A LocalStorage whose index.json write reports a failure (optionally after writing)."""

    def __init__(self, inner, *, lands: bool) -> None:
        self.inner, self.lands = inner, lands

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        if self.lands:
            self.inner.write_bytes(relpath, data)
        raise OSError("connection reset while reading the response")


def test_an_index_write_whose_response_was_lost_still_counts_as_published(tmp_path) -> None:
    output = write_partition(tmp_path, "r", 0, ["shard.00000.mds.zstd"])
    storage = FlakyIndexWrite(open_storage(str(tmp_path)), lands=True)
    Publisher(storage, "r", "error").publish([output])
    assert read_index(tmp_path).shards[0].file.basename == "r/00000/shard.00000.mds.zstd"


def test_a_failed_index_write_raises_and_publishes_nothing(tmp_path) -> None:
    output = write_partition(tmp_path, "r", 0, ["shard.00000.mds.zstd"])
    storage = FlakyIndexWrite(open_storage(str(tmp_path)), lands=False)
    with pytest.raises(OSError, match="connection reset"):
        Publisher(storage, "r", "error").publish([output])
    assert not (tmp_path / "index.json").exists()
