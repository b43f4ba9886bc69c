"""``GET /v1/jobs/{id}/dataset``: the summary and preview of a published dataset, for every column
encoding, against a real Redis and real MDS files.

Each dataset is written with the loader's ``MDSWriter`` into the job's run directory and published
the way a worker publishes (``<target>/index.json`` listing ``<job id>/...`` shards); the job is
then moved to ``succeeded`` through the store's transitions.
"""

from __future__ import annotations

import json
import pathlib
import pickle
from decimal import Decimal
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.preview import MAX_STR
from mdsloader import MDSWriter
from mdsloader.mds.index import dump_index, merge_shards, read_index
from tests.service.conftest import AUTH
from worker.access.principals import token_digest
from worker.jobs import JobResult, JobState, RedisJobStore

pytestmark = pytest.mark.integration

ROWS = 7
COLUMNS = {
    "i8": "int8", "i16": "int16", "i32": "int32", "i64": "int64",
    "u8": "uint8", "u16": "uint16", "u32": "uint32", "u64": "uint64",
    "f16": "float16", "f32": "float32", "f64": "float64",
    "int": "int", "str": "str", "long_str": "str", "str_int": "str_int",
    "str_float": "str_float", "str_decimal": "str_decimal", "bytes": "bytes", "json": "json",
    "pkl": "pkl", "nd_any": "ndarray", "nd_f32": "ndarray:float32", "nd_fixed": "ndarray:int16:2,3",
    "jpeg": "jpeg", "png": "png", "pil": "pil", "jpeg_array": "jpeg_array",
    "list_pil": "list[pil]", "list_jpeg": "list[jpeg]", "list_png": "list[png]",
}


