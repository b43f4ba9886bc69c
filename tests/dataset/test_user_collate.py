"""A user's own collate_fn with DataLoader workers: lists of sample dicts travel packed into
columns (``mdsloader.transfer.pack_samples``) and reach the training loop exactly as the plain
pickle round trip would have delivered them."""

from __future__ import annotations

import collections
import pickle
import warnings
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing  # registers the tensor reductions ForkingPickler uses
import torch.utils.data._utils.worker as torch_worker
from torch.utils.data import DataLoader

from mdsloader import dataloader as dataloader_module
from mdsloader import transfer
from mdsloader.dataloader import StreamingDataLoader
from mdsloader.dataset import StreamingDataset
from mdsloader.transfer import PackedBatch, PackingCollate, pack_samples, unpack
from tests.conftest import require
from tests.dataset.collate_cases import ARRAY_SHAPES, SCALAR_TYPES
from tests.dataset.conftest import python_columns

BATCH = 8
SAMPLES = 60
COLUMNS = {
    "id": "int64", "u64": "uint64", "f16": "float16", "f64": "float64", "flag": "uint8",
    "text": "str", "blob": "bytes", "vec": "ndarray:float32", "img": "ndarray:uint8:2,3",
    "n": "int", "json": "json",
}  # fmt: skip


def _mds_sample(i: int) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    return {
        "id": np.int64(i), "u64": np.uint64(2**64 - 1 - i), "f16": np.float16(i / 7),
        "f64": np.float64(-i / 3), "flag": np.uint8(i % 2), "text": "é" * (i % 5),
        "blob": rng.bytes(i % 9), "vec": rng.standard_normal(4).astype(np.float32),
        "img": rng.integers(0, 255, (2, 3), dtype=np.uint8), "n": i * 10**12,
        "json": {"i": i},
    }  # fmt: skip


@pytest.fixture(autouse=True, params=["compiled", "python"])
def helpers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test with the C helpers of transfer.py, then with its pure-Python fallbacks."""
    if request.param == "compiled":
        require(transfer._c_columns_of is not None,
                "the loader was installed without its C extensions")
    else:
        python_columns(monkeypatch)
    return request.param


def identity(batch: list[Any]) -> list[Any]:
    """The collate_fn many training codes pass (module level, so spawned workers can load it)."""
    return batch


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> str:
    from streaming import MDSWriter

    out = tmp_path_factory.mktemp("user_collate") / "ds"
    with MDSWriter(columns=COLUMNS, out=str(out), size_limit=1 << 14) as writer:
        for i in range(SAMPLES):
            writer.write(_mds_sample(i))
    return str(out)


def through_queue(value: Any) -> Any:
    """What the main process unpickles from a worker's result queue."""
    return pickle.loads(bytes(ForkingPickler.dumps(value)))


def _walk(value: Any, out: list[Any]) -> None:
    out.append(value)
    if type(value) is dict:
        for key, item in value.items():
            out.append(key)
            _walk(item, out)
    elif type(value) in (list, tuple):
        for item in value:
            _walk(item, out)


def sharing(value: Any) -> list[int]:
    """For every object met walking ``value``: the position where it was first met.

    Two results with the same list share objects in the same places (the pickle memo's doing).
    """
    first: dict[int, int] = {}
    objects: list[Any] = []
    _walk(value, objects)
    return [first.setdefault(id(item), at) for at, item in enumerate(objects)]


def assert_identical(got: Any, want: Any, path: str = "batch") -> None:
    """Same types all the way down, keys (and their types) in order, values bit for bit; arrays
    alike in dtype, shape, strides, flags and ownership."""
    assert type(got) is type(want), path
    if type(want) is dict:
        assert [(type(k), k) for k in got] == [(type(k), k) for k in want], path
        for key in want:
            assert_identical(got[key], want[key], f"{path}[{key!r}]")
    elif type(want) in (list, tuple):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_identical(g, w, f"{path}[{i}]")
    elif isinstance(want, np.ndarray):
        assert (got.dtype, repr(got.dtype), got.dtype.str, got.dtype.char) == (
            want.dtype, repr(want.dtype), want.dtype.str, want.dtype.char,
        ), path  # fmt: skip
        assert (got.shape, got.strides) == (want.shape, want.strides), path
        for flag in ("writeable", "owndata", "c_contiguous", "f_contiguous", "aligned"):
            assert getattr(got.flags, flag) == getattr(want.flags, flag), (path, flag)
        assert (got.base is None) == (want.base is None), path
        assert got.tobytes() == want.tobytes(), path
    elif isinstance(want, np.generic):
        assert (got.dtype.char, got.tobytes()) == (want.dtype.char, want.tobytes()), path
    elif isinstance(want, float):
        assert repr(got) == repr(want), path  # NaN and -0.0 too
    elif isinstance(want, torch.Tensor):
        assert (got.dtype, got.shape) == (want.dtype, want.shape) and torch.equal(got, want), path
    else:
        assert got == want, path


