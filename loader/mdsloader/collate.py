"""fast_collate: torch's ``default_collate``, vectorised per column for MDS-style samples.

``default_collate`` converts every numpy value to a tensor one sample at a time and recurses in
Python, which costs more than decoding the samples. Here a batch of dicts (or tuples/lists) is cut
into columns and each column of numpy scalars, same-shaped ndarrays or Python numbers is written
into its output tensor by one numpy call. Strings and bytes stay lists, tensors go to torch as
before. Anything else, and any batch the fast path cannot take whole, is handed to
``default_collate``, so its results and its errors are what the caller gets.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info
from torch.utils.data._utils.collate import default_collate_fn_map

__all__ = ["fast_collate"]

# default_collate's documented extension point is editing this registry in place; a changed
# registry means the caller wants other rules than the ones reproduced here.
_DEFAULT_RULES = dict(default_collate_fn_map)

# Scalar type -> tensor dtype, as torch.as_tensor infers it from a list of such scalars. np.uint64
# is absent on purpose: torch 2.13 cannot convert a list of them (TypeError), so default_collate
# must raise it. Python numbers follow torch.tensor (int -> int64, bool -> bool) except float,
# which default_collate pins to float64.
_SCALAR_DTYPES: dict[type, torch.dtype] = {
    np.int8: torch.int8,
    np.int16: torch.int16,
    np.int32: torch.int32,
    np.int64: torch.int64,
    np.uint8: torch.uint8,
    np.uint16: torch.uint16,
    np.uint32: torch.uint32,
    np.float16: torch.float16,
    np.float32: torch.float32,
    np.float64: torch.float64,
    np.bool_: torch.bool,
    int: torch.int64,
    float: torch.float64,
    bool: torch.bool,
}

# ndarray dtype -> tensor dtype (torch.as_tensor's mapping; native byte order only, so a
# byte-swapped array misses the lookup and keeps default_collate's behaviour).
_ARRAY_DTYPES: dict[np.dtype[Any], torch.dtype] = {
    np.dtype(t): d for t, d in _SCALAR_DTYPES.items() if issubclass(t, np.generic)
}
_ARRAY_DTYPES[np.dtype(np.uint64)] = torch.uint64

_layout = attrgetter("shape", "strides")


def fast_collate(batch: Sequence[Any]) -> Any:
    """Collate a batch exactly as ``torch.utils.data.default_collate`` does, only faster.

    Same container types, keys and key order, tensor dtypes, shapes, strides and values; str and
    bytes columns stay lists (tuples for tuple samples, as in ``default_collate``). Inside a
    DataLoader worker, stacked ndarray columns are written straight into shared memory, as
    ``default_collate`` does for its stacked tensors, so they are not copied again on their way
    to the main process. Unlike ``default_collate`` it does not warn about read-only arrays: it
    copies them and never wraps them in a tensor.

    Fast: batches of plain dicts, tuples or lists whose columns hold numpy scalars, same-shaped
    numeric ndarrays, Python int/float/bool, str, bytes or tensors (and such columns directly).
    Everything else (ragged or object arrays, None, mixed types, namedtuples, mapping subclasses,
    nested containers) goes to ``default_collate``, per column or for the whole batch.

    Args:
        batch: the samples of one batch, as the DataLoader's fetcher hands them over.

    Returns:
        What ``default_collate(batch)`` returns.

    Raises:
        Exception: whatever ``default_collate(batch)`` raises for this batch.
    """
    return collate_sharing(batch, 0 if get_worker_info() is not None else None)


def collate_sharing(batch: Sequence[Any], share_from: int | None) -> Any:
    """``fast_collate`` with a chosen home for its stacked arrays (private to mdsloader).

    Stacked ndarray columns of at least ``share_from`` bytes are built in shared memory, smaller
    ones (all of them when ``share_from`` is None) in ordinary memory. ``fast_collate`` shares
    them all inside workers, as ``default_collate`` does; the loader's by-value transfer
    (:mod:`mdsloader.transfer`) shares only those it leaves to torch's file-descriptor passing.
    """
    if default_collate_fn_map != _DEFAULT_RULES:
        return default_collate(batch)
    try:
        return _collate(batch, share_from)
    except Exception:
        # Malformed batches (a missing key, ragged tuples, a value out of range) are rare: let
        # default_collate redo the batch so the error, or the result, is exactly its own.
        return default_collate(batch)


def _collate(batch: Sequence[Any], share_from: int | None) -> Any:
    elem = batch[0]
    kind = type(elem)
    if kind is dict:
        return {key: _collate_column([sample[key] for sample in batch], share_from) for key in elem}
    if kind is tuple or kind is list:
        # default_collate returns a list of columns for both, each column a zip tuple. Ragged
        # samples make zip raise, and default_collate then raises its own error.
        return [_collate_column(column, share_from) for column in zip(*batch, strict=True)]
    return _collate_column(batch, share_from)


def _collate_column(values: Sequence[Any], share_from: int | None) -> Any:
    """One column: dispatch on the first value's exact type, as default_collate does."""
    kind = type(values[0])
    if kind is str or kind is bytes:
        return values  # default_collate hands such a column back as it is
    if kind is np.ndarray:
        return _stack_arrays(values, share_from)
    dtype = _SCALAR_DTYPES.get(kind)
    if dtype is not None:
        return _scalars(values, dtype)
    return default_collate(values)


def _scalars(values: Sequence[Any], dtype: torch.dtype) -> torch.Tensor:
    """A column of scalars of one type; mixed types promote in torch, so default_collate."""
    if len(set(map(type, values))) != 1:  # set(map(...)) iterates in C
        return default_collate(values)
    out = torch.empty(len(values), dtype=dtype)
    # One conversion of the whole list. default_collate's own tensor is not in shared memory
    # here (torch.as_tensor / torch.tensor), so neither is this one.
    out.numpy()[:] = values
    return out


def _stack_arrays(values: Sequence[np.ndarray], share_from: int | None) -> Any:
    """Same-shaped, same-dtype, plainly strided ndarrays -> one stacked tensor; else default."""
    elem = values[0]
    dtype = _ARRAY_DTYPES.get(elem.dtype)
    # The fast path takes one layout only: C-contiguous with strides that are non-negative
    # multiples of the item size (numpy lets a length-1 axis have any stride; torch.as_tensor
    # rejects the odd ones), which is what makes torch.stack's result plainly contiguous.
    if (
        dtype is None
        or not elem.flags.c_contiguous
        or any(stride < 0 or stride % elem.itemsize for stride in elem.strides)
        or len(set(map(type, values))) != 1
        or len(set(map(_layout, values))) != 1
    ):
        return default_collate(values)
    out = _new_tensor((len(values), *elem.shape), dtype, share_from)
    target = out.numpy()
    if elem.ndim:
        # Joining along the first axis into a (n * rows, ...) view is one C loop; casting="no"
        # rejects any array of another dtype instead of converting it.
        np.concatenate(values, axis=0, out=target.reshape(-1, *elem.shape[1:]), casting="no")
    else:
        np.stack(values, axis=0, out=target, casting="no")
    return out


def _new_tensor(shape: tuple[int, ...], dtype: torch.dtype, share_from: int | None) -> torch.Tensor:
    """An uninitialised contiguous tensor, in shared memory from ``share_from`` bytes up."""
    numel = 1
    for size in shape:
        numel *= size
    nbytes = numel * dtype.itemsize
    if share_from is None or nbytes < share_from:
        return torch.empty(shape, dtype=dtype)
    # Like default_collate's stacked tensors in workers: the worker's result queue then passes
    # the storage by file descriptor instead of copying it into shared memory first.
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
