"""Helpers for the streaming-loader tests: tiny MDS datasets and reference-state hygiene.

Datasets are written with mosaicml-streaming's own MDSWriter: reading what the reference writes is
a product promise, and it keeps these tests independent of our writer's progress.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def single_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts as rank 0 of 1, whatever the runner's environment says."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def write_dataset(
    out: Path,
    shard_sizes: Sequence[int],
    *,
    start: int = 0,
    compression: str | None = None,
    hashes: Sequence[str] | None = None,
    columns: dict[str, str] | None = None,
    payload: int = 0,
) -> Path:
    """Write an MDS dataset whose sample i holds ``{"id": start + i}`` (plus padding bytes).

    One shard per entry of ``shard_sizes`` (the writer is flushed by a tiny size limit that is
    reached exactly at each boundary, so the shard sizes are exact).
    """
    from streaming import MDSWriter

    cols = columns or {"id": "int64"}
    if payload:
        cols = {**cols, "pad": "bytes"}
    out.mkdir(parents=True, exist_ok=True)
    sample_id = start
    shard_dirs = []
    for n, size in enumerate(shard_sizes):
        part = out / f"p{n:04d}"
        with MDSWriter(
            columns=cols, out=str(part), compression=compression, hashes=list(hashes or []),
            size_limit=1 << 30,
        ) as writer:  # fmt: skip
            for _ in range(size):
                sample = {name: _value(enc, sample_id) for name, enc in cols.items()}
                if payload:
                    sample["pad"] = sample["pad"][:0] + np.random.default_rng(sample_id).bytes(
                        payload
                    )
                writer.write(sample)
                sample_id += 1
        shard_dirs.append(part)
    _merge(out, shard_dirs)
    return out


def _value(encoding: str, sample_id: int) -> object:
    """A deterministic value of sample ``sample_id`` for a test column."""
    if encoding == "str":
        return f"sample-{sample_id}"
    if encoding == "pkl":
        return {"id": sample_id}
    if encoding == "bytes":
        return np.random.default_rng(sample_id).bytes(32)
    return sample_id


def _merge(out: Path, parts: list[Path]) -> None:
    """One index over per-part shards, with basenames ``pNNNN/shard.00000.mds[.ext]``."""
    import json

    shards = []
    for part in parts:
        index = json.loads((part / "index.json").read_text())
        for shard in index["shards"]:
            for key in ("raw_data", "zip_data"):
                if shard.get(key):
                    shard[key]["basename"] = f"{part.name}/{shard[key]['basename']}"
            shards.append(shard)
    (out / "index.json").write_text(json.dumps({"shards": shards, "version": 2}, sort_keys=True))


@pytest.fixture
def clean_reference_shm(reference) -> Iterator[None]:
    """Unlink the reference's /dev/shm segments before and after a test that runs it."""
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    yield
    clean_stale_shared_memory()


@pytest.fixture
def in_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as a DataLoader worker (get_worker_info() is not None)."""
    import torch.utils.data._utils.worker as torch_worker

    monkeypatch.setattr(torch_worker, "_worker_info", object())


def python_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make mdsloader.transfer use its pure-Python fallbacks instead of mdsloader._batch_columns."""
    from mdsloader import transfer

    for name in ("_c_columns_of", "_c_all_distinct", "_c_dicts_of"):
        monkeypatch.setattr(transfer, name, None)
