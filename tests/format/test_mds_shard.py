"""Shard byte layout, the 4 GiB guard and the size-limit parser."""

from __future__ import annotations

import numpy as np
import pytest

from mdsloader.errors import ShardFormatError, ShardTooLargeError
from mdsloader.mds.shard import (
    MAX_SHARD_BYTES,
    check_shard_size,
    config_json,
    encode_shard,
    read_offsets,
    shard_size,
)
from mdsloader.mds.sizes import parse_size_limit
from mdsloader.shardview import check_header

CONFIG = {
    "column_encodings": ["str", "int64"], "column_names": ["name", "x"],
    "column_sizes": [None, 8], "compression": None, "format": "mds", "hashes": [],
    "size_limit": 67108864, "version": 2,
}


def doc_records() -> list[bytes]:
    return [b"\x02\x00\x00\x00ab" + (7).to_bytes(8, "little"),
            b"\x00\x00\x00\x00" + b"\xff" * 8]


def test_doc_example_bytes():
    config = config_json(CONFIG)
    assert len(config) == 186
    records = doc_records()
    shard = encode_shard(config, records, np.array([len(r) for r in records]))
    assert len(shard) == 228 == shard_size(2, len(config), sum(map(len, records)))
    assert np.frombuffer(shard[:16], "<u4").tolist() == [2, 202, 216, 228]
    assert shard[16:202] == config
    assert shard[202:] == b"".join(records)
    assert read_offsets(shard, 2, where="doc").tolist() == [202, 216, 228]


def test_config_json_escapes_like_python_json():
    assert config_json({"b": "é", "a": None}) == b'{"a": null, "b": "\\u00e9"}'


def test_empty_shard_is_valid():
    shard = encode_shard(b"{}", [], np.zeros(0, np.int64))
    assert read_offsets(shard, 0, where="e").tolist() == [len(shard)] == [4 + 4 + 2]


def test_size_guard_at_the_uint32_boundary():
    config_len = 200
    fits = MAX_SHARD_BYTES - shard_size(1, config_len, 0)
    check_shard_size(1, config_len, fits)  # exactly 2**32 - 1 bytes: allowed
    with pytest.raises(ShardTooLargeError, match="4 GiB"):
        check_shard_size(1, config_len, fits + 1)
    with pytest.raises(ShardTooLargeError):
        check_shard_size(2 * 10**9, config_len, 0)  # the offsets alone overflow


def test_encode_shard_refuses_4gib_without_allocating():
    sizes = np.array([MAX_SHARD_BYTES], np.int64)  # chunks are never touched: the guard is first
    with pytest.raises(ShardTooLargeError):
        encode_shard(b"{}", [], sizes)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [(lambda b: b[:-1], "truncated or padded"), (lambda b: b + b"x", "truncated or padded"),
     (lambda b: b[:10], "truncated"), (lambda b: b"\x03" + b[1:], "holds 3 samples"),
     (lambda b: b[:4] + (1000).to_bytes(4, "little") + b[8:], "corrupt sample offsets")],
)
def test_read_offsets_detects_damage(mutate, match):
    records = doc_records()
    shard = encode_shard(config_json(CONFIG), records, np.array([len(r) for r in records]))
    with pytest.raises(ShardFormatError, match=match):
        read_offsets(mutate(shard), 2, where="s")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, None), ("", None), (1 << 26, 1 << 26), ("100kb", 102400),
     ("64mb", 64 << 20), ("1.5mb", int(1.5 * (1 << 20))), ("123", 123), ("123b", 123),
     (" 2KB ", 2048), (1000.7, 1000), ("3gb", 3 << 30)],
)
def test_parse_size_limit(value, expected):
    assert parse_size_limit(value) == expected


@pytest.mark.parametrize("value", [-1, "4gb", 1 << 32, "12xb", "mb", "-5", True, [1]])
def test_parse_size_limit_rejects(value):
    with pytest.raises(ValueError):
        parse_size_limit(value)


def _header(offsets: list[int]) -> bytes:
    return np.array([len(offsets) - 1, *offsets], "<u4").tobytes()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [(lambda b: b[:-1], "truncated or padded"), (lambda b: b + b"x", "truncated or padded"),
     (lambda b: b[:10], "truncated"), (lambda b: b"\x03" + b[1:], "holds 3 samples"),
     (lambda b: b[:4] + (1000).to_bytes(4, "little") + b[8:], "corrupt sample offsets")],
)
def test_shard_view_header_check_raises_what_read_offsets_raises(mutate, match):
    records = doc_records()
    shard = mutate(encode_shard(config_json(CONFIG), records, np.array([len(r) for r in records])))
    with pytest.raises(ShardFormatError, match=match) as ours:
        check_header(shard, 2, where="s")
    with pytest.raises(ShardFormatError) as theirs:
        read_offsets(shard, 2, where="s")
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("at", [1, 5, (1 << 18) - 1, 1 << 18, (1 << 18) + 1, 600_000])
def test_shard_view_header_check_finds_a_decrease_in_any_chunk(at):
    n = 600_001
    offsets = np.arange(n + 1, dtype=np.int64) + 4 * (n + 2)
    check_header(_header(offsets.tolist()) + bytes(n), n, where="s")  # intact
    offsets[at] -= 2
    with pytest.raises(ShardFormatError, match="corrupt sample offsets"):
        check_header(_header(offsets.tolist()) + bytes(n), n, where="s")