class Tripwire:
    """Unpickling it creates ``path``: the preview must never unpickle a ``pkl`` column."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def image(size: tuple[int, int], fmt: str | None, mode: str = "RGB"):
    picture = Image.new(mode, size, color=(200, 30, 30) if mode == "RGB" else 128)
    if fmt is None:
        return picture
    out = BytesIO()
    picture.save(out, format=fmt)
    return Image.open(BytesIO(out.getvalue()))


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    out = BytesIO()
    Image.new("RGB", size).save(out, format="JPEG")
    return out.getvalue()


def sample(i: int, tripwire: Path) -> dict[str, object]:
    jpeg = image((4 + i, 3), "JPEG")
    return {
        "i8": -i, "i16": -300 * i, "i32": 70_000 * i, "i64": -(2**40) * i,
        "u8": 200 + i, "u16": 60_000 + i, "u32": 4_000_000_000 + i, "u64": 2**63 + i,
        "f16": np.float16(0.5 * i), "f32": np.float32(1.25 * i),
        "f64": float("nan") if i == 3 else 0.1 * i,
        "int": 10**12 + i, "str": f"<b>row {i}</b>", "long_str": "x" * (MAX_STR + 50 + i),
        "str_int": i * 11, "str_float": i / 4, "str_decimal": Decimal(f"{i}.25"),
        "bytes": bytes(range(i, i + 20)), "json": {"i": i, "tags": ["a", "b"][: i % 3]},
        "pkl": pickle.dumps(Tripwire(tripwire)),
        "nd_any": np.arange(i + 1, dtype=np.uint8),
        "nd_f32": np.full((2, 5), i, dtype=np.float32),
        "nd_fixed": np.arange(6, dtype=np.int16).reshape(2, 3) * i,
        "jpeg": jpeg, "png": image((2, 2 + i), "PNG"), "pil": image((3, 2), None, "L"),
        "jpeg_array": [jpeg_bytes((4 + i, 3)), jpeg_bytes((5, 5))],
        "list_pil": [image((1, 1), None)] * (i % 3 + 1),
        "list_jpeg": [jpeg], "list_png": [image((2, 2), "PNG")],
    }


def expected_preview(i: int, pickled: bytes) -> dict[str, object]:
    """What the preview must show for ``sample(i)`` (bytes, arrays and images shortened)."""
    data = bytes(range(i, i + 20))
    jpeg = {"type": "image", "format": "JPEG", "mode": "RGB", "size": [4 + i, 3]}
    return {
        "i8": -i, "i16": -300 * i, "i32": 70_000 * i, "i64": -(2**40) * i,
        "u8": 200 + i, "u16": 60_000 + i, "u32": 4_000_000_000 + i, "u64": 2**63 + i,
        "f16": 0.5 * i, "f32": 1.25 * i, "f64": "nan" if i == 3 else 0.1 * i,
        "int": 10**12 + i, "str": f"<b>row {i}</b>",
        "long_str": {"type": "str", "length": MAX_STR + 50 + i, "head": "x" * MAX_STR,
                     "truncated": True},
        "str_int": i * 11, "str_float": i / 4, "str_decimal": f"{i}.25",
        "bytes": {"type": "bytes", "length": 20, "head": data[:16].hex(), "truncated": True},
        "json": {"i": i, "tags": ["a", "b"][: i % 3]},
        "pkl": {"type": "pkl", "length": len(pickled),
                "note": "pickled value: not unpickled (unpickling can run code)"},
        "nd_any": {"type": "ndarray", "dtype": "uint8", "shape": [i + 1],
                   "head": list(range(min(i + 1, 8))), "truncated": i + 1 > 8},
        "nd_f32": {"type": "ndarray", "dtype": "float32", "shape": [2, 5],
                   "head": [float(i)] * 8, "truncated": True},
        "nd_fixed": {"type": "ndarray", "dtype": "int16", "shape": [2, 3],
                     "head": [k * i for k in range(6)], "truncated": False},
        "jpeg": jpeg,
        "png": {"type": "image", "format": "PNG", "mode": "RGB", "size": [2, 2 + i]},
        "pil": {"type": "image", "format": None, "mode": "L", "size": [3, 2]},
        "jpeg_array": {"type": "list", "length": 2, "truncated": False, "head": [
            jpeg, {"type": "image", "format": "JPEG", "mode": "RGB", "size": [5, 5]}]},
        "list_pil": {"type": "list", "length": i % 3 + 1, "truncated": False, "head": [
            {"type": "image", "format": None, "mode": "RGB", "size": [1, 1]}] * (i % 3 + 1)},
        "list_jpeg": {"type": "list", "length": 1, "truncated": False, "head": [jpeg]},
        "list_png": {"type": "list", "length": 1, "truncated": False, "head": [
            {"type": "image", "format": "PNG", "mode": "RGB", "size": [2, 2]}]},
    }


def submit(client: TestClient, target: Path, headers: dict[str, str] | None = None) -> str:
    response = client.post(
        "/v1/jobs", json={"source_table": "db.events", "target": str(target)}, headers=headers
    )
    assert response.status_code == 202, response.text
    return response.json()["id"]


def publish(
    store: RedisJobStore,
    job_id: str,
    target: Path,
    samples: list[dict[str, object]],
    columns: dict[str, str],
    **writer: object,
) -> None:
    """Write ``samples`` into the job's run directory, publish the index, mark it succeeded."""
    part = target / job_id / "0"
    with MDSWriter(columns=columns, out=str(part), **writer) as out:
        for row in samples:
            out.write(row)
    index = merge_shards([(f"{job_id}/0", read_index(part))])
    (target / "index.json").write_bytes(dump_index(index))
    store.transition(job_id, JobState.RUNNING, expected={JobState.QUEUED})

    def succeed(record) -> None:
        record.result = JobResult(
            index_url=str(target / "index.json"), samples=len(samples),
            shards=len(index.shards), raw_bytes=0, zip_bytes=0, columns=columns,
        )

    store.transition(job_id, JobState.SUCCEEDED, expected={JobState.RUNNING}, mutate=succeed)


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code and body["status"] == status
    return body


@pytest.mark.parametrize("compression", [None, "zstd:3", "gz"])
def test_summary_and_preview_of_every_encoding(
    client: TestClient, store: RedisJobStore, allowed_root: Path, scratch: Path, compression
) -> None:
    tripwire = scratch / "unpickled"
    target = allowed_root / "all-encodings"
    job_id = submit(client, target)
    rows = [sample(i, tripwire) for i in range(ROWS)]
    # A small shard limit: the preview crosses shard boundaries.
    publish(store, job_id, target, rows, COLUMNS, compression=compression,
            hashes=["sha256", "xxh64"], size_limit=6000)

    summary = client.get(f"/v1/jobs/{job_id}/dataset").json()
    index = json.loads((target / "index.json").read_text())
    assert summary["job_id"] == job_id and summary["location"] == str(target)
    assert summary["samples"] == ROWS
    assert summary["shards"] == len(index["shards"]) > 1
    assert summary["raw_bytes"] == sum(s["raw_data"]["bytes"] for s in index["shards"])
    stored = sum((s["zip_data"] or s["raw_data"])["bytes"] for s in index["shards"])
    assert summary["stored_bytes"] == stored
    assert summary["compression"] == [compression]
    assert summary["hashes"] == ["sha256", "xxh64"] and summary["size_limit"] == 6000
    assert [(c["name"], c["encoding"]) for c in summary["columns"]] == sorted(COLUMNS.items())
    assert {c["name"]: c["size"] for c in summary["columns"]}["nd_fixed"] == 12
    first = summary["shard_list"][0]
    assert first["basename"].startswith(f"{job_id}/0/shard.00000.mds")
    assert set(first["hashes"]) == {"sha256", "xxh64"}
    assert summary["preview"] is None

    preview = client.get(f"/v1/jobs/{job_id}/dataset", params={"preview": 5}).json()["preview"]
    assert preview["requested"] == 5
    assert len(preview["samples"]) == 5
    for i, got in enumerate(preview["samples"]):
        want = expected_preview(i, rows[i]["pkl"])
        for name in COLUMNS:
            assert _close(got[name], want[name]), (i, name, got[name], want[name])
    assert not tripwire.exists(), "the preview unpickled a pkl column"

    everything = client.get(f"/v1/jobs/{job_id}/dataset?preview=100").json()["preview"]
    assert len(everything["samples"]) == ROWS  # fewer samples than asked for: all of them
    assert everything["samples"][6]["i64"] == -(2**40) * 6


