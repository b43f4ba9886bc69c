"""StreamingDataLoader's workers send small collated tensors by value and large ones as shared
memory, and the batches it yields are default_collate's (only ``is_shared()`` differs)."""

from __future__ import annotations

import collections
import pickle
import warnings
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing  # registers the tensor reductions ForkingPickler uses
from torch.utils.data import DataLoader, default_collate

from mdsloader import transfer
from mdsloader.collate import fast_collate
from mdsloader.dataloader import StreamingDataLoader
from mdsloader.dataset import StreamingDataset
from mdsloader.transfer import BY_VALUE_MAX_BYTES, PackedBatch, collate_for_transfer, unpack
from tests.conftest import require
from tests.dataset.collate_cases import ARRAY_SHAPES, SCALAR_TYPES

BATCH = 16
SAMPLES = 100
BIG_ROW = BY_VALUE_MAX_BYTES // BATCH + 1  # one batch of "big" is just over the threshold
COLUMNS = {
    "id": "int64", "i32": "int32", "f16": "float16", "u8": "uint8", "text": "str",
    "blob": "bytes", "vec": "ndarray:float32:8", "img": "ndarray:uint8", "big": "ndarray:uint8",
}  # fmt: skip


def _sample(i: int, big: int = BIG_ROW) -> dict[str, Any]:
    rng = np.random.default_rng(i)
    return {
        "id": np.int64(i), "i32": np.int32(-i), "f16": np.float16(i / 3), "u8": np.uint8(i % 256),
        "text": f"sample {i}", "blob": rng.bytes(i % 13),
        "vec": rng.standard_normal(8).astype(np.float32),
        "img": rng.integers(0, 255, (2, 3, 4), dtype=np.uint8),
        "big": np.full(big, i % 251, dtype=np.uint8),
    }  # fmt: skip


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> str:
    from streaming import MDSWriter

    out = tmp_path_factory.mktemp("transfer") / "ds"
    with MDSWriter(columns=COLUMNS, out=str(out), size_limit=1 << 22) as writer:
        for i in range(SAMPLES):
            writer.write(_sample(i))
    return str(out)


def assert_same(got: Any, want: Any, *, sharing: bool = True, path: str = "batch") -> None:
    """Same types, key order and values; tensors equal in dtype, shape, strides (and sharing)."""
    assert type(got) is type(want), path
    if isinstance(want, torch.Tensor):
        assert (got.dtype, got.shape, got.stride()) == (want.dtype, want.shape, want.stride()), path
        assert got.is_contiguous() == want.is_contiguous(), path
        assert torch.equal(got, want), path
        if sharing:
            assert got.is_shared() == want.is_shared(), path
    elif isinstance(want, dict):
        assert list(got) == list(want), path
        for key in want:
            assert_same(got[key], want[key], sharing=sharing, path=f"{path}[{key!r}]")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, sharing=sharing, path=f"{path}[{i}]")
    else:
        assert got == want, path


def through_queue(batch: Any) -> Any:
    """What the main process unpickles from a worker's result queue (torch's reductions on)."""
    return pickle.loads(bytes(ForkingPickler.dumps(batch)))


def tensors(batch: Any) -> dict[str, torch.Tensor]:
    return {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}


def _dataset(local: str) -> StreamingDataset:
    return StreamingDataset(local=local, batch_size=BATCH, shuffle=True, num_canonical_nodes=1)


