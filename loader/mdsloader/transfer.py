"""Small collated tensors sent from DataLoader workers by value (internal to StreamingDataLoader).

A DataLoader worker puts each batch on a multiprocessing queue. torch's pickler sends a tensor
as a shared-memory file descriptor: it creates the segment, then passes the descriptor over a new
socket connection with an authentication handshake, and the main process maps it again. For the
few small tensors of a typical batch (a 256 x int64 column is 2 KiB) that costs far more CPU, on
both sides, than writing the bytes into the pipe. Large tensors (images) are the other way round,
so they stay shared.

In a worker, :func:`collate_for_transfer` collates with ``fast_collate``'s rules, building small
stacked columns in ordinary memory, and wraps the batch in a :class:`PackedBatch` whose small
tensors are held as numpy arrays; pickling those copies their bytes into the pipe. In the main
process, :func:`unpack` turns them back into tensors with ``torch.from_numpy`` (no copy), with
the dtype, shape, strides and values the worker had. The one visible difference from
``default_collate``'s batch is ``Tensor.is_shared()``, False for the tensors sent by value.

A user's own ``collate_fn`` often returns the samples themselves (``lambda batch: batch``): a
list of dicts of numpy scalars, small arrays, str and bytes. Pickling those one object at a time
costs the worker several times what decoding them did. :class:`PackingCollate` wraps such a
function in the workers and :func:`pack_samples` turns its list of dicts into columns: each
numpy scalar column one array, each same-shaped ndarray column one stacked array, str/bytes/
Python-number columns lists, all pickled in a few large pieces. :func:`unpack` rebuilds the list
of dicts in the main process with what the plain pickle round trip would have produced: the same
types (numpy scalar types included), dtypes, values, shapes, memory order, each array its own
writable, owning copy, dicts with the same keys in the same order. Anything it cannot rebuild
exactly travels as the user's function returned it.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Sequence
from itertools import chain, cycle
from multiprocessing.reduction import ForkingPickler
from operator import attrgetter, is_
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from mdsloader.collate import collate_sharing, fast_collate

try:  # the loader's C helper; the same answers in pure Python below when it is not built
    from mdsloader._batch_columns import all_distinct as _c_all_distinct
    from mdsloader._batch_columns import columns_of as _c_columns_of
    from mdsloader._batch_columns import dicts_of as _c_dicts_of
except ImportError:
    _c_all_distinct = _c_columns_of = _c_dicts_of = None

# Tensors up to this size go by value, bigger ones through shared memory. Measured with one
# tensor per message through a forked worker's torch.multiprocessing queue, the main process
# reading every byte (torch 2.13, 2-core x86 VM), CPU of both sides per tensor: 64 KiB 86 us by
# value vs 434 us shared, 256 KiB 349 vs 1051, 512 KiB 744-1034 vs 1508-1827, 768 KiB-1 MiB
# by value dearer (3892 vs 2540 at 768 KiB, 3712-4546 vs 2288-3612 at 1 MiB), 4 MiB 18311 vs 7306.
BY_VALUE_MAX_BYTES = 512 << 10

# Capacity asked for the pipe that carries the workers' batches (the kernel's default is 64 KiB;
# 1 MiB is the default ceiling for unprivileged processes, /proc/sys/fs/pipe-max-size).
RESULT_PIPE_BYTES = 1 << 20

# The first value's types that make a list or tuple a str/bytes column, which _pack skips.
_TEXT = (str, bytes)


class PackedBatch:
    """A collated batch in transit from a worker: its root, a ``_Rebuild`` or a ``_ByValue``."""

    __slots__ = ("root",)

    def __init__(self, root: Any) -> None:
        self.root = root

    def __reduce__(self) -> tuple[Any, ...]:
        return PackedBatch, (self.root,)


class _Rebuild:
    """A dict, list or tuple with a ``_ByValue`` somewhere inside: its type, keys and values.

    Containers without one travel as they are, so unpacking walks only the paths that lead to
    packed tensors, never the long str and bytes columns.
    """

    __slots__ = ("keys", "kind", "values")

    def __init__(self, kind: type, keys: list[Any] | None, values: list[Any]) -> None:
        self.kind = kind
        self.keys = keys
        self.values = values

    def __reduce__(self) -> tuple[Any, ...]:
        return _Rebuild, (self.kind, self.keys, self.values)

    def build(self) -> Any:
        """The container again, with its packed values unpacked."""
        values = [_unpack(value) for value in self.values]
        if self.keys is None:
            return self.kind(values)
        return dict(zip(self.keys, values, strict=True))


class _ByValue:
    """One tensor as its numpy array (pickled by value) plus the strides to give it back."""

    __slots__ = ("array", "stride")

    def __init__(self, array: np.ndarray, stride: tuple[int, ...]) -> None:
        self.array = array
        self.stride = stride

    def __reduce__(self) -> tuple[Any, ...]:
        return _ByValue, (self.array, self.stride)

    def tensor(self) -> torch.Tensor:
        """The tensor again, sharing the unpickled array's memory."""
        out = torch.from_numpy(self.array)
        if out.stride() != self.stride:
            # numpy and torch may stride axes of length 0 or 1 differently; such axes never
            # address memory, so restriding the same buffer changes no value.
            out = out.as_strided(out.shape, self.stride)
        return out


