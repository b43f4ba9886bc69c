"""fast_collate returns exactly what torch's default_collate returns (or raises what it raises),
in and out of DataLoader workers, and StreamingDataLoader uses it by default."""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.data._utils.collate as torch_collate
import torch.utils.data._utils.worker as torch_worker
from torch.utils.data import DataLoader, default_collate, default_convert

import mdsloader
from mdsloader import collate as collate_module
from mdsloader.collate import fast_collate
from mdsloader.dataloader import StreamingDataLoader
from mdsloader.dataset import StreamingDataset
from tests.dataset.collate_cases import ARRAY_SHAPES, SCALAR_TYPES


@pytest.fixture(params=[False, True], ids=["main", "worker"])
def in_worker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Run as the main process or as a DataLoader worker (get_worker_info() is not None)."""
    if request.param:
        monkeypatch.setattr(torch_worker, "_worker_info", object())
    return bool(request.param)


def assert_same(got: Any, want: Any, path: str = "batch") -> None:
    """Same types all the way down; tensors equal in dtype, shape, strides, sharing and values."""
    assert type(got) is type(want), path
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype, path
        assert got.shape == want.shape, path
        assert got.stride() == want.stride(), path
        assert got.is_contiguous() == want.is_contiguous(), path
        assert got.is_shared() == want.is_shared(), path
        assert torch.equal(got, want), path
    elif isinstance(want, dict):
        assert list(got) == list(want), path
        for key in want:
            assert_same(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def collate_both(batch: list[Any]) -> tuple[Any, Any]:
    """(fast_collate(batch), default_collate(batch)); torch's read-only-array warning muted."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return fast_collate(batch), default_collate(batch)


def assert_same_error(batch: list[Any]) -> None:
    """Both raise, with the same exception type and message."""
    with pytest.raises(Exception) as want:
        default_collate(batch)
    with pytest.raises(want.type) as got:
        fast_collate(batch)
    assert str(got.value) == str(want.value)


def scalar_values(kind: type, n: int) -> list[Any]:
    """n scalars of ``kind`` covering its extremes."""
    if kind is np.bool_:
        return [np.bool_(i % 3 == 0) for i in range(n)]
    info = np.iinfo(kind) if issubclass(kind, np.integer) else np.finfo(kind)
    picks = [info.min, info.max, 0, 1]
    return [kind(picks[i % 4]) for i in range(n)]


def mds_sample(i: int) -> dict[str, Any]:
    """A sample as StreamingDataset decodes one of bench/load.py's (read-only, unaligned array)."""
    raw = np.arange(i, i + 64, dtype=np.float32).tobytes()
    vec = np.frombuffer(b"x" + raw, np.float32, 64, 1)  # an offset of 1: unaligned, read-only
    return {
        "a": np.int64(i), "b": np.int32(-i), "blob": bytes([i % 256]) * (i % 7),
        "text": f"text-{i}", "vec": vec,
    }  # fmt: skip


# ---- equality over every supported value type ----------------------------------------------


@pytest.mark.parametrize("kind", [t for t in SCALAR_TYPES if t is not np.uint64])
def test_numpy_scalar_columns_equal_default_collate(kind, in_worker):
    batch = [{"x": v, "y": kind(0)} for v in scalar_values(kind, 9)]
    assert_same(*collate_both(batch))


@pytest.mark.parametrize("kind", SCALAR_TYPES)
@pytest.mark.parametrize("shape", ARRAY_SHAPES, ids=str)
def test_ndarray_columns_equal_default_collate(kind, shape, in_worker):
    rng = np.random.default_rng(len(shape))
    size = int(np.prod(shape))
    batch = [
        {"x": rng.integers(0, 100, size).astype(kind).reshape(shape), "i": np.int64(i)}
        for i in range(6)
    ]
    got, want = collate_both(batch)
    assert_same(got, want)
    assert got["x"].is_shared() == in_worker


def test_mds_samples_equal_default_collate(in_worker):
    assert_same(*collate_both([mds_sample(i) for i in range(256)]))


@pytest.mark.parametrize(
    "values",
    [
        [3, -(2**63), 2**63 - 1],
        [0.5, -1e300, float("inf")],
        [True, False, True],
        ["a", "bc", ""],
        [b"a", b"", b"\x00"],
        [torch.tensor([1, 2]), torch.tensor([3, 4])],
        [torch.tensor(1.5), torch.tensor(2.5)],
    ],
    ids=["int", "float", "bool", "str", "bytes", "tensor", "tensor0d"],
)
def test_python_values_and_tensors_equal_default_collate(values, in_worker):
    assert_same(*collate_both([{"x": v} for v in values]))
    assert_same(*collate_both(list(values)))