def round_trip(batch: Any, *, packed: bool) -> Any:
    """Pack as a worker does, send, unpack; check it against the plain round trip."""
    sent = pack_samples(batch)
    assert (type(sent) is PackedBatch) is packed
    got = unpack(through_queue(sent))
    want = through_queue(batch)
    assert_identical(got, want)
    assert sharing(got) == sharing(want)
    return got


def _nan(dtype: type, payload: int) -> np.generic:
    """A NaN of ``dtype`` with a chosen payload (the bits a float conversion could lose)."""
    uint = {np.float16: np.uint16, np.float32: np.uint32, np.float64: np.uint64}[dtype]
    bits = np.array(~np.array(0, uint) >> 1, uint)  # exponent all ones, top mantissa bit set
    return (bits ^ uint(payload)).view(dtype)[()]


# ---- packing and unpacking, in process -----------------------------------------------------


@pytest.mark.parametrize("kind", SCALAR_TYPES)
@pytest.mark.parametrize("shape", [s for s in ARRAY_SHAPES if s], ids=str)
def test_scalars_and_arrays_of_every_type_come_back_identical(kind, shape):
    rng = np.random.default_rng(len(shape))
    size = int(np.prod(shape))
    batch = [
        {
            "x": kind(rng.integers(0, 100)),
            "a": rng.integers(0, 100, size).astype(kind).reshape(shape),
            "s": f"{i}",
        }
        for i in range(5)
    ]
    # Empty arrays stay as they are (copied rows would keep zero strides), the rest is packed.
    got = round_trip(batch, packed=bool(size))
    assert all(type(sample["x"]) is kind for sample in got)


@pytest.mark.parametrize("kind", [np.longlong, np.ulonglong, np.longdouble, np.clongdouble])
def test_scalar_and_array_aliases_come_back_as_the_pickle_names_them(kind):
    # The pickle turns np.longlong into np.int64 (dtype "q" into "l"), packed or not.
    batch = [{"x": kind(i), "a": np.arange(3, dtype=kind) + i} for i in range(3)]
    # long double's padding bytes are copied by the pickle, not by a conversion: unpacked.
    round_trip(batch, packed=kind in (np.longlong, np.ulonglong))
    mixed = [{"a": np.zeros(2, "q")}, {"a": np.zeros(2, "l")}, {"a": np.zeros(2, "q")}]
    round_trip(mixed, packed=True)


def test_mds_samples_come_back_identical(local):
    dataset = StreamingDataset(local=local, batch_size=BATCH, num_canonical_nodes=1)
    batch = [dataset[i] for i in range(BATCH)]
    assert not batch[0]["vec"].flags.writeable  # decoded arrays are read-only views
    assert batch[0]["vec"].dtype.byteorder == "<"  # an explicit byte order, as the codec has it
    got = round_trip(batch, packed=False)  # "json" holds dicts: sent as the user returned it
    for sample in batch:
        del sample["json"]
    got = round_trip(batch, packed=True)
    assert all(sample["vec"].flags.writeable and sample["vec"].base is None for sample in got)
    got[0]["vec"][:] = 0  # each array is its own copy
    assert got[1]["vec"].any()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nan_payloads_and_signed_zeros_keep_their_bits(dtype):
    values = [_nan(dtype, 1), _nan(dtype, 5), dtype(-0.0), dtype(np.inf)]
    batch = [{"x": v, "a": np.array([v, v], dtype)} for v in values]
    got = round_trip(batch, packed=True)
    assert [s["x"].tobytes() for s in got] == [v.tobytes() for v in values]


