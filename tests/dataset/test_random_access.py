"""``ds[i]``: every index form reaches the right sample, across shard (and empty shard) bounds."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from mdsloader.dataset import StreamingDataset
from tests.dataset.conftest import write_dataset


@pytest.fixture
def ds(tmp_path: Path) -> StreamingDataset:
    cols = {"id": "int64", "name": "str"}
    return StreamingDataset(local=str(write_dataset(tmp_path, [3, 0, 5, 1, 4], columns=cols)))


def test_every_id_and_its_negative_reach_the_same_sample(ds: StreamingDataset):
    for i in range(13):
        for at in (i, i - 13, np.int64(i), np.int32(i - 13)):
            sample = ds[at]
            assert (int(sample["id"]), sample["name"]) == (i, f"sample-{i}")
            assert type(sample["id"]) is np.int64
    assert int(ds[True]["id"]) == 1


def test_slices_lists_and_arrays_return_lists_of_samples(ds: StreamingDataset):
    assert [int(s["id"]) for s in ds[2:9:3]] == [2, 5, 8]
    assert [int(s["id"]) for s in ds[[12, 0, 3]]] == [12, 0, 3]
    assert [int(s["id"]) for s in ds[np.array([4, -1])]] == [4, 12]


def test_out_of_range_and_unsupported_indices_raise(ds: StreamingDataset):
    for at in (13, -14, 10**12):
        with pytest.raises(IndexError, match="out of range for 13 samples"):
            ds[at]
    with pytest.raises(TypeError, match="unsupported index type str"):
        ds["1"]


def test_random_access_works_after_pickling(ds: StreamingDataset):
    assert int(ds[7]["id"]) == 7  # opens a reader, which must not travel
    copy = pickle.loads(pickle.dumps(ds))
    assert [int(copy[i]["id"]) for i in (12, 3, 8)] == [12, 3, 8]
