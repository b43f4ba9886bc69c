"""Whole-shard compression codecs: zstd[:1-22], gz[:0-9], bz2[:1-9], br[:0-11] and snappy.

The compression string is stored in the index exactly as given; only the family names the file
extension (``zstd:7`` still writes ``.zstd``). Brotli and python-snappy are optional (the ``codecs``
extra) and imported on first use.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import importlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zstandard

from mdsloader.errors import CompressionError, MissingExtraError

__all__ = ["Codec", "StreamDecompressor", "compression_names", "get_codec"]

# family -> (valid levels, default level or None for codecs without levels)
_FAMILIES: dict[str, tuple[range, int | None]] = {
    "br": (range(0, 12), 11),
    "bz2": (range(1, 10), 9),
    "gz": (range(0, 10), 9),
    "snappy": (range(0), None),
    "zstd": (range(1, 23), 3),
}


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} compression needs the codecs extra: pip install 'mds-loader[codecs]'"
        ) from exc


@dataclass(frozen=True, slots=True)
class Codec:
    """One compression family at one level.

    Attributes:
        name: The compression string as configured (``"zstd"``, ``"gz:9"``, ...).
        family: ``br``, ``bz2``, ``gz``, ``snappy`` or ``zstd``; also the file extension.
        level: The effective level, or None for snappy.
    """

    name: str
    family: str
    level: int | None

    @property
    def extension(self) -> str:
        """The file extension (without dot) of shards compressed with this codec."""
        return self.family

    def check_available(self) -> None:
        """Raise :class:`MissingExtraError` now if this codec's optional package is missing."""
        if self.family == "br":
            _optional("brotli")
        elif self.family == "snappy":
            _optional("snappy")

    def compress(self, data: bytes | memoryview) -> bytes:
        """Compress one whole shard; the output matches the reference's for every family but gz.

        gz output carries a fixed header mtime of 0 so that it is reproducible; readers ignore it.
        """
        if self.family == "zstd":
            # python-zstd (the reference) always uses zstd's multi-threaded mode, whose frames
            # differ from single-threaded ones beyond a few MB but do not depend on the thread
            # count; threads=-1 gives identical bytes, records the content size, and uses all
            # cores for a final shard.
            return zstandard.ZstdCompressor(level=self.level, threads=-1).compress(data)
        if self.family == "gz":
            return gzip.compress(data, self.level, mtime=0)
        if self.family == "bz2":
            return bz2.compress(data, self.level)
        if self.family == "br":
            return _optional("brotli").compress(bytes(data), quality=self.level)
        return _optional("snappy").compress(bytes(data))

    def compress_parts(self, parts: Sequence[bytes | memoryview]) -> bytes:
        """Compress the concatenation of ``parts``, exactly as :meth:`compress` would.

        zstd streams the parts (its multi-threaded frames do not depend on how the input is
        split once the total size is declared), which saves joining a whole shard in memory.
        """
        if self.family != "zstd":
            return self.compress(b"".join(parts))
        total = sum(len(part) for part in parts)
        stream = zstandard.ZstdCompressor(level=self.level, threads=-1).compressobj(size=total)
        out = [stream.compress(part) for part in parts]
        out.append(stream.flush())
        return b"".join(out)

    def compress_into(self, parts: Sequence[bytes | memoryview], sink: Any) -> None:
        """Write the compression of the concatenation of ``parts`` to ``sink.write``.

        The bytes equal :meth:`compress_parts`; zstd streams them in small pieces, so no
        compressed copy of a whole shard is ever held in memory.
        """
        if self.family != "zstd":
            sink.write(self.compress(parts[0] if len(parts) == 1 else b"".join(parts)))
            return
        total = sum(len(part) for part in parts)
        compressor = zstandard.ZstdCompressor(level=self.level, threads=-1)
        with compressor.stream_writer(sink, size=total, closefd=False) as stream:
            for part in parts:
                stream.write(part)

    def decompress(self, data: bytes | memoryview) -> bytes:
        """Decompress one whole shard.

        Raises:
            CompressionError: The data is not valid for this codec.
        """
        try:
            return self._decompress(data)
        except MissingExtraError:
            raise
        except (zstandard.ZstdError, OSError, EOFError, ValueError, zlib.error) as exc:
            raise CompressionError(f"corrupt {self.family} data: {exc}") from exc
        except Exception as exc:  # brotli.error and snappy's errors share no base class
            raise CompressionError(f"corrupt {self.family} data: {exc}") from exc

    @property
    def can_stream(self) -> bool:
        """Whether :meth:`stream_decompressor` is available (zstd only, for now)."""
        return self.family == "zstd"

    def stream_decompressor(self, target: Any) -> StreamDecompressor:
        """A decompressor that takes compressed pieces and writes the output to ``target``.

        Raises:
            ValueError: The family cannot stream (see :attr:`can_stream`); decompress such
                shards whole with :meth:`decompress`.
        """
        if not self.can_stream:
            raise ValueError(f"{self.family} shards cannot be decompressed incrementally")
        return StreamDecompressor(target)

    def _decompress(self, data: bytes | memoryview) -> bytes:
        if self.family == "zstd":
            # decompressobj also accepts frames without a content size and multi-frame input.
            out = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
            return out.decompress(data) + out.flush()
        if self.family == "gz":
            return gzip.decompress(data)
        if self.family == "bz2":
            return bz2.decompress(data)
        if self.family == "br":
            return _optional("brotli").decompress(bytes(data))
        return _optional("snappy").decompress(bytes(data))


