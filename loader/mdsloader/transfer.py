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
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info

from mdsloader.collate import collate_sharing, fast_collate

# Tensors up to this size go by value, bigger ones through shared memory. Measured with one
# tensor per message through a forked worker's torch.multiprocessing queue, the main process
# reading every byte (torch 2.13, 2-core x86 VM), CPU of both sides per tensor: 64 KiB 86 us by
# value vs 434 us shared, 256 KiB 349 vs 1051, 512 KiB 744-1034 vs 1508-1827, 768 KiB-1 MiB
# by value dearer (3892 vs 2540 at 768 KiB, 3712-4546 vs 2288-3612 at 1 MiB), 4 MiB 18311 vs 7306.
BY_VALUE_MAX_BYTES = 512 << 10

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
    if kind is _Rebuild:
        return value.build()
    return value