def default_batches(local: str, epochs: int = 1, **kwargs: Any) -> list[list[Any]]:
    """Each epoch's batches from torch's own DataLoader and default_collate."""
    loader = DataLoader(_dataset(local), batch_size=BATCH, collate_fn=default_collate, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return [list(loader) for _ in range(epochs)]


# ---- packing and unpacking, in process -----------------------------------------------------


@pytest.mark.parametrize("kind", SCALAR_TYPES)
@pytest.mark.parametrize("shape", ARRAY_SHAPES, ids=str)
def test_packed_columns_unpack_to_default_collate(kind, shape, in_worker):
    rng = np.random.default_rng(len(shape))
    batch = [
        {"x": rng.integers(0, 100, int(np.prod(shape))).astype(kind).reshape(shape), "s": f"{i}"}
        for i in range(6)
    ]
    packed = collate_for_transfer(batch)
    assert type(packed) is PackedBatch
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # from_numpy must not meet a read-only array
        got = unpack(through_queue(packed))
    assert_same(got, default_collate(batch), sharing=False)
    assert not got["x"].is_shared()


def test_odd_strides_on_length_one_axes_are_kept():
    odd = torch.empty(4, 1, 3).as_strided((4, 1, 3), (3, 7, 1))
    odd.copy_(torch.arange(12.0).reshape(4, 1, 3))
    packed, changed = transfer._pack({"x": odd})
    assert changed
    got = unpack(through_queue(PackedBatch(packed)))["x"]
    assert got.stride() == (3, 7, 1)
    assert torch.equal(got, odd)


def test_tuples_lists_and_dicts_holding_tensors_keep_their_types():
    value = {"t": (torch.ones(2), "a"), "l": [torch.zeros(1), (b"b",)], "d": {"x": torch.ones(())}}
    packed, changed = transfer._pack(value)
    assert changed
    assert_same(unpack(through_queue(PackedBatch(packed))), value, sharing=False)


@pytest.mark.parametrize(
    "make",
    [
        lambda i: (np.int64(i), f"s{i}", np.ones(3, np.float32) * i),
        lambda i: [np.int16(i), b"b" * i, np.ones((2, 2), np.uint8)],
        lambda i: {"outer": {"inner": np.int64(i), "s": ("x", "y")}, "n": i},
        lambda i: np.full(4, i, np.int32),
        lambda i: {"t": torch.full((2,), i), "f": float(i)},
    ],
    ids=["tuple", "list", "nested", "ndarray", "tensors"],
)
def test_containers_unpack_to_default_collate(make, in_worker):
    batch = [make(i) for i in range(5)]
    got = unpack(through_queue(collate_for_transfer(batch)))
    assert_same(got, default_collate(batch), sharing=False)


@pytest.mark.parametrize(
    "make",
    [
        lambda i: {"s": f"s{i}", "b": b"x"},
        lambda i: collections.OrderedDict(a=np.int8(i)),
        lambda i: collections.namedtuple("Point", "x y")(np.int64(i), 1.0),
        lambda i: {"x": torch.ones(2, dtype=torch.bfloat16)},
    ],
    ids=["no tensors", "ordered dict", "namedtuple", "bfloat16"],
)
def test_what_cannot_go_by_value_is_sent_unpacked(make, in_worker):
    batch = [make(i) for i in range(4)]
    got = collate_for_transfer(batch)
    assert type(got) is not PackedBatch
    assert_same(got, fast_collate(batch))


@pytest.mark.parametrize(
    "tensor",
    [
        torch.ones(3, 2).t(),
        torch.ones(2, requires_grad=True),
        torch.ones(2, dtype=torch.complex64).conj(),
        torch.ones(2).neg().resolve_neg()._neg_view(),
        torch.ones(BY_VALUE_MAX_BYTES + 1, dtype=torch.uint8),
    ],
    ids=["non-contiguous", "requires grad", "conjugate", "negative", "big"],
)
def test_tensors_numpy_cannot_hold_exactly_stay_tensors(tensor):
    packed, changed = transfer._pack([tensor])
    assert not changed and packed[0] is tensor


def test_threshold_splits_by_value_from_shared(in_worker, monkeypatch):
    at = BY_VALUE_MAX_BYTES // 4
    batch = [{"small": np.ones(at, np.uint8), "big": np.ones(at + 1, np.uint8)} for _ in range(4)]
    new_shared = torch.UntypedStorage._new_shared
    sizes = []

    def recording(size: int, **kwargs: Any) -> torch.UntypedStorage:
        sizes.append(size)
        return new_shared(size, **kwargs)

    monkeypatch.setattr(torch.UntypedStorage, "_new_shared", recording)
    packed = collate_for_transfer(batch)
    assert sizes == [BY_VALUE_MAX_BYTES + 4]  # "small" was built in ordinary memory
    columns = dict(zip(packed.root.keys, packed.root.values, strict=True))
    assert type(columns["small"]) is transfer._ByValue
    assert type(columns["big"]) is torch.Tensor and columns["big"].is_shared()
    got = unpack(through_queue(packed))
    assert not got["small"].is_shared() and got["big"].is_shared()
    assert_same(got, default_collate(batch), sharing=False)


def test_outside_workers_it_is_fast_collate():
    batch = [_sample(i, big=4) for i in range(4)]
    got = collate_for_transfer(batch)
    assert type(got) is dict
    assert_same(got, fast_collate(batch))
    assert unpack(got) is got


# ---- StreamingDataLoader with real workers -------------------------------------------------


def test_workers_yield_default_collate_batches(local):
    loader = StreamingDataLoader(_dataset(local), batch_size=BATCH, num_workers=2)
    assert loader.collate_fn is collate_for_transfer
    [want] = default_batches(local, num_workers=2)
    got = list(loader)
    assert len(got) == len(want) == 7
    for g, w in zip(got, want, strict=True):
        assert_same(g, w, sharing=False)
        shared = {key: t.is_shared() for key, t in tensors(g).items()}
        # The last batch holds 4 samples, so its "big" column is under the threshold.
        assert shared == {key: key == "big" and len(g["id"]) == BATCH for key in shared}
    assert loader.num_samples_yielded == SAMPLES


def _pipe_capacity(iterator) -> int:
    import fcntl

    return fcntl.fcntl(iterator._worker_result_queue._reader.fileno(), fcntl.F_GETPIPE_SZ)


@pytest.mark.parametrize("user_collate", [False, True])
def test_workers_result_pipe_holds_whole_batches(local, user_collate):
    """The workers' result pipe is widened to 1 MiB (this machine's pipe-max-size allows it)."""
    with open("/proc/sys/fs/pipe-max-size") as limit:
        require(int(limit.read()) >= transfer.RESULT_PIPE_BYTES, "pipe-max-size below 1 MiB")
    kwargs = {"collate_fn": list} if user_collate else {}
    loader = StreamingDataLoader(_dataset(local), batch_size=BATCH, num_workers=2, **kwargs)
    iterator = loader._get_iterator()  # torch's iterator, its workers started
    try:
        assert _pipe_capacity(iterator) == transfer.RESULT_PIPE_BYTES
    finally:
        iterator._shutdown_workers()


def test_pin_memory_and_explicit_collate_keep_shared_batches(local):
    [want] = default_batches(local, num_workers=2)
    for kwargs in ({"pin_memory": True}, {"collate_fn": fast_collate}):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*pin_memory.*")
            loader = StreamingDataLoader(_dataset(local), BATCH, num_workers=2, **kwargs)
            assert loader.collate_fn is fast_collate
            got = list(loader)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)  # shared exactly where default_collate's are
    assert StreamingDataLoader(_dataset(local), BATCH, num_workers=0).collate_fn is fast_collate


