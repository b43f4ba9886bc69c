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
    from mdsloader.stream import Stream


@dataclass(frozen=True, slots=True)
class Catalog:
    """All shards of a dataset and the arrays that locate samples in them.

    Attributes:
        shards: Every shard's ``ShardInfo``, streams concatenated.
        stream_of_shard: Stream index of each shard.
        samples_per_shard: Samples in each shard.
        shard_ends: ``cumsum(samples_per_shard)``: the global id just past each shard.
        samples_per_stream: Unique samples of each stream.
        shards_per_stream: Shards of each stream.
        index_bytes: Total size of the streams' ``index.json`` files.
    """

    shards: tuple[Any, ...]
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
        return max(
            (s.raw_data.bytes + (s.zip_data.bytes if s.zip_data else 0) for s in self.shards),
            default=0,
        )


def check_safe(shards: Sequence[Any], *, allow_unsafe_types: bool, source: str) -> None:
    """Refuse datasets with ``pkl`` columns unless explicitly allowed, before anything decodes.

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

    Raises:
        EmptyDatasetError: A stream has no samples (a ``ValueError`` and a ``RuntimeError``).
        UnsafeTypeError: A ``pkl`` column without ``allow_unsafe_types``.
        IndexFormatError: An index is malformed.
    """
    from mdsloader.mds.index import parse_index

    shards: list[Any] = []
    stream_of_shard: list[int] = []
    samples_per_stream, shards_per_stream = [], []
    index_bytes = 0
    for stream_id, stream in enumerate(streams):
        data = stream.fetch_index()
        source = str(stream.local_root / "index.json")
        index = parse_index(data, source=source)
        check_safe(index.shards, allow_unsafe_types=allow_unsafe_types, source=source)
        count = sum(int(shard.samples) for shard in index.shards)
        if not count:
            raise EmptyDatasetError(f"Stream contains no samples: {source}.")
        index_bytes += len(data)
        shards.extend(index.shards)
        stream_of_shard += [stream_id] * len(index.shards)
        samples_per_stream.append(count)
        shards_per_stream.append(len(index.shards))
    samples = np.array([int(s.samples) for s in shards], np.int64)
    return Catalog(
        shards=tuple(shards),
        stream_of_shard=np.array(stream_of_shard, np.int64),
        samples_per_shard=samples,
        shard_ends=np.cumsum(samples).astype(np.int64),
        samples_per_stream=np.array(samples_per_stream, np.int64),
        shards_per_stream=np.array(shards_per_stream, np.int64),
        index_bytes=index_bytes,
    )