def _close(got: object, want: object) -> bool:
    """Equal, with float tolerance (float16/float32 round trips)."""
    if isinstance(want, float) and isinstance(got, (int, float)):
        return abs(got - want) <= 1e-3 * max(1.0, abs(want))
    if isinstance(want, dict) and isinstance(got, dict):
        return want.keys() == got.keys() and all(_close(got[k], want[k]) for k in want)
    if isinstance(want, list) and isinstance(got, list):
        return len(want) == len(got) and all(_close(g, w) for g, w in zip(got, want))
    return got == want


def test_preview_size_is_bounded(
    client: TestClient, store: RedisJobStore, allowed_root: Path
) -> None:
    target = allowed_root / "small"
    job_id = submit(client, target)
    publish(store, job_id, target, [{"x": i} for i in range(3)], {"x": "int64"})
    for bad in ("101", "-1", "ten"):
        body = assert_problem(
            client.get(f"/v1/jobs/{job_id}/dataset", params={"preview": bad}),
            422, "invalid_request",
        )
        assert body["errors"][0]["field"] == "preview"
    zero = client.get(f"/v1/jobs/{job_id}/dataset?preview=0").json()
    assert zero["preview"] is None and zero["samples"] == 3


def test_a_job_that_has_not_succeeded_has_no_dataset(
    client: TestClient, store: RedisJobStore, allowed_root: Path
) -> None:
    job_id = submit(client, allowed_root / "pending")
    body = assert_problem(client.get(f"/v1/jobs/{job_id}/dataset"), 409, "dataset_not_ready")
    assert "queued" in body["detail"]
    store.transition(job_id, JobState.RUNNING, expected={JobState.QUEUED})
    assert_problem(client.get(f"/v1/jobs/{job_id}/dataset?preview=3"), 409, "dataset_not_ready")
    assert_problem(client.get("/v1/jobs/00000000000000000000000000ff/dataset"), 404,
                   "job_not_found")


def test_a_removed_index_is_a_clear_410(
    client: TestClient, store: RedisJobStore, allowed_root: Path
) -> None:
    target = allowed_root / "removed"
    job_id = submit(client, target)
    publish(store, job_id, target, [{"x": i} for i in range(3)], {"x": "int64"})
    (target / "index.json").unlink()
    body = assert_problem(client.get(f"/v1/jobs/{job_id}/dataset"), 410, "dataset_gone")
    assert "no longer there" in body["detail"] and job_id in body["detail"]


def test_a_dataset_published_over_by_another_job_is_410(
    client: TestClient, store: RedisJobStore, allowed_root: Path
) -> None:
    target = allowed_root / "overwritten"
    first = submit(client, target)
    publish(store, first, target, [{"x": 1}], {"x": "int64"})
    second = submit(client, target)
    publish(store, second, target, [{"x": 2}, {"x": 3}], {"x": "int64"})
    body = assert_problem(client.get(f"/v1/jobs/{first}/dataset"), 410, "dataset_gone")
    assert "another job has published over it" in body["detail"]
    assert client.get(f"/v1/jobs/{second}/dataset").json()["samples"] == 2


