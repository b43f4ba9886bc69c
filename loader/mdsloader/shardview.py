"""The iteration loop's view of one local shard: mmap, offsets, and a precomputed decoder.

``mdsloader.mds.reader.ShardReader`` is the general-purpose reader; this view is the hot path of
``StreamingDataset``. Opening is O(1) in Python objects: the offsets stay a ``memoryview`` over
the mapped header (no list of millions of ints is built, which matters for shards of tiny
samples), and decoding a run of samples is one tight loop of ``decode(map[begin:end])`` with the
layout's generated decoder (:mod:`mdsloader.fastdecode`). Slicing
an mmap copies, so decoded values never alias the file, and the mapping stays valid after the
file is evicted (Linux keeps an unlinked inode alive while it is mapped).
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from mdsloader.errors import ObjectNotFoundError, ShardFormatError

# Offsets compared at a time: the temporaries stay cache-sized instead of costing fresh pages.
_CHECK_CHUNK = 1 << 18


class ShardView:
    """Random access to the samples of one raw (uncompressed) shard file.

    Args:
        path: The raw shard file.
        info: Its ``ShardInfo``; unsafe columns must have been checked by the caller.

    Raises:
        ObjectNotFoundError: The file does not exist (e.g. it was just evicted).
        ShardFormatError: The file disagrees with the index (size or header).
    """

    def __init__(self, path: str | os.PathLike[str], info: Any) -> None:
        from mdsloader.fastdecode import decoder_for

        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size != info.raw_data.bytes:
                    raise ShardFormatError(
                        f"{self.path}: {size} bytes, the index says {info.raw_data.bytes}"
                    )
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                stat = os.fstat(handle.fileno())
                self._identity = (stat.st_dev, stat.st_ino)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"shard file {self.path} does not exist") from exc
        check_header(self._map, info.samples, where=self.path)
        #: The mapped file, the N+1 offsets (uint32 view) and the decode function: public so
        #: the dataset's loop can inline ``decode(data[offsets[i] : offsets[i + 1]])``.
        self.data = self._map
        self.offsets = memoryview(self._map)[4 : 4 * (info.samples + 2)].cast("I")
        #: The same offsets as a read-only numpy view, so that one gather gives the byte ranges
        #: of many samples.
        self.offset_array = np.frombuffer(self._map, "<u4", info.samples + 1, 4)
        self.decode = decoder_for(info)
        self.samples = int(info.samples)

    def __len__(self) -> int:
        return self.samples

    def is_current(self) -> bool:
        """Whether the mapped file is still the one at ``path`` (not deleted or replaced).

        The map stays readable either way; a caller that wants the cache's current file (and an
        evicted one downloaded again) reopens the shard when this is False.
        """
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (stat.st_dev, stat.st_ino) == self._identity

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Decode sample ``index`` of this shard (0-based, no negative indices)."""
        offsets = self.offsets
        return self.decode(self._map[offsets[index] : offsets[index + 1]])

    def close(self) -> None:
        """Drop this view's references to the mapping.

        The map is unmapped when the last reference goes, not here: an iteration loop may still
        hold ``data``/``offsets`` of a view that the reader cache has just closed.
        """
        self.data = self.offsets = self.offset_array = self._map = None  # type: ignore[assignment]


def check_header(data: Any, num_samples: int, *, where: str) -> None:
    """The checks of ``mdsloader.mds.shard.read_offsets``, with the same errors, in place.

    ``read_offsets`` returns the offsets as a new int64 array, which the view does not need:
    comparing the mapped uint32 offsets chunk by chunk makes no full-size copy, which at
    millions of samples per shard is most of the cost of opening it.

    Raises:
        ShardFormatError: The file is truncated or its header disagrees with the index.
    """
    header_len = 4 * (num_samples + 2)
    if len(data) < header_len:
        raise ShardFormatError(f"{where}: truncated: {len(data)} bytes, header needs {header_len}")
    header = np.frombuffer(data, "<u4", num_samples + 2)
    if header[0] != num_samples:
        raise ShardFormatError(f"{where}: holds {header[0]} samples, the index says {num_samples}")
    offsets = header[1:]
    if offsets[0] < header_len or _has_decrease(offsets):
        raise ShardFormatError(f"{where}: corrupt sample offsets")
    if offsets[-1] != len(data):
        raise ShardFormatError(
            f"{where}: truncated or padded: {len(data)} bytes, the offsets say {offsets[-1]}"
        )


def _has_decrease(offsets: np.ndarray) -> bool:
    """Whether some offset is smaller than the one before it."""
    for begin in range(0, offsets.size - 1, _CHECK_CHUNK):
        chunk = offsets[begin : begin + _CHECK_CHUNK + 1]
        if np.any(chunk[1:] < chunk[:-1]):
            return True
    return False