def collate_for_transfer(batch: Any) -> Any:
    """StreamingDataLoader's default collate when workers hand batches to the main process.

    Outside a worker it is ``fast_collate``. Inside one, the batch ``fast_collate`` would return,
    wrapped in a :class:`PackedBatch` when it holds tensors of at most ``BY_VALUE_MAX_BYTES``;
    :func:`unpack` in the main process restores it.
    """
    if get_worker_info() is None:
        return fast_collate(batch)
    collated = collate_sharing(batch, BY_VALUE_MAX_BYTES + 1)
    root, changed = _pack(collated)
    return PackedBatch(root) if changed else collated


def widen_result_pipe(iterator: Any) -> None:
    """Give the pipe from a DataLoader iterator's workers room for whole batches (Linux).

    Batches reach the main process through a pipe of 64 KiB by default, so a 250 KiB batch (the
    bench's 256 samples of about 1 KiB) crosses in four rounds, each a write that fills the pipe,
    a wake-up and a read that drains it. With 1 MiB, the worker writes a batch at once and the
    main process reads it in one call: with a user collate_fn returning the samples, 2 workers
    went from 188,000 to 250,000-268,000 samples/s and from 7.2 to 6.1 us of CPU per sample.
    Where the pipe cannot grow (not Linux, no such iterator, a per-user pipe quota) nothing
    changes.
    """
    queue = getattr(iterator, "_worker_result_queue", None)
    reader = getattr(queue, "_reader", None)
    if reader is None:
        return
    try:
        import fcntl

        set_size = fcntl.F_SETPIPE_SZ  # Linux only
        descriptor = reader.fileno()
        size = RESULT_PIPE_BYTES
        while size > 1 << 16:
            try:
                fcntl.fcntl(descriptor, set_size, size)
                return
            except PermissionError:  # above this user's limit: try a smaller one
                size //= 2
    except (ImportError, AttributeError, OSError, ValueError):
        return


def unpack(batch: Any) -> Any:
    """The batch a worker's :func:`collate_for_transfer` packed; any other value unchanged."""
    if type(batch) is not PackedBatch:
        return batch
    return _unpack(batch.root)


def _pack(value: Any) -> tuple[Any, bool]:
    """(value with its small tensors as ``_ByValue``, whether any was replaced).

    Walks exactly the containers ``fast_collate`` builds (dict, list, tuple) but not str or
    bytes columns (lists or tuples whose first value is one: default_collate leaves them as
    they are, so any tensor inside them, which is rare, goes as shared memory); anything else,
    namedtuples and mapping subclasses included, travels as it is.
    """
    kind = type(value)
    if kind is torch.Tensor:
        return _pack_tensor(value)
    if kind is dict:
        keys, values = list(value), list(value.values())
    elif (kind is list or kind is tuple) and value and type(value[0]) not in _TEXT:
        keys, values = None, value
    else:
        return value, False
    pairs = [_pack(item) for item in values]
    if not any(changed for _, changed in pairs):
        return value, False
    return _Rebuild(kind, keys, [item for item, _ in pairs]), True


def _pack_tensor(tensor: torch.Tensor) -> tuple[Any, bool]:
    """A small, plain, contiguous CPU tensor as ``_ByValue``; any other tensor as it is."""
    if (
        tensor.nbytes > BY_VALUE_MAX_BYTES
        or tensor.device.type != "cpu"
        or tensor.layout != torch.strided
        or tensor.requires_grad
        or not tensor.is_contiguous()
    ):
        return tensor, False
    try:
        # numpy() shares the tensor's memory; it refuses dtypes numpy lacks (bfloat16) and
        # tensors with a pending conjugate or negation.
        array = tensor.numpy()
    except (TypeError, RuntimeError):
        return tensor, False
    return _ByValue(array, tensor.stride()), True


def _unpack(value: Any) -> Any:
    kind = type(value)
    if kind is _ByValue:
        return value.tensor()
    if kind is _Rebuild or kind is _Samples:
        return value.build()
    return value


# ---- a user's collate_fn that returns the samples ----------------------------------------------