def test_python_values_travel_as_they_are():
    batch = [
        {"s": "x" * i, "b": b"y" * i, "i": 10**30 + i, "f": float("nan"), "z": None, "c": 1j}
        for i in range(4)
    ]
    batch[1]["f"], batch[2]["i"] = -0.0, True  # a raw column may mix Python types
    round_trip(batch, packed=True)


def test_shared_strings_stay_shared():
    text = "shared"
    batch = [{"k": text, "v": text, "n": np.int8(i)} for i in range(3)]
    got = round_trip(batch, packed=True)
    assert got[0]["k"] is got[2]["v"]


@pytest.mark.parametrize(
    "make",
    [
        lambda i: np.ones((3, 2), np.float32).T * i,  # Fortran order: the pickle keeps it
        lambda i: (np.arange(12, dtype=np.int16) * i)[::3],  # strided: arrives C-ordered
        lambda i: np.frombuffer(bytes(range(i, i + 6)), np.uint8).reshape(2, 3),  # read-only
        lambda i: np.arange(4, dtype=np.dtype("<i4")) + i,
        lambda i: np.full((2, 2), i, np.complex64),
    ],
    ids=["fortran", "strided", "read-only", "explicit-order", "complex"],
)
def test_array_layouts(make):
    batch = [{"a": make(i), "i": i} for i in range(4)]
    packed = make(0).flags.c_contiguous or not make(0).flags.f_contiguous
    round_trip(batch, packed=packed)


def _shared_array(i: int, cache: dict[str, np.ndarray] = {}) -> dict[str, Any]:  # noqa: B006
    return {"a": cache.setdefault("a", np.zeros(3)), "i": np.int64(i)}


_SCALAR = np.int64(7)
_SAMPLE = {"a": np.int8(1)}

UNPACKED: dict[str, Callable[[int], Any]] = {
    "0-d arrays": lambda i: {"a": np.array(i)},
    "ragged arrays": lambda i: {"a": np.zeros(i + 1)},
    "ragged rows": lambda i: {"a": np.zeros((2, i + 1))},
    "other numbers of axes": lambda i: {"a": np.zeros((2,) * (i + 1))},
    "same total length": lambda i: {"a": np.zeros((2, 3, 1)[i])},
    "mixed dtypes": lambda i: {"a": np.zeros(2, np.float32 if i else np.float64)},
    "big-endian": lambda i: {"a": np.zeros(2, ">i4")},
    "object arrays": lambda i: {"a": np.array([None, i], object)},
    "structured": lambda i: {"a": np.zeros(2, "i4,f4")},
    "datetime scalars": lambda i: {"a": np.datetime64(i, "s")},
    "numpy str scalars": lambda i: {"a": np.str_(str(i))},
    "mixed scalar types": lambda i: {"a": np.int32(i) if i else np.int64(i)},
    "numpy and python": lambda i: {"a": np.int64(i) if i else i},
    "array subclass": lambda i: {"a": np.ma.masked_array(np.zeros(2))},
    "tensors": lambda i: {"a": torch.ones(2)},
    "nested": lambda i: {"a": [np.int64(i)]},
    "same array twice": _shared_array,
    "same scalar twice": lambda i: {"a": _SCALAR},
    "same dict twice": lambda i: _SAMPLE,
    "key order": lambda i: {"a": 1, "b": 2} if i else {"b": 2, "a": 1},
    "other keys": lambda i: {"a": 1} if i else {"b": 1},
    "equal keys of other types": lambda i: {1: np.int8(i)} if i else {True: np.int8(i)},
    "no keys": lambda i: {},
    "ordered dicts": lambda i: collections.OrderedDict(a=np.int8(i)),
    "tuples": lambda i: (np.int8(i), "s"),
}


@pytest.mark.parametrize("make", UNPACKED.values(), ids=UNPACKED.keys())
def test_what_columns_cannot_rebuild_exactly_is_sent_as_it_is(make):
    batch = [make(i) for i in range(3)]
    sent = pack_samples(batch)
    assert sent is batch
    assert_identical(through_queue(sent), through_queue(batch))


def test_only_lists_of_two_or_more_dicts_are_packed():
    sample = {"a": np.int8(1)}
    for value in ([sample], (sample, {"a": np.int8(2)}), {"a": [sample]}, "text", None):
        assert pack_samples(value) is value