@pytest.mark.parametrize(
    "make",
    [
        lambda i: (np.int64(i), f"s{i}", np.ones(3, np.float32) * i),
        lambda i: [np.int16(i), b"b" * i, np.ones((2, 2), np.uint8)],
        lambda i: np.full(4, i, np.int32),
        lambda i: np.float32(i),
        lambda i: f"top-{i}",
    ],
    ids=["tuple", "list", "ndarray", "scalar", "str"],
)
def test_other_containers_equal_default_collate(make, in_worker):
    assert_same(*collate_both([make(i) for i in range(5)]))


def test_str_column_of_tuple_samples_stays_a_tuple():
    got = fast_collate([("a", 1), ("b", 2)])
    assert got[0] == ("a", "b")
    assert_same(got, default_collate([("a", 1), ("b", 2)]))


def test_fast_path_does_not_call_default_collate(monkeypatch):
    def refuse(batch):
        raise AssertionError("default_collate called")

    monkeypatch.setattr(collate_module, "default_collate", refuse)
    batch = [mds_sample(i) for i in range(8)]
    got = fast_collate(batch)
    assert got["a"].tolist() == list(range(8))
    assert got["vec"][3].tolist() == [float(3 + k) for k in range(64)]
    assert got["text"] == [f"text-{i}" for i in range(8)]


def test_read_only_arrays_are_collated_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast_collate([mds_sample(i) for i in range(4)])


# ---- fallbacks: default_collate's result or its exception ----------------------------------

Point = collections.namedtuple("Point", ["x", "y"])


def _non_contiguous(i: int) -> np.ndarray:
    return np.arange(12, dtype=np.float64).reshape(3, 4).T + i


def _odd_strides() -> np.ndarray:
    """C-contiguous for numpy (length-1 axes do not count), rejected by torch.as_tensor."""
    view = np.lib.stride_tricks.as_strided(np.arange(8, dtype=np.float32), (3, 1), (4, 3))
    assert view.flags.c_contiguous
    return view


FALLBACK_RESULTS: dict[str, Callable[[int], Any]] = {
    "nested dict": lambda i: {"outer": {"inner": np.int64(i), "s": "x"}},
    "nested list": lambda i: {"x": [np.int32(i), np.int32(i + 1)]},
    "mixed scalar types": lambda i: {"x": np.int32(i) if i else np.int64(i)},
    "int then float": lambda i: {"x": 1 if i == 0 else 2.5},
    "bool then int": lambda i: {"x": True if i == 0 else 7},
    "float then numpy float": lambda i: {"x": np.float64(i) if i else 0.5},
    "str then int": lambda i: {"x": "s" if i == 0 else i},
    "namedtuple": lambda i: Point(np.int64(i), f"p{i}"),
    "ordered dict": lambda i: collections.OrderedDict(b=np.int8(i), a="a"),
    "non-contiguous array": lambda i: {"x": _non_contiguous(i)},
    "big-endian array": lambda i: {"x": np.arange(3, dtype=">i4") + i},
    "memmap-like subclass": lambda i: {"x": np.ones(3).view(np.matrix)},
    "array then list": lambda i: {"x": np.ones(2) if i == 0 else [1.0, 1.0]},
    "arrays of two dtypes": lambda i: {"x": np.ones(2, np.float32 if i else np.float64)},
    "0-d arrays": lambda i: {"x": np.array(i, np.int16)},
    "missing key in a later sample": lambda i: {"a": np.int64(i), **({"b": 1} if i else {})},
}


@pytest.mark.parametrize("name", list(FALLBACK_RESULTS))
def test_fallback_results_equal_default_collate(name, in_worker):
    batch = [FALLBACK_RESULTS[name](i) for i in range(4)]
    assert_same(*collate_both(batch))


FALLBACK_ERRORS: dict[str, Callable[[int], Any]] = {
    "ragged arrays": lambda i: {"x": np.ones(i + 1, np.float32)},
    "None": lambda i: {"x": None},
    "object array": lambda i: {"x": np.array([i, "a"], dtype=object)},
    "str array": lambda i: {"x": np.array(["a", "b"])},
    "negative strides": lambda i: {"x": np.arange(4)[::-1]},
    "odd stride on a length-1 axis": lambda i: {"x": _odd_strides()},
    "uint64 scalars": lambda i: {"x": np.uint64(i)},
    "int overflow": lambda i: {"x": 2**63 + i},
    "missing key": lambda i: {"a": np.int64(i)} if i == 0 else {"b": np.int64(i)},
    "ragged tuples": lambda i: (np.int64(i),) * (1 + i % 2),
    "ragged lists": lambda i: [np.int64(i)] * (1 + i % 2),
    "int then None": lambda i: {"x": None if i else 1},
}


