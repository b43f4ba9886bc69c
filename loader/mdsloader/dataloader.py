"""StreamingDataLoader: a DataLoader that counts the samples it yields, for resumable checkpoints.

Unlike the reference it does not import ``transformers``: any ``Mapping`` batch (which includes
``BatchEncoding`` and ``BatchFeature``) is measured by its first value. Its default collate is
``fast_collate``, which returns what torch's ``default_collate`` returns at a fraction of the cost,
and with workers its small tensors come to the main process by value (``mdsloader.transfer``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from mdsloader.collate import fast_collate
from mdsloader.dataset import StreamingDataset
from mdsloader.transfer import PackingCollate, collate_for_transfer, unpack, widen_result_pipe

# Binds DataLoader's arguments by name, so a collate_fn passed positionally is seen as passed.
_DATALOADER_SIGNATURE = inspect.signature(DataLoader.__init__)


def batch_length(batch: Any) -> int:
    """The number of samples in a collated batch.

    ``len`` of the first value for mappings, ``len`` of a tensor, else ``len(batch[0])`` (a tuple
    or list of columns), following the reference's rules.
    """
    if isinstance(batch, Mapping):
        return len(next(iter(batch.values())))
    if isinstance(batch, torch.Tensor):
        return len(batch)
    return len(batch[0])


class StreamingDataLoader(DataLoader):  # type: ignore[type-arg]
    """A ``torch.utils.data.DataLoader`` with ``state_dict``/``load_state_dict`` for resumption.

    Takes exactly the DataLoader's arguments. Works with ``num_workers`` 0 or N and with
    persistent workers; take the state between training steps.

    When batching is on and no ``collate_fn`` is given (or it is None), batches are collated by
    :func:`mdsloader.collate.fast_collate`: the same batches as torch's ``default_collate`` (types,
    dtypes, shapes, strides, values), built column by column with numpy. With workers and without
    ``pin_memory``, tensors of up to 512 KiB travel from the workers by value instead of as shared
    memory, which costs both sides far less CPU; they arrive as ordinary tensors, so only their
    ``is_shared()`` differs from ``default_collate``'s. That is decided at construction
    (``collate_fn`` is then ``mdsloader.transfer.collate_for_transfer``).

    An explicit ``collate_fn`` is used as given and stays ``self.collate_fn``. With workers, a
    result that is a list of sample dicts (``collate_fn=lambda batch: batch``) travels to the
    main process packed into columns and is rebuilt there as the plain pickle would have
    rebuilt it (see :func:`mdsloader.transfer.pack_samples`); other results travel as they are.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Create the loader; see ``torch.utils.data.DataLoader`` for the arguments."""
        super().__init__(*args, **kwargs)
        chosen = _DATALOADER_SIGNATURE.bind(self, *args, **kwargs).arguments.get("collate_fn")
        if chosen is None and self.batch_sampler is not None:
            # batch_sampler is set exactly when the DataLoader collates lists of samples; without
            # it, collate_fn is default_convert, applied per sample, and stays.
            self.collate_fn = fast_collate
            # With pin_memory, torch's pin thread sees batches before __iter__ unpacks them, so
            # they keep the plain form there.
            if self.num_workers > 0 and not self.pin_memory:
                self.collate_fn = collate_for_transfer
        # The user's own collate_fn is wrapped only for the worker processes (_get_iterator).
        self._pack_user_batches = chosen is not None and self.batch_sampler is not None
        self.num_samples_yielded = 0

    def _get_iterator(self) -> Any:
        """torch's iterator; its workers get a user's collate_fn wrapped by ``PackingCollate``,
        and their result pipe room for whole batches (``widen_result_pipe``).

        The multiprocessing iterator reads ``collate_fn`` once, when it starts its workers, so
        the wrapper is set only for that moment and ``self.collate_fn`` stays the user's.
        """
        fn = self.collate_fn
        if self.num_workers == 0 or not self._pack_user_batches or type(fn) is PackingCollate:
            iterator = super()._get_iterator()
        else:
            self.collate_fn = PackingCollate(fn)
            try:
                iterator = super()._get_iterator()
            finally:
                self.collate_fn = fn
        widen_result_pipe(iterator)
        return iterator

    def __iter__(self) -> Iterator[Any]:
        """Iterate one epoch, counting the samples handed to the training loop."""
        self.num_samples_yielded = 0
        for item in super().__iter__():
            batch = unpack(item)
            self.num_samples_yielded += batch_length(batch)
            yield batch

    def state_dict(self) -> dict[str, Any] | None:
        """The dataset's resumable state, or None when the dataset is not a StreamingDataset.

        Every rank yields the same number of samples, so the global count is this rank's count
        times the number of ranks (divided by ``replication``, whose ranks share samples).
        """
        dataset = self.dataset
        if not isinstance(dataset, StreamingDataset):
            return None
        num_samples = self.num_samples_yielded * dataset._rank_world.num_ranks
        if dataset._options.replication:
            num_samples //= dataset._options.replication
        return dataset.state_dict(num_samples, False)

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """Resume the dataset from ``obj`` at the next epoch start (call before iterating)."""
        dataset = self.dataset
        if isinstance(dataset, StreamingDataset):
            dataset.load_state_dict(obj)

    def __del__(self) -> None:
        iterator = getattr(self, "_iterator", None)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
