"""Compression codecs and hash algorithms."""

from __future__ import annotations

import gzip
import hashlib
import sys

import numpy as np
import pytest
import xxhash
import zstandard

from mdsloader.errors import CompressionError, HashError, MissingExtraError
from mdsloader.mds.compression import compression_names, get_codec
from mdsloader.mds.hashing import check_hash_names, hexdigest, supported_hashes

DATA = b"mds " * 5000 + bytes(range(256))


def test_58_valid_compression_strings():
    names = compression_names()
    assert len(names) == 58
    assert {"br", "br:0", "br:11", "bz2:1", "bz2:9", "gz:0", "gz:9", "snappy", "zstd",
            "zstd:1", "zstd:22"} <= set(names)


@pytest.mark.parametrize("name", compression_names())
def test_every_codec_roundtrips(name):
    codec = get_codec(name)
    assert codec is not None and codec.name == name
    assert codec.decompress(codec.compress(DATA)) == DATA
    assert codec.extension == name.split(":")[0]


@pytest.mark.parametrize(
    ("name", "level"), [("zstd", 3), ("gz", 9), ("bz2", 9), ("br", 11), ("snappy", None),
                        ("zstd:19", 19), ("gz:0", 0)],
)
def test_default_levels(name, level):
    assert get_codec(name).level == level


def test_levels_change_the_output():
    assert get_codec("zstd:1").compress(DATA) != get_codec("zstd:19").compress(DATA)
    assert len(get_codec("gz:0").compress(DATA)) > len(get_codec("gz:9").compress(DATA))


@pytest.mark.parametrize(
    "name", ["zstd:0", "zstd:23", "gz:10", "bz2:0", "br:12", "snappy:1", "lz4", "zstd:03",
             "zstd:", ":3", "ZSTD", "zstd:-1", 7],
)
def test_invalid_compression_strings(name):
    with pytest.raises(CompressionError, match="zstd"):
        get_codec(name)


def test_no_compression():
    assert get_codec(None) is None
    assert get_codec("") is None


def test_zstd_records_content_size_and_reads_frames_without_it():
    packed = get_codec("zstd").compress(DATA)
    assert zstandard.frame_content_size(packed) == len(DATA)
    streamed = zstandard.ZstdCompressor().compressobj()
    no_size = streamed.compress(DATA) + streamed.flush()
    assert zstandard.frame_content_size(no_size) == -1
    assert get_codec("zstd").decompress(no_size + no_size) == DATA + DATA  # multi-frame too


def test_gz_is_reproducible_and_standard():
    first = get_codec("gz").compress(DATA)
    assert first == get_codec("gz").compress(DATA)
    assert gzip.decompress(first) == DATA


@pytest.mark.parametrize("name", ["zstd", "gz", "bz2", "br", "snappy"])
def test_corrupt_data_raises_compression_error(name):
    with pytest.raises(CompressionError, match="corrupt"):
        get_codec(name).decompress(b"\x00garbage" * 10)


@pytest.mark.parametrize(("name", "module"), [("br:5", "brotli"), ("snappy", "snappy")])
def test_missing_optional_codec_names_the_codecs_extra(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)
    codec = get_codec(name)
    with pytest.raises(MissingExtraError, match=r"mds-loader\[codecs\]"):
        codec.compress(DATA)
    with pytest.raises(MissingExtraError, match="codecs"):
        codec.decompress(DATA)


# --- hashes -----------------------------------------------------------------------------------


def test_supported_hashes_cover_the_documented_names():
    assert {"blake2b", "blake2s", "md5", "sha1", "sha224", "sha256", "sha384", "sha512",
            "sha3_224", "sha3_256", "sha3_384", "sha3_512", "xxh32", "xxh64", "xxh128",
            "xxh3_64", "xxh3_128"} <= set(supported_hashes())
    assert not any(name.startswith("shake_") for name in supported_hashes())


