"""The byte layout of one MDS shard file, and building one from encoded sample records.

Layout of an uncompressed shard (all integers little-endian)::

    offset 0              uint32 N                      number of samples
    offset 4              uint32 offsets[0..N]          N+1 ABSOLUTE positions in this file
    offset 8 + 4N         config JSON (UTF-8)           json.dumps(config, sort_keys=True)
    offsets[i]            sample i, up to offsets[i+1]
    offsets[N]            == the file length

The config is the shard's index entry without ``raw_data``, ``zip_data`` and ``samples``.
Each sample record is laid out by the column plan (see :mod:`mdsloader.mds.record`): one uint32
length per variable-size column, in column order, then every column's bytes in column order.

Because offsets are uint32, a shard file must stay below 4 GiB: :func:`check_shard_size` refuses
any shard whose length would not fit, whatever the size limit (the reference silently overflows).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from mdsloader.errors import ShardFormatError, ShardTooLargeError

__all__ = [
    "MAX_SHARD_BYTES",
    "check_shard_size",
    "config_json",
    "encode_shard",
    "read_offsets",
    "shard_parts",
    "shard_size",
]

# offsets[N] must equal the file length and be a uint32.
MAX_SHARD_BYTES = (1 << 32) - 1

Buffer = bytes | bytearray | memoryview


def config_json(config: dict[str, Any]) -> bytes:
    """Return the embedded config exactly as the reference writes it (sorted keys, ASCII)."""
    return json.dumps(config, sort_keys=True).encode("utf-8")


def shard_size(num_samples: int, config_len: int, data_len: int) -> int:
    """Return the exact file length of a shard with these samples (header + config + data)."""
    return 4 + 4 * (num_samples + 1) + config_len + data_len


def check_shard_size(num_samples: int, config_len: int, data_len: int) -> None:
    """Refuse a shard that uint32 offsets cannot address.

    Raises:
        ShardTooLargeError: The shard would be 4 GiB or more.
    """
    size = shard_size(num_samples, config_len, data_len)
    if size > MAX_SHARD_BYTES:
        raise ShardTooLargeError(
            f"a shard of {num_samples} samples would be {size} bytes; MDS shards must stay below "
            "4 GiB because sample offsets are uint32 (use smaller samples or a smaller size_limit)"
        )


def shard_parts(config: bytes, chunks: Sequence[Buffer], sizes: np.ndarray) -> list[Buffer]:
    """Return a shard file as buffers to concatenate (header, config, then the records).

    Args:
        config: The config JSON from :func:`config_json`.
        chunks: Buffers whose concatenation is every sample record in order.
        sizes: The length of each sample record (so ``sum(sizes) == total length of chunks``).

    Raises:
        ShardTooLargeError: The shard would not fit uint32 offsets.
    """
    num = len(sizes)
    data_len = int(np.sum(sizes, dtype=np.int64))
    check_shard_size(num, len(config), data_len)
    head = np.empty(num + 2, "<u4")
    head[0] = num
    head[1] = 4 + 4 * (num + 1) + len(config)
    np.cumsum(sizes, out=head[2:], dtype="<u4")
    head[2:] += head[1]
    return [head.tobytes(), config, *chunks]


def encode_shard(config: bytes, chunks: Sequence[Buffer], sizes: np.ndarray) -> bytes:
    """Build a shard file as one ``bytes`` object; see :func:`shard_parts`."""
    return b"".join(shard_parts(config, chunks, sizes))


def read_offsets(data: Buffer, num_samples: int, *, where: str) -> np.ndarray:
    """Read and check the header of an uncompressed shard.

    Args:
        data: The whole shard file (or a memory map of it).
        num_samples: The sample count recorded in the index.
        where: The file name, for error messages.

    Returns:
        The N+1 absolute offsets as int64.

    Raises:
        ShardFormatError: The file is truncated or its header disagrees with the index.
    """
    header_len = 4 * (num_samples + 2)
    if len(data) < header_len:
        raise ShardFormatError(f"{where}: truncated: {len(data)} bytes, header needs {header_len}")
    header = np.frombuffer(data, "<u4", num_samples + 2).astype(np.int64)
    if header[0] != num_samples:
        raise ShardFormatError(f"{where}: holds {header[0]} samples, the index says {num_samples}")
    offsets = header[1:]
    if offsets[0] < header_len or np.any(np.diff(offsets) < 0):
        raise ShardFormatError(f"{where}: corrupt sample offsets")
    if offsets[-1] != len(data):
        raise ShardFormatError(
            f"{where}: truncated or padded: {len(data)} bytes, the offsets say {offsets[-1]}"
        )
    return offsets