def test_persistent_workers_over_two_epochs(local):
    want = default_batches(local, epochs=2, num_workers=2, persistent_workers=True)
    loader = StreamingDataLoader(
        _dataset(local), batch_size=BATCH, num_workers=2, persistent_workers=True
    )
    for epoch in range(2):
        got = list(loader)
        assert loader.num_samples_yielded == SAMPLES
        for g, w in zip(got, want[epoch], strict=True):
            assert_same(g, w, sharing=False)
    assert [b["id"].tolist() for b in want[0]] != [b["id"].tolist() for b in want[1]]


@pytest.mark.parametrize("persistent", [False, True], ids=["fresh", "persistent"])
def test_mid_epoch_resume_equals_an_uninterrupted_run(local, persistent):
    [want] = default_batches(local, num_workers=2)
    first = StreamingDataLoader(
        _dataset(local), BATCH, num_workers=2, persistent_workers=persistent
    )
    for k, batch in enumerate(first):
        assert_same(batch, want[k], sharing=False)
        if k == 2:
            break
    state = first.state_dict()
    assert state is not None and state["sample_in_epoch"] == 3 * BATCH
    resumed = StreamingDataLoader(
        _dataset(local), BATCH, num_workers=2, persistent_workers=persistent
    )
    resumed.load_state_dict(state)
    got = list(resumed)
    assert len(got) == len(want) - 3
    for g, w in zip(got, want[3:], strict=True):
        assert_same(g, w, sharing=False)


def test_spawned_workers(local):
    loader = StreamingDataLoader(
        _dataset(local), batch_size=BATCH, num_workers=1, multiprocessing_context="spawn"
    )
    [want] = default_batches(local, num_workers=1)
    got = list(loader)
    for g, w in zip(got, want, strict=True):
        assert_same(g, w, sharing=False)
    assert not got[0]["id"].is_shared() and got[0]["big"].is_shared()