# Column kinds of a packed list of samples.
_RAW, _SCALARS, _ARRAYS = 0, 1, 2
# Values a raw column may hold: immutable, and unable to contain anything a packed column holds,
# so one pickle of all columns keeps every identity the plain pickle would keep.
_ATOMIC = frozenset({str, bytes, int, float, bool, complex, type(None)})
# dtype kinds whose values numpy copies bit for bit (no objects, dates, strings or records).
_NUMERIC_KINDS = frozenset("biufc")
# x86's long double fills 10 of its 16 bytes: the pickle copies the other 6 as they are, a
# conversion does not, so ``tobytes()`` could tell the two apart.
_PADDED = frozenset({np.longdouble, np.clongdouble})
_dtype_of = attrgetter("dtype")


def _arrays_arrive_owned() -> bool:
    """Whether the workers' pickle gives every array back as a writable array owning its data.

    It does with pickle protocol 4 (Python up to 3.13's default): ``ndarray.__reduce__`` copies
    the bytes, read-only or not. Protocol 5 (3.14's default) rebuilds a read-only array over a
    read-only buffer instead; array columns then travel unpacked rather than guessing.
    """
    writable = np.arange(3, dtype=np.float32)
    read_only = np.frombuffer(writable.tobytes(), np.float32)
    for array in (writable, read_only):
        back = pickle.loads(bytes(ForkingPickler.dumps(array)))
        if not (back.flags.writeable and back.flags.owndata and back.base is None):
            return False
    return True


_PACK_ARRAYS = _arrays_arrive_owned()
# numpy's two bool scalars are singletons, both when unpickled and when read from an array, so
# a bool column may hold one object many times and still come back exactly as pickled.
_BOOLS_ARE_SINGLETONS = all(
    pickle.loads(bytes(ForkingPickler.dumps(np.bool_(flag)))) is np.array([flag])[0]
    for flag in (False, True)
)


class _Samples:
    """A list of same-keyed dicts as columns: the keys, then (kind, payload) per key.

    ``_SCALARS`` columns are one array of the scalars' own dtype, ``_ARRAYS`` columns one array
    stacking the samples' arrays, ``_RAW`` columns the list of values as they are.
    """

    __slots__ = ("columns", "keys")

    def __init__(self, keys: list[Any], columns: list[tuple[int, Any]]) -> None:
        self.keys = keys
        self.columns = columns

    def __reduce__(self) -> tuple[Any, ...]:
        return _Samples, (self.keys, self.columns)

    def build(self) -> list[dict[Any, Any]]:
        """The list of dicts again, as the plain pickle round trip would have rebuilt it."""
        values = []
        for kind, payload in self.columns:
            if kind == _SCALARS:
                values.append(list(payload))  # iterating a 1-D array yields its numpy scalars
            elif kind == _ARRAYS:
                # Unpickled arrays own their memory: copy each row out of the stacked array.
                values.append(list(map(np.ndarray.copy, payload)))
            else:
                values.append(payload)
        return dicts_of(self.keys, values)


def dicts_of(keys: list[Any], columns: list[Sequence[Any]]) -> list[dict[Any, Any]]:
    """Dict ``i`` maps ``keys[k]`` to ``columns[k][i]``, keys inserted in order."""
    if _c_dicts_of is not None:
        return _c_dicts_of(keys, columns)
    return list(map(_dict_maker(len(keys))(*keys), *columns))


@functools.lru_cache(maxsize=64)
def _dict_maker(size: int) -> Callable[..., Callable[..., dict[Any, Any]]]:
    """``make(*keys)``: a function of ``size`` values returning ``{keys[0]: v0, ...}``.

    A dict display of closure variables builds a sample in half the time of
    ``dict(zip(keys, values))``; the keys are the unpickled objects themselves, never source.
    """
    names = [f"k{i}" for i in range(size)]
    values = [f"v{i}" for i in range(size)]
    items = ", ".join(f"{k}: {v}" for k, v in zip(names, values, strict=True))
    source = f"def make({', '.join(names)}):\n    return lambda {', '.join(values)}: {{{items}}}\n"
    env: dict[str, Any] = {}
    exec(compile(source, f"<mdsloader dict of {size}>", "exec"), env)
    return env["make"]


