"""Whole datasets on the gs:// and azure:// emulators: MDSWriter writes there, a cold
StreamingDataset streams it through 2 DataLoader workers, the reference reads what we wrote and we
read what it wrote, and a Spark conversion job publishes there.

How the reference (mosaicml-streaming 0.13.0) reaches the emulators, through its own SDK code:
- GCS: its ``google.auth.default()`` finds ``GOOGLE_APPLICATION_CREDENTIALS`` (a service account
  whose token endpoint is a loopback :class:`~emulators.TokenServer`) and its ``Client`` honours
  ``STORAGE_EMULATOR_HOST``; nothing of it is patched.
- Azure: it hard-codes ``https://<account>.blob.core.windows.net``, which cannot be pointed
  anywhere else, so ``azure.storage.blob.BlobServiceClient`` is replaced by a subclass that
  swaps that one URL for Azurite's (and passes the account with the key). The rest of its code,
  downloads and uploads included, runs unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from emulators import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    TokenServer,
    azurite_connection_string,
    azurite_origin,
    write_service_account,
)

from mdsloader.dataloader import StreamingDataLoader
from mdsloader.dataset import StreamingDataset
from mdsloader.errors import StorageUnavailableError
from mdsloader.mds.writer import MDSWriter
from mdsloader.storage import open_storage

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
COLUMNS = {"id": "int64", "text": "str"}


@dataclass
class Remote:
    """One emulator-backed root, in the URL forms each side uses."""

    ours: str  # what our loader and writer are given
    reference_reads: str  # the reference's reader form of the same place
    reference_writes: str  # the reference's writer form of the same place


@pytest.fixture
def gcs_remote(gcs_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Remote]:
    tokens = TokenServer()
    key_file = write_service_account(tmp_path / "sa.json", tokens.url)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    yield Remote(gcs_env, gcs_env, gcs_env)
    tokens.close()


@pytest.fixture
def azure_remote(azure_env: str, azurite: str, monkeypatch: pytest.MonkeyPatch) -> Remote:
    from azure.storage.blob import BlobServiceClient

    monkeypatch.setenv("AZURE_ACCOUNT_NAME", AZURITE_ACCOUNT)  # what reference users set
    monkeypatch.setenv("AZURE_ACCOUNT_ACCESS_KEY", AZURITE_KEY)
    public = f"https://{AZURITE_ACCOUNT}.blob.core.windows.net"
    emulator = f"{azurite_origin(azurite)}/{AZURITE_ACCOUNT}"

    class ToAzurite(BlobServiceClient):  # the reference's only unpointable line, redirected
        def __init__(self, account_url: str, credential: Any = None, **kwargs: Any) -> None:
            if account_url.rstrip("/") == public and isinstance(credential, str):
                account_url = emulator
                credential = {"account_name": AZURITE_ACCOUNT, "account_key": credential}
            super().__init__(account_url, credential=credential, **kwargs)

    monkeypatch.setattr("azure.storage.blob.BlobServiceClient", ToAzurite)
    container = azure_env.removeprefix("azure://")
    hosted = f"azure://{AZURITE_ACCOUNT}.blob.core.windows.net/{container}"
    return Remote(azure_env, hosted, azure_env)


@pytest.fixture(params=["gcs", "azure"])
def remote(request: pytest.FixtureRequest) -> Remote:
    return request.getfixturevalue(f"{request.param}_remote")


def samples(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"id": i, "text": f"sample {i} " + "x" * (i % 37)} for i in range(start, start + n)]


def read_reference(reference: Any, remote: str, local: Path) -> list[dict[str, Any]]:
    ds = reference.StreamingDataset(remote=remote, local=str(local), batch_size=1, shuffle=False)
    return [{"id": int(s["id"]), "text": s["text"]} for s in (ds[i] for i in range(len(ds)))]


@pytest.mark.interop
def test_written_with_mdswriter_and_streamed_cold_by_two_workers(
    remote: Remote, reference: Any, tmp_path: Path
) -> None:
    url = f"{remote.ours}/ours"
    with MDSWriter(columns=COLUMNS, out=url, compression="zstd", hashes=["xxh64"],
                   size_limit=1 << 11) as writer:  # fmt: skip
        for sample in samples(300):
            writer.write(sample)
    listed = open_storage(url).list()
    assert "index.json" in listed and sum(name.endswith(".mds.zstd") for name in listed) > 5

    ds = StreamingDataset(remote=url, local=str(tmp_path / "cache"), batch_size=8, shuffle=True,
                          validate_hash="xxh64")  # fmt: skip
    loader = StreamingDataLoader(ds, batch_size=8, num_workers=2)
    ids = [int(i) for batch in loader for i in batch["id"]]
    assert sorted(ids) == list(range(300)) and ids != list(range(300))

    # The reference, through its own SDK code, reads what we wrote, in order.
    theirs = read_reference(reference, f"{remote.reference_reads}/ours", tmp_path / "ref-cache")
    assert theirs == samples(300)


@pytest.mark.interop
def test_we_stream_what_the_reference_wrote_there(
    remote: Remote, reference: Any, tmp_path: Path
) -> None:
    out = f"{remote.reference_writes}/theirs"
    with reference.MDSWriter(columns=COLUMNS, out=out, compression="zstd", hashes=["xxh64"],
                             size_limit=1 << 12) as writer:  # fmt: skip
        for sample in samples(120, start=1000):
            writer.write(sample)
    ds = StreamingDataset(remote=f"{remote.ours}/theirs", local=str(tmp_path / "cache"),
                          batch_size=4, shuffle=False, validate_hash="xxh64")  # fmt: skip
    assert [{"id": int(s["id"]), "text": s["text"]} for s in ds] == samples(120, start=1000)


@pytest.mark.slow
def test_a_conversion_job_publishes_to_each_remote(
    gcs_remote: Remote, azure_remote: Remote, reference: Any, tmp_path: Path
) -> None:
    import os

    targets = [f"{gcs_remote.ours}/converted", f"{azure_remote.ours}/converted"]
    env = dict(os.environ)
    root = str(HERE.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable)  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(HERE / "remote_convert_job.py"), str(tmp_path / "spark"), *targets],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    expected = [{"id": i, "text": f"row-{i}"} for i in range(300)]
    for target, result in zip(targets, results, strict=True):
        assert result["samples"] == 300 and result["shards"] > 3
        assert result["index_url"].startswith(target)
        storage = open_storage(target)
        names = storage.list()
        assert "index.json" in names and all(
            n == "index.json" or n.startswith("run-remote/") for n in names
        ), names  # shards under the run directory, the index published last at the root
        ds = StreamingDataset(remote=target, local=str(tmp_path / target.split(":")[0]),
                              batch_size=10, shuffle=False)  # fmt: skip
        assert [{"id": int(s["id"]), "text": s["text"]} for s in ds] == expected
    hosted = f"{azure_remote.reference_reads}/converted"
    assert read_reference(reference, hosted, tmp_path / "ref-azure") == expected


# -- faults, seen from the dataset: within download_retry / download_timeout ---------------------


@pytest.fixture(params=["gcs", "azure"])
def point_at(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], str]:
    """Points the backend's environment at an endpoint; returns a dataset URL there."""
    if request.param == "gcs":
        for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GCS_KEY", "GCS_SECRET"):
            monkeypatch.delenv(name, raising=False)

        def gcs(endpoint: str) -> str:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
            return "gs://bucket/ds"

        return gcs

    def azure(endpoint: str) -> str:
        port = int(endpoint.rsplit(":", 1)[1])
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_connection_string(port))
        return "azure://container/ds"

    return azure