class StreamDecompressor:
    """Decompresses zstd data fed piece by piece (any split, several frames) into a file.

    Output reaches ``target.write`` in pieces of at most ``write_size`` bytes whatever the
    compression ratio, so memory stays bounded even for a shard of zeros. The result is the same
    bytes as :meth:`Codec.decompress` of the concatenated input.

    Args:
        target: Anything with ``write(bytes)``, typically a file opened ``"wb"``.
        write_size: The largest piece handed to ``target.write``.
    """

    def __init__(self, target: Any, *, write_size: int = 1 << 20) -> None:
        """Start decompressing into ``target``."""
        self._writer = zstandard.ZstdDecompressor().stream_writer(
            target, write_size=write_size, closefd=False
        )

    def write(self, data: bytes | memoryview) -> None:
        """Decompress the next piece.

        Raises:
            CompressionError: The data is not valid zstd.
        """
        try:
            self._writer.write(data)
        except zstandard.ZstdError as exc:
            raise CompressionError(f"corrupt zstd data: {exc}") from exc

    def flush(self) -> None:
        """Write out any output still buffered.

        A stream cut short is not an error here (zstd cannot tell it from a pause): callers
        check the total size they expected.
        """
        try:
            self._writer.flush()
        except zstandard.ZstdError as exc:
            raise CompressionError(f"corrupt zstd data: {exc}") from exc


def compression_names() -> list[str]:
    """Return every valid compression string (58 of them), sorted."""
    names = []
    for family, (levels, _) in _FAMILIES.items():
        names.append(family)
        names.extend(f"{family}:{level}" for level in levels)
    return sorted(names)


@functools.lru_cache(maxsize=64)
def _parse(compression: str) -> Codec:
    family, sep, level_text = compression.partition(":")
    spec = _FAMILIES.get(family)
    if spec is None or (sep and not spec[0]):
        raise CompressionError(_invalid(compression))
    levels, default = spec
    if not sep:
        return Codec(compression, family, default)
    if not level_text.isdigit() or int(level_text) not in levels or level_text != str(
        int(level_text)
    ):
        raise CompressionError(_invalid(compression))
    return Codec(compression, family, int(level_text))


def _invalid(compression: object) -> str:
    return (
        f"invalid compression {compression!r}: use None, snappy, zstd[:1-22] (default 3), "
        "gz[:0-9] (default 9), bz2[:1-9] (default 9) or br[:0-11] (default 11)"
    )


def get_codec(compression: str | None) -> Codec | None:
    """Return the codec for a compression string, or None when there is no compression.

    Args:
        compression: ``None``/``""`` (no compression), a family, or ``family:level``.

    Raises:
        CompressionError: The string is not one of the 58 valid compression strings.
    """
    if not compression:
        return None
    if not isinstance(compression, str):
        raise CompressionError(_invalid(compression))
    return _parse(compression)