def test_a_corrupt_index_or_missing_shard_is_reported(
    client: TestClient, store: RedisJobStore, allowed_root: Path
) -> None:
    target = allowed_root / "corrupt"
    job_id = submit(client, target)
    publish(store, job_id, target, [{"x": i} for i in range(3)], {"x": "int64"},
            compression="zstd")
    index = (target / "index.json").read_bytes()
    shard = json.loads(index)["shards"][0]["zip_data"]["basename"]
    (target / shard).unlink()
    assert client.get(f"/v1/jobs/{job_id}/dataset").status_code == 200  # the summary is the index
    assert_problem(client.get(f"/v1/jobs/{job_id}/dataset?preview=1"), 410, "dataset_gone")
    (target / "index.json").write_bytes(index[:40])
    body = assert_problem(client.get(f"/v1/jobs/{job_id}/dataset"), 502, "dataset_unreadable")
    assert "corrupt" in body["detail"]


def test_another_principals_dataset_is_not_found(
    app_settings, enqueuer, store: RedisJobStore, allowed_root: Path, scratch: Path
) -> None:
    tokens = {"alice": "tok-alice-0123456789", "bob": "tok-bob-0123456789"}
    principals = scratch / "principals.json"
    principals.write_text(json.dumps({"principals": [
        {"name": name, "tokens": [token_digest(token)], "scopes": ["jobs:submit", "jobs:read"],
         "sources": ["db.*"], "targets": [str(allowed_root)]}
        for name, token in tokens.items()
    ]}))
    settings = app_settings.model_copy(update={"principals_file": principals, "api_tokens": []})
    alice = {"Authorization": f"Bearer {tokens['alice']}"}
    bob = {"Authorization": f"Bearer {tokens['bob']}"}
    with TestClient(create_app(settings, enqueue=enqueuer)) as client:
        target = allowed_root / "alice"
        job_id = submit(client, target, alice)
        publish(store, job_id, target, [{"x": 1}], {"x": "int64"})
        assert client.get(f"/v1/jobs/{job_id}/dataset?preview=1", headers=alice).status_code == 200
        body = assert_problem(
            client.get(f"/v1/jobs/{job_id}/dataset?preview=1", headers=bob), 404, "job_not_found"
        )
        assert body["detail"] == f"no job with id {job_id!r}"
        assert_problem(client.get(f"/v1/jobs/{job_id}/dataset"), 401, "unauthorized")
        me = client.get("/v1/whoami", headers=bob).json()
        assert me == {"name": "bob", "scopes": ["jobs:read", "jobs:submit"], "admin": False,
                      "auth_disabled": False}


def test_whoami_names_the_legacy_token_principal(client: TestClient) -> None:
    me = client.get("/v1/whoami", headers=AUTH).json()
    assert me["name"].startswith("token:") and me["admin"] is True


def test_unreachable_storage_is_503(
    client: TestClient, store: RedisJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import free_port

    # Nothing listens on this port: the dataset's store cannot be reached.
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for name, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    response = client.post(
        "/v1/jobs", json={"source_table": "db.events", "target": "s3://datasets/ok/x"}
    )
    job_id = response.json()["id"]
    store.transition(job_id, JobState.RUNNING, expected={JobState.QUEUED})
    store.transition(
        job_id, JobState.SUCCEEDED, expected={JobState.RUNNING},
        mutate=lambda r: setattr(r, "result", JobResult(
            index_url="s3://datasets/ok/x/index.json", samples=1, shards=1, raw_bytes=1,
            zip_bytes=0, columns={"x": "int64"})),
    )
    body = assert_problem(client.get(f"/v1/jobs/{job_id}/dataset"), 503, "storage_unavailable")
    assert job_id in body["detail"] and "s3://datasets/ok/x" in body["detail"]


def test_preview_values_are_json_safe_and_short() -> None:
    from app.preview import json_safe

    assert json_safe(float("inf"), "float64") == "inf"
    assert json_safe(np.float32("nan"), "float32") == "nan"
    assert json_safe(np.bool_(True), "uint8") is True
    assert json_safe(Decimal("1.50"), "str_decimal") == "1.50"
    document = {"values": list(range(200))}
    short = json_safe(document, "json")
    assert short["type"] == "json" and short["truncated"] and len(short["head"]) == MAX_STR
    assert json_safe({"x": float("nan")}, "json")["type"] == "json"  # NaN is not JSON
    assert json_safe([1, 2], "json") == [1, 2]
    big = json_safe(np.zeros((1000, 1000), np.float64), "ndarray:float64")
    assert big == {"type": "ndarray", "dtype": "float64", "shape": [1000, 1000],
                   "head": [0.0] * 8, "truncated": True}
    json.dumps([json_safe(v, "bytes") for v in (b"", b"\x00" * 100)], allow_nan=False)