def test_an_absent_server_fails_the_dataset_within_its_retries(
    point_at: Callable[[str], str], closed_port_endpoint: str, tmp_path: Path
) -> None:
    url = point_at(closed_port_endpoint)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="after 3 attempts"):
        StreamingDataset(remote=url, local=str(tmp_path / "c"), batch_size=1,
                         download_retry=2, download_timeout=2)  # fmt: skip
    assert time.monotonic() - started < 15  # backoff of at most 0.25 + 0.5 s, not minutes


def test_a_silent_server_fails_the_dataset_within_its_timeout(
    point_at: Callable[[str], str], stalled_endpoint: str, tmp_path: Path
) -> None:
    url = point_at(stalled_endpoint)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="after 2 attempts"):
        StreamingDataset(remote=url, local=str(tmp_path / "c"), batch_size=1,
                         download_retry=1, download_timeout=1)  # fmt: skip
    assert 1.9 < time.monotonic() - started < 15


def test_a_missing_dataset_is_not_found(remote: Remote, tmp_path: Path) -> None:
    # The remote's error (an ObjectNotFoundError, which is also the reference's
    # FileNotFoundError), naming the remote, not the cache's local miss.
    from mdsloader.errors import ObjectNotFoundError

    with pytest.raises(ObjectNotFoundError, match=r"nothing-here/index\.json") as info:
        StreamingDataset(remote=f"{remote.ours}/nothing-here", local=str(tmp_path / "c"),
                         batch_size=1, download_retry=3)  # fmt: skip
    assert isinstance(info.value, FileNotFoundError)


def test_the_worker_publishes_conditionally_on_azure(azure_env: str) -> None:
    from worker.convert.conditional import PublishConflict, read_index, write_index

    storage = open_storage(f"{azure_env}/published")
    absent = read_index(storage)
    assert absent.data is None
    write_index(storage, b'{"v": 1}', absent)
    seen = read_index(storage)
    assert seen.data == b'{"v": 1}' and seen.etag
    with pytest.raises(PublishConflict):  # another writer published since we looked
        write_index(storage, b'{"v": 2}', absent)
    write_index(storage, b'{"v": 3}', seen)
    with pytest.raises(PublishConflict):  # our view is stale now
        write_index(storage, b'{"v": 4}', seen)
    assert storage.read_bytes("index.json") == b'{"v": 3}'
