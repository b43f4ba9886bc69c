"""REST submit -> Celery worker -> Spark -> S3 -> StreamingDataLoader, for every common Spark type.

The source is a path-based parquet table written with pyarrow (no metastore, so the test process
never starts a second JVM); Spark reads it with the types below. Every row read back through our
loader (two DataLoader workers, shuffled) and through mosaicml-streaming must equal its source row
under the converter's documented type policy (mds-format.md 2.7).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 3_000
EPOCH_DAY = dt.date(1970, 1, 1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ENCODINGS = {
    "i": "int32", "l": "int64", "d": "float64", "s": "str", "b": "bytes",
    "emb": "ndarray:float32", "flag": "uint8", "day": "int32", "ts": "int64",
    "dec": "str_decimal",
}  # fmt: skip


def source_rows(n: int) -> list[dict[str, Any]]:
    """Rows with awkward values: negatives, unicode, empty strings and bytes, varied lengths."""
    rng = np.random.default_rng(7)
    rows = []
    for k in range(n):
        rows.append({
            "i": int(rng.integers(-(2**31), 2**31 - 1)),
            "l": k * 1_000_003 - 2**40,  # unique: the key that matches samples to rows
            "d": float(rng.normal()) * 1e6,
            "s": "" if k % 97 == 0 else f"row {k} ✓ " + "é" * (k % 13),
            "b": b"" if k % 89 == 0 else rng.bytes(int(rng.integers(1, 40))),
            "emb": rng.normal(size=int(rng.integers(1, 9))).astype(np.float32),
            "flag": bool(k % 3 == 0),
            "day": EPOCH_DAY + dt.timedelta(days=int(rng.integers(-20_000, 30_000))),
            "ts": EPOCH + dt.timedelta(microseconds=int(rng.integers(-(2**50), 2**50))),
            "dec": decimal.Decimal(int(rng.integers(-(10**11), 10**11))).scaleb(-3),
        })  # fmt: skip
    return rows


def write_parquet(directory: Path, rows: list[dict[str, Any]], files: int = 3) -> str:
    schema = pa.schema([
        ("i", pa.int32()), ("l", pa.int64()), ("d", pa.float64()), ("s", pa.string()),
        ("b", pa.binary()), ("emb", pa.list_(pa.float32())), ("flag", pa.bool_()),
        ("day", pa.date32()), ("ts", pa.timestamp("us", tz="UTC")), ("dec", pa.decimal128(12, 3)),
    ])  # fmt: skip
    directory.mkdir(parents=True)
    step = -(-len(rows) // files)
    for n, first in enumerate(range(0, len(rows), step)):
        chunk = [dict(r, emb=r["emb"].tolist()) for r in rows[first : first + step]]
        pq.write_table(pa.Table.from_pylist(chunk, schema), directory / f"part-{n}.parquet")
    return f"parquet.`{directory}`"


def expected_sample(row: dict[str, Any]) -> dict[str, Any]:
    """The decoded MDS sample of a source row: bool 0/1, days, microseconds, Decimal."""
    return {
        **row,
        "flag": int(row["flag"]),
        "day": (row["day"] - EPOCH_DAY).days,
        "ts": (row["ts"] - EPOCH) // dt.timedelta(microseconds=1),
    }


def assert_sample_equals(sample: dict[str, Any], row: dict[str, Any]) -> None:
    want = expected_sample(row)
    assert set(sample) == set(want)
    for name, value in want.items():
        got = sample[name]
        if name == "emb":
            assert isinstance(got, np.ndarray) and got.dtype == np.float32, (name, got)
            np.testing.assert_array_equal(got, value)
        elif name == "dec":
            assert isinstance(got, decimal.Decimal) and got == value, (name, got, value)
        elif name in ("s", "b"):
            assert type(got) is type(value) and got == value, (name, got, value)
        else:
            assert got == value, (name, got, value)


def columns_of(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Collate into a mapping of column lists, leaving every decoded value as it is.

    A mapping, so that StreamingDataLoader counts a batch by its first column's length; the
    default collate cannot stack ragged arrays, Decimals or bytes.
    """
    return {name: [sample[name] for sample in batch] for name in batch[0]}


def samples_of(columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    names = list(columns)
    return [dict(zip(names, values, strict=True)) for values in zip(*columns.values(), strict=True)]


def assert_all_rows(samples: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    by_key = {row["l"]: row for row in rows}
    keys = [int(sample["l"]) for sample in samples]
    assert len(keys) == len(rows) and set(keys) == set(by_key), "missing or repeated rows"
    for sample in samples:
        assert_sample_equals(sample, by_key[int(sample["l"])])


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    return source_rows(ROWS)


@pytest.fixture(scope="module")
def converted(stack, rows, tmp_path_factory) -> dict[str, Any]:
    """Submit the conversion over HTTP and wait for the worker to finish it."""
    # Under the stack's folder: the only source root the service allows.
    source = write_parquet(stack.base / "e2e-src" / "mixed", rows)
    target = f"{stack.bucket}/mixed/v1"
    body = {
        "source_table": source, "target": target, "compression": "zstd:3",
        "hashes": ["xxh64", "sha1"], "size_limit": "48kb", "partitions": 3,
    }  # fmt: skip
    with stack.client() as client:
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 202, response.text
        assert response.headers["location"].endswith(response.json()["id"])
        job = stack.wait_for(client, response.json()["id"])
    assert job["state"] == "succeeded", f"{job}\n{stack.worker.log_tail()}"
    return job


def test_job_reports_what_it_published(converted) -> None:
    result, progress = converted["result"], converted["progress"]
    assert result["samples"] == ROWS
    assert result["columns"] == ENCODINGS
    assert result["shards"] > 3  # 48 KB shards: several per partition
    assert result["index_url"].endswith("index.json")
    assert progress["rows_written"] == ROWS
    assert progress["partitions_done"] == progress["partitions_total"] == 3
    assert progress["shards_written"] == result["shards"]


def test_streaming_dataloader_reads_every_row_exactly(converted, rows, tmp_path) -> None:
    from mdsloader import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(
        remote=converted["request"]["target"], local=str(tmp_path / "cache"), batch_size=64,
        shuffle=True, shuffle_seed=11, validate_hash="xxh64",
    )  # fmt: skip
    loader = StreamingDataLoader(dataset, batch_size=64, num_workers=2, collate_fn=columns_of)
    samples = [sample for batch in loader for sample in samples_of(batch)]
    assert loader.num_samples_yielded == ROWS
    keys = [int(sample["l"]) for sample in samples]
    assert keys != sorted(keys), "shuffle=True yielded the rows in source order"
    assert_all_rows(samples, rows)


def test_reference_streaming_reads_the_same_dataset(converted, rows, reference, tmp_path) -> None:
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    try:
        dataset = reference.StreamingDataset(
            remote=converted["request"]["target"], local=str(tmp_path / "ref-cache"),
            batch_size=1, shuffle=False, validate_hash="sha1",
        )  # fmt: skip
        samples = [dataset[i] for i in range(dataset.num_samples)]
    finally:
        clean_stale_shared_memory()
    assert_all_rows(samples, rows)
    index = json.loads((tmp_path / "ref-cache" / "index.json").read_text())
    assert sum(shard["samples"] for shard in index["shards"]) == ROWS