@pytest.mark.parametrize("name", list(FALLBACK_ERRORS))
def test_fallback_errors_equal_default_collate(name, in_worker):
    batch = [FALLBACK_ERRORS[name](i) for i in range(4)]
    assert_same_error(batch)


def test_a_customised_default_collate_registry_is_honoured(monkeypatch):
    def as_shapes(batch, *, collate_fn_map=None):
        return [b.shape for b in batch]

    monkeypatch.setitem(torch_collate.default_collate_fn_map, np.ndarray, as_shapes)
    got = fast_collate([{"x": np.ones(2)}, {"x": np.ones(2)}])
    assert got == {"x": [(2,), (2,)]}


# ---- StreamingDataLoader -------------------------------------------------------------------

COLUMNS = {
    "id": "int64", "i8": "int8", "i16": "int16", "i32": "int32", "u8": "uint8", "u16": "uint16",
    "u32": "uint32", "f16": "float16", "f32": "float32", "f64": "float64", "text": "str",
    "blob": "bytes", "vec": "ndarray:float32:8", "img": "ndarray:uint8",
}  # fmt: skip


def _sample(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    scalars = {
        name: np.dtype(enc).type(i % 100) for name, enc in COLUMNS.items() if enc[0] in "iuf"
    }
    return {
        **scalars, "id": np.int64(i), "text": f"sample {i}", "blob": rng.bytes(i % 13),
        "vec": rng.standard_normal(8).astype(np.float32),
        "img": rng.integers(0, 255, (2, 3, 4), dtype=np.uint8),
    }  # fmt: skip


@pytest.fixture(scope="module")
def typed_local(tmp_path_factory: pytest.TempPathFactory) -> str:
    from streaming import MDSWriter

    out = tmp_path_factory.mktemp("collate") / "ds"
    with MDSWriter(columns=COLUMNS, out=str(out), size_limit=1 << 14) as writer:
        for i in range(300):
            writer.write(_sample(i))
    return str(out)


def _dataset(local: str) -> StreamingDataset:
    return StreamingDataset(local=local, batch_size=16, shuffle=True, num_canonical_nodes=1)


def test_fast_collate_in_workers_yields_default_collate_batches(typed_local):
    # Explicit, so the batches come as fast_collate builds them, shared memory included (the
    # default collate sends small tensors by value: tests/dataset/test_loader_transfer.py).
    loader = StreamingDataLoader(
        _dataset(typed_local), batch_size=16, num_workers=2, collate_fn=fast_collate
    )
    plain = DataLoader(
        _dataset(typed_local), batch_size=16, num_workers=2, collate_fn=default_collate
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        want = list(plain)
    got = list(loader)
    assert len(got) == len(want) == 19  # 300 samples, batches of 16
    for g, w in zip(got, want, strict=True):
        assert_same(g, w)
    assert loader.num_samples_yielded == 300


def test_loader_resumes_mid_epoch_with_fast_collate(typed_local):
    baseline = [b["id"].tolist() for b in StreamingDataLoader(_dataset(typed_local), 16)]
    first = StreamingDataLoader(_dataset(typed_local), batch_size=16, num_workers=2)
    for k, batch in enumerate(first):
        assert batch["id"].tolist() == baseline[k]
        if k == 6:
            break
    state = first.state_dict()
    assert state is not None and state["sample_in_epoch"] == 7 * 16
    resumed = StreamingDataLoader(_dataset(typed_local), batch_size=16, num_workers=2)
    resumed.load_state_dict(state)
    assert [b["id"].tolist() for b in resumed] == baseline[7:]


def test_loader_keeps_an_explicit_collate_fn_and_default_convert(typed_local):
    ds = _dataset(typed_local)

    def mine(batch):
        return batch

    assert StreamingDataLoader(ds, batch_size=4, collate_fn=mine).collate_fn is mine
    positional = StreamingDataLoader(ds, 4, None, None, None, 0, default_collate)
    assert positional.collate_fn is default_collate
    assert StreamingDataLoader(ds, batch_size=4, collate_fn=None).collate_fn is fast_collate
    assert StreamingDataLoader(ds, batch_size=None).collate_fn is default_convert


def test_fast_collate_is_exported():
    assert mdsloader.fast_collate is fast_collate
    assert "fast_collate" in mdsloader.__all__