def test_hexdigests():
    assert hexdigest("md5", b"abc") == hashlib.md5(b"abc").hexdigest()
    assert hexdigest("sha3_256", b"abc") == hashlib.sha3_256(b"abc").hexdigest()
    assert hexdigest("xxh64", b"abc") == xxhash.xxh64(b"abc").hexdigest()
    assert hexdigest("xxh3_128", memoryview(b"abc")) == xxhash.xxh3_128(b"abc").hexdigest()
    with pytest.raises(HashError, match="unknown"):
        hexdigest("crc32", b"")


def test_check_hash_names():
    assert check_hash_names(None) == []
    assert check_hash_names(["md5", "sha1", "xxh64"]) == ["md5", "sha1", "xxh64"]
    with pytest.raises(HashError, match="sorted and unique"):
        check_hash_names(["sha1", "md5"])
    with pytest.raises(HashError, match="sorted and unique"):
        check_hash_names(["md5", "md5"])
    with pytest.raises(HashError, match="unknown"):
        check_hash_names(["md5", "nope"])


@pytest.mark.interop
def test_hash_names_match_the_reference(reference):
    from streaming.base.hashing import get_hash, get_hashes

    assert set(supported_hashes()) == get_hashes()
    for name in supported_hashes():
        assert hexdigest(name, DATA) == get_hash(name, DATA)


@pytest.mark.interop
def test_compression_names_and_bytes_match_the_reference(reference):
    from streaming.base.compression import compress, decompress, get_compressions

    assert set(compression_names()) == get_compressions()
    for name in ["zstd", "zstd:9", "bz2:3", "br:4", "snappy"]:
        ours = get_codec(name).compress(DATA)
        assert ours == compress(name, DATA)
        assert decompress(name, ours) == DATA
    assert decompress("gz", get_codec("gz").compress(DATA)) == DATA


@pytest.mark.interop
def test_zstd_matches_the_reference_on_multi_megabyte_shards(reference):
    from streaming.base.compression import compress

    rng = np.random.default_rng(0)
    data = rng.bytes(3 << 20) + bytes(2 << 20) + b"text " * (1 << 20)
    for name in ("zstd", "zstd:1", "zstd:9"):
        assert get_codec(name).compress(data) == compress(name, data), name


@pytest.mark.parametrize("name", ["zstd", "zstd:1", "zstd:12", "gz", "bz2:1", "br:1", "snappy"])
def test_compress_parts_equals_compress_of_the_join(name):
    rng = np.random.default_rng(1)
    parts = [rng.bytes(3 << 20), memoryview(bytes(2 << 20)), b"", b"text " * 300_000, b"x"]
    codec = get_codec(name)
    assert codec.compress_parts(parts) == codec.compress(b"".join(parts))


def test_hexdigest_parts_equals_hexdigest_of_the_join():
    from mdsloader.mds.hashing import hexdigest_parts

    parts = [b"abc", memoryview(b"def"), b""]
    for name in ("md5", "sha3_256", "xxh64", "xxh3_128", "blake2s"):
        assert hexdigest_parts(name, parts) == hexdigest(name, b"abcdef")
    with pytest.raises(HashError):
        hexdigest_parts("nope", parts)


@pytest.mark.parametrize("name", ["zstd", "zstd:19", "gz:3", "bz2", "br:2", "snappy"])
def test_compress_into_a_sink_equals_compress(name):
    import io

    rng = np.random.default_rng(2)
    parts = [rng.bytes(2 << 20), b"abc" * 500_000, memoryview(bytes(1 << 20))]
    sink = io.BytesIO()
    get_codec(name).compress_into(parts, sink)
    assert sink.getvalue() == get_codec(name).compress(b"".join(parts))


def test_digester_matches_one_shot_digests():
    from mdsloader.mds.hashing import Digester

    digester = Digester(["md5", "xxh64"])
    for piece in (b"ab", memoryview(b"cd"), b""):
        digester.update(piece)
    assert digester.size == 4
    assert digester.hexdigests() == {"md5": hexdigest("md5", b"abcd"),
                                     "xxh64": hexdigest("xxh64", b"abcd")}
    with pytest.raises(HashError):
        Digester(["nope"])