def test_the_wrapper_packs_only_in_workers(monkeypatch):
    calls: list[Any] = []

    def mine(batch: list[Any]) -> list[Any]:
        calls.append(batch)
        return batch[::-1]

    batch = [{"a": np.int8(i)} for i in range(3)]
    wrapped = PackingCollate(mine)
    out = wrapped(batch)
    assert calls == [batch] and calls[0] is batch  # the function gets the fetcher's list
    assert out == batch[::-1]
    monkeypatch.setattr(torch_worker, "_worker_info", object())
    sent = wrapped(batch)
    assert type(sent) is PackedBatch
    assert_identical(unpack(through_queue(sent)), through_queue(batch[::-1]))
    assert type(pickle.loads(pickle.dumps(PackingCollate(identity)))) is PackingCollate


def test_a_future_pickle_that_keeps_arrays_read_only_leaves_array_columns_unpacked(
    monkeypatch, in_worker
):
    monkeypatch.setattr(transfer, "_PACK_ARRAYS", False)
    batch = [{"a": np.zeros(2), "i": np.int8(1)} for _ in range(3)]
    assert pack_samples(batch) is batch
    assert transfer._arrays_arrive_owned()  # this Python's pickle copies (protocol 4)


# ---- StreamingDataLoader with real workers -------------------------------------------------


def _dataset(local: str) -> StreamingDataset:
    return StreamingDataset(local=local, batch_size=BATCH, shuffle=True, num_canonical_nodes=1)


def torch_batches(local: str, epochs: int = 1, **kwargs: Any) -> list[list[Any]]:
    """Each epoch's batches through torch's own DataLoader (the plain pickle)."""
    loader = DataLoader(_dataset(local), batch_size=BATCH, collate_fn=identity, **kwargs)
    return [list(loader) for _ in range(epochs)]


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What StreamingDataLoader's main process received from its workers, before unpacking."""
    seen: list[Any] = []

    def recording(item: Any) -> Any:
        seen.append(item)
        return unpack(item)

    monkeypatch.setattr(dataloader_module, "unpack", recording)
    return seen


def test_workers_yield_what_torch_yields(local, received):
    [want] = torch_batches(local, num_workers=2)
    loader = StreamingDataLoader(_dataset(local), batch_size=BATCH, num_workers=2,
                                 collate_fn=identity)  # fmt: skip
    assert loader.collate_fn is identity
    got = list(loader)
    assert loader.collate_fn is identity
    assert len(got) == len(want) == -(-SAMPLES // BATCH)
    for g, w in zip(got, want, strict=True):
        assert_identical(g, w)
        assert sharing(g) == sharing(w)
    # "json" holds dicts, so the batches travel as the function returned them.
    assert not any(type(item) is PackedBatch for item in received)


def _without_json(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for sample in batch:
        del sample["json"]
    return batch


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"persistent_workers": True}, {"pin_memory": True}, {"multiprocessing_context": "spawn"}],
    ids=["fresh", "persistent", "pin_memory", "spawn"],
)
def test_packed_batches_equal_torch_batches(local, received, kwargs):
    epochs = 2 if kwargs.get("persistent_workers") else 1
    workers = 1 if "multiprocessing_context" in kwargs else 2
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*pin_memory.*")
        want = torch_batches(local, epochs, num_workers=workers, **kwargs)
        for epoch in want:
            for batch in epoch:
                _without_json(batch)
        # torch's DataLoader passes want's collate_fn; ours gets _without_json, so compare the
        # trimmed batches.
        loader = StreamingDataLoader(_dataset(local), batch_size=BATCH, num_workers=workers,
                                     collate_fn=_without_json, **kwargs)  # fmt: skip
        for epoch in range(epochs):
            got = list(loader)
            for g, w in zip(got, want[epoch], strict=True):
                assert_identical(g, w)
                assert sharing(g) == sharing(w)
    assert len(received) == epochs * len(want[0])
    assert all(type(item) is PackedBatch for item in received)
    assert loader.collate_fn is _without_json


def test_the_default_collate_and_no_workers_are_unchanged(local):
    loader = StreamingDataLoader(_dataset(local), batch_size=BATCH, num_workers=2)
    assert not loader._pack_user_batches
    assert loader.collate_fn is transfer.collate_for_transfer
    single = StreamingDataLoader(_dataset(local), BATCH, num_workers=0, collate_fn=_without_json)
    got = list(single)
    assert type(got[0]) is list and got[0][0]["vec"].flags.writeable is False  # not sent