def columns_of(batch: Any) -> tuple[list[Any], list[tuple[Any, ...]], list[type | None]] | None:
    """A list of same-keyed dicts as ``(keys, columns, kinds)``, else None.

    For a ``list`` of at least two plain ``dict`` objects, none of them twice, holding the same
    key objects (by identity) in the same order, at least one: the keys, one tuple of values
    per key, and per column the values' type when they all have one exact type (None if not).
    """
    if _c_columns_of is not None:
        return _c_columns_of(batch)
    if type(batch) is not list or len(batch) < 2 or set(map(type, batch)) != {dict}:
        return None
    keys = list(batch[0])
    if not keys or set(map(len, batch)) != {len(keys)}:
        return None
    # Equal keys of other types (1 and True, a str subclass) would otherwise come back as the
    # first sample's.
    if not all(map(is_, chain.from_iterable(batch), cycle(keys))):
        return None
    if not all_distinct(batch):
        return None
    columns = list(zip(*map(dict.values, batch), strict=True))
    kinds: list[type | None] = []
    for column in columns:
        types = set(map(type, column))
        kinds.append(types.pop() if len(types) == 1 else None)
    return keys, columns, kinds


def all_distinct(*groups: Sequence[Any]) -> bool:
    """Whether no object appears twice (by identity) across the lists or tuples ``groups``."""
    if _c_all_distinct is not None:
        return _c_all_distinct(*groups)
    return len(set(map(id, chain.from_iterable(groups)))) == sum(map(len, groups))


class PackingCollate:
    """A user's ``collate_fn`` whose result is sent from a worker by :func:`pack_samples`.

    Returns exactly what the function returns; StreamingDataLoader hands only its worker
    processes this wrapper, and :func:`unpack` restores the function's result in the main
    process. Picklable whenever the function is (spawned workers).
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, batch: Any) -> Any:
        """The function's result, packed for the queue when called in a worker."""
        out = self.fn(batch)
        if get_worker_info() is None:
            return out
        return pack_samples(out)


def pack_samples(batch: Any) -> Any:
    """A list of dicts as a :class:`PackedBatch` of columns; any other value unchanged.

    Packs a ``list`` of plain ``dict`` samples that hold the same key objects in one order,
    when every column is either numpy scalars of one numeric type, numeric ndarrays of one dtype
    and shape (at least 1-D, native byte order), or Python str/bytes/numbers/None; no dict,
    scalar or array may appear twice (the plain pickle would keep such sharing, columns do
    not). Everything else, including any surprise in a single sample, goes as it is.
    """
    scanned = columns_of(batch)
    if scanned is None:
        return batch
    keys, values, kinds = scanned
    shared = []  # the packed columns' values, which must each be there once (see the docstring)
    columns = []
    for column, kind in zip(values, kinds, strict=True):
        if kind in _ATOMIC or (kind is None and set(map(type, column)) <= _ATOMIC):
            columns.append((_RAW, column))
            continue
        if kind is None:
            return batch
        packed = _stack(column) if kind is np.ndarray else _scalars(column, kind)
        if packed is None:
            return batch
        columns.append((_ARRAYS if kind is np.ndarray else _SCALARS, packed))
        if kind is not np.bool_ or not _BOOLS_ARE_SINGLETONS:
            shared.append(column)
    if shared and not all_distinct(*shared):
        return batch
    return PackedBatch(_Samples(keys, columns))


def _scalars(column: Sequence[Any], kind: type) -> np.ndarray | None:
    """Numpy scalars of one built-in numeric type as one array of that type, else None."""
    if not issubclass(kind, np.generic):
        return None
    dtype = np.dtype(kind)
    if dtype.type is not kind or dtype.kind not in _NUMERIC_KINDS or kind in _PADDED:
        return None  # a user-defined scalar subclass, or dates, strings, records, objects
    array = np.array(column, dtype=dtype)
    return array if array.dtype.type is kind else None


def _stack(column: Sequence[np.ndarray]) -> np.ndarray | None:
    """Same-dtype, same-shape numeric arrays as one C-ordered stack, else None."""
    if not _PACK_ARRAYS:
        return None
    first = column[0]
    dtype = first.dtype
    if (
        dtype.kind not in _NUMERIC_KINDS
        or dtype.type in _PADDED
        or not dtype.isnative
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.metadata is not None
        or first.ndim == 0  # rows of a stack of 0-d arrays would be scalars
        or first.size == 0  # copies of empty rows keep zero strides; unpickled ones do not
        # Equal dtypes (">" aside) unpickle alike: "<f4" and "=f4" as float32, "q" as "l".
        or len(set(map(_dtype_of, column))) != 1
    ):
        return None
    if first.ndim > 1:
        # The pickle keeps Fortran order (F- but not C-contiguous); rows of the stack are C.
        for array in column:
            flags = array.flags
            if flags.f_contiguous and not flags.c_contiguous:
                return None
    # Joining along the first axis and splitting it back is one C loop (np.stack is 3x dearer).
    try:
        joined = np.concatenate(column, axis=0)
    except ValueError:  # a different number of axes, or other lengths past the first
        return None
    # The join checked every axis but the first.
    if set(map(len, column)) != {len(first)}:
        return None
    return joined.reshape(len(column), *first.shape)
