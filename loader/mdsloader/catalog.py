"""The shard catalog of a dataset: every stream's index, concatenated and checked.

Shards of all streams are numbered globally in stream order, and global sample ids run through
them in the same order, exactly as in the reference (its ``Spanner``), so sample ids agree with
mosaicml-streaming for the same streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from mdsloader.errors import EmptyDatasetError, UnsafeTypeError

if TYPE_CHECKING:
    from mdsloader.mds.index import ShardTable
    from mdsloader.stream import Stream


@dataclass(frozen=True, slots=True)
class Catalog:
    """All shards of a dataset and the arrays that locate samples in them.

    Attributes:
        shards: Every shard's ``ShardInfo``, streams concatenated, as a columnar
            :class:`~mdsloader.mds.index.ShardTable` (entries are built when first read; the
            hot paths read its arrays).
        stream_of_shard: Stream index of each shard.
        samples_per_shard: Samples in each shard.
        shard_ends: ``cumsum(samples_per_shard)``: the global id just past each shard.
        samples_per_stream: Unique samples of each stream.
        shards_per_stream: Shards of each stream.
        index_bytes: Total size of the streams' ``index.json`` files.
    """

    shards: ShardTable
    stream_of_shard: NDArray[np.int64]
    samples_per_shard: NDArray[np.int64]
    shard_ends: NDArray[np.int64]
    samples_per_stream: NDArray[np.int64]
    shards_per_stream: NDArray[np.int64]
    index_bytes: int

    @property
    def num_samples(self) -> int:
        """Unique samples over all streams."""
        return int(self.shard_ends[-1]) if len(self.shard_ends) else 0

    @property
    def max_shard_bytes(self) -> int:
        """The largest raw-plus-zip size of any shard (for the cache-limit check)."""
        if not len(self.shards):
            return 0
        return int((self.shards.raw_bytes + self.shards.zip_bytes).max())


def check_safe(shards: Sequence[Any], *, allow_unsafe_types: bool, source: str) -> None:
    """Refuse datasets with ``pkl`` columns unless explicitly allowed, before anything decodes.

    Args:
        shards: Shard entries (anything with ``column_names`` and ``column_encodings``); one per
            distinct layout is enough.

    Raises:
        UnsafeTypeError: Naming the first unsafe column.
    """
    if allow_unsafe_types:
        return
    from mdsloader.mds.encodings import is_unsafe

    for shard in shards:
        for name, encoding in zip(shard.column_names, shard.column_encodings):
            if is_unsafe(encoding):
                raise UnsafeTypeError(
                    f"Column {name!r} of {source} contains an unsafe type: {encoding!r} (decoding "
                    f"it runs pickle); pass allow_unsafe_types=True only if you trust the data"
                )


def load_catalog(streams: Sequence[Stream], *, allow_unsafe_types: bool) -> Catalog:
    """Fetch every stream's index and build the catalog.

    Per-shard work is columnar (numpy arrays and lists from the index parser): no per-shard
    Python object is built here, so 100,000 shards cost little more than parsing the JSON.

    Raises:
        EmptyDatasetError: A stream has no samples (a ``ValueError`` and a ``RuntimeError``).
        UnsafeTypeError: A ``pkl`` column without ``allow_unsafe_types``.
        IndexFormatError: An index is malformed.
    """
    from mdsloader.mds.index import ShardTable, parse_shard_table

    tables: list[ShardTable] = []
    samples_per_stream, shards_per_stream = [], []
    index_bytes = 0
    for stream in streams:
        data = stream.fetch_index()
        source = str(stream.local_root / "index.json")
        table = parse_shard_table(data, source=source)
        index_bytes += len(data)
        del data
        # The first shard of each layout, in shard order: the first unsafe column found is the
        # same as when every shard is checked.
        firsts = [table[i] for i in table.first_of_layouts()]
        check_safe(firsts, allow_unsafe_types=allow_unsafe_types, source=source)
        count = int(table.samples.sum())
        if not count:
            raise EmptyDatasetError(f"Stream contains no samples: {source}.")
        tables.append(table)
        samples_per_stream.append(count)
        shards_per_stream.append(len(table))
    shards = ShardTable.concat(tables)
    per_stream = np.array(shards_per_stream, np.int64)
    return Catalog(
        shards=shards,
        stream_of_shard=np.repeat(np.arange(len(tables), dtype=np.int64), per_stream),
        samples_per_shard=shards.samples.copy(),
        shard_ends=np.cumsum(shards.samples).astype(np.int64),
        samples_per_stream=np.array(samples_per_stream, np.int64),
        shards_per_stream=per_stream,
        index_bytes=index_bytes,
    )
