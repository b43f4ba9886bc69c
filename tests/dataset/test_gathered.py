"""The shuffled read loop's block copies (mdsloader.gathered) against slicing the shards."""

from __future__ import annotations

import mmap
from itertools import pairwise

import numpy as np
import pytest

import mdsloader.gathered as gathered
from mdsloader.dataset import StreamingDataset
from mdsloader.mds.writer import MDSWriter
from tests.conftest import require


@pytest.fixture
def compiled() -> None:
    require(gathered.gather_available(), "the loader was installed without its C extensions")


def test_blocks_are_the_ranges_in_order(compiled, tmp_path, monkeypatch):
    """Every range comes back byte for byte, blocks bounded by samples and by bytes."""
    monkeypatch.setattr(gathered, "BLOCK_SAMPLES", 7)
    monkeypatch.setattr(gathered, "BLOCK_BYTES", 300)
    rng = np.random.default_rng(0)
    files = []
    for k in range(3):
        path = tmp_path / f"f{k}"
        path.write_bytes(rng.bytes(5000))
        with open(path, "rb") as handle:
            files.append(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))
    which = rng.integers(0, 3, 100)
    begins = rng.integers(0, 4000, 100)
    ends = begins + rng.integers(0, 400, 100)  # empty ranges and ranges over the byte bound
    want = [files[w][b:e] for w, b, e in zip(which.tolist(), begins.tolist(), ends.tolist())]
    got = []
    for joined, offsets in gathered.GatheredSamples(files, which, begins, ends).blocks():
        assert len(offsets) - 1 <= 7
        assert offsets[-1] <= 300 or len(offsets) == 2  # one sample alone may exceed the bound
        got += [joined[a:b] for a, b in pairwise(offsets)]
    assert got == want


def test_ranges_outside_their_buffer_are_refused(compiled):
    data = [b"0123456789"]
    with pytest.raises(ValueError, match=r"range 1 \(\[8, 11\) of buffer 0\) is outside it"):
        next(gathered.GatheredSamples(data, np.array([0, 0]), np.array([0, 8]),
                                      np.array([2, 11])).blocks())
    with pytest.raises(ValueError, match="outside it"):
        next(gathered.GatheredSamples(data, np.array([1]), np.array([0]), np.array([1])).blocks())


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("gathered") / "ds"
    rng = np.random.default_rng(1)
    with MDSWriter(columns={"id": "int64", "blob": "bytes", "vec": "ndarray:float32"},
                   out=str(out), size_limit=1 << 14) as writer:
        for i in range(3000):
            writer.write({"id": np.int64(i), "blob": rng.bytes(int(rng.integers(0, 300))),
                          "vec": rng.standard_normal(8).astype(np.float32)})
    return str(out)


def test_shuffled_epoch_reads_the_same_with_and_without_the_copy(compiled, many_shards,
                                                                 monkeypatch):
    def epoch() -> list[tuple[int, bytes, bytes]]:
        dataset = StreamingDataset(local=many_shards, shuffle=True, batch_size=16,
                                   shuffle_block_size=500)
        return [(int(s["id"]), s["blob"], s["vec"].tobytes()) for s in dataset]

    with_copy = epoch()
    monkeypatch.setattr(gathered, "gather_ranges", None)
    monkeypatch.setattr("mdsloader.dataset.gather_available", lambda: False)
    without = epoch()
    assert with_copy == without
    assert sorted(row[0] for row in with_copy) == list(range(3000))
    assert [row[0] for row in with_copy] != list(range(3000))
