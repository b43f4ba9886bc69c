"""Image column encodings (``pil``, ``jpeg``, ``png``, ``jpeg_array``, ``list[...]``).

Pillow is an optional extra (``mds-loader[images]``): it is imported only when an image value is
encoded or decoded, so datasets without image columns never need it.
"""

from __future__ import annotations

import importlib
import io
from typing import Any

import numpy as np

from mdsloader.errors import EncodingError, MissingExtraError
from mdsloader.mds.encoding_base import Encoding

__all__ = ["IMAGE_ENCODINGS", "import_pil"]


def import_pil() -> Any:
    """Return the ``PIL.Image`` module, or raise :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module("PIL.Image")
    except ImportError as exc:
        raise MissingExtraError(
            "image encodings need Pillow: pip install 'mds-loader[images]'"
        ) from exc


def _u32(values: list[int]) -> bytes:
    return np.asarray(values, "<u4").tobytes()


def _save(value: Any, fmt: str) -> bytes:
    out = io.BytesIO()
    value.save(out, format=fmt)
    return out.getvalue()


def _open(data: bytes | memoryview) -> Any:
    return import_pil().open(io.BytesIO(bytes(data)))


class PilEncoding(Encoding):
    """``pil``: uint32 width, height, len(mode); the mode (UTF-8); ``Image.tobytes()``."""

    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        self._require(value, import_pil().Image)
        mode = value.mode.encode("utf-8")
        width, height = value.size
        return _u32([width, height, len(mode)]) + mode + value.tobytes()

    def _decode(self, data: bytes | memoryview) -> Any:
        image = import_pil()
        width, height, mode_len = np.frombuffer(data, "<u4", 3).tolist()
        mode = bytes(data[12 : 12 + mode_len]).decode("utf-8")
        return image.frombytes(mode, (width, height), bytes(data[12 + mode_len :]))


class JpegEncoding(Encoding):
    """``jpeg``: the original file when the image was opened from a JPEG file, else re-encoded."""

    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        self._require(value, import_pil().Image)
        jpeg_file = importlib.import_module("PIL.JpegImagePlugin").JpegImageFile
        filename = getattr(value, "filename", None)
        if isinstance(value, jpeg_file) and filename:
            try:
                with open(filename, "rb") as fh:
                    return fh.read()
            except FileNotFoundError:
                pass  # the file moved: re-encode the pixels, as the reference does
        return _save(value, "JPEG")

    def _decode(self, data: bytes | memoryview) -> Any:
        return _open(data)


class PngEncoding(Encoding):
    """``png``: the image saved as PNG with Pillow's defaults."""

    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        self._require(value, import_pil().Image)
        return _save(value, "PNG")

    def _decode(self, data: bytes | memoryview) -> Any:
        return _open(data)


class JpegArrayEncoding(Encoding):
    """``jpeg_array``: uint32 count, count x uint32 sizes, then already-encoded JPEG bytes."""

    __slots__ = ()

    def _encode(self, value: Any) -> bytes:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(item, (bytes, bytearray)) for item in value
        ):
            raise self._error(value, "expects a sequence of JPEG-encoded bytes")
        return _u32([len(value), *map(len, value)]) + b"".join(value)

    def _decode(self, data: bytes | memoryview) -> list[Any]:
        count = int(np.frombuffer(data, "<u4", 1)[0]) if len(data) >= 4 else 0
        if count == 0:
            raise EncodingError("jpeg_array value holds no images")
        if len(data) < 4 + 4 * count:
            raise EncodingError("jpeg_array value is truncated")
        sizes = np.frombuffer(data, "<u4", count, 4).astype(np.int64)
        ends = 4 + 4 * count + np.cumsum(sizes)
        if len(data) < ends[-1]:
            raise EncodingError("jpeg_array value is truncated")
        return [_open(data[end - size : end]) for size, end in zip(sizes, ends)]


class ImageListEncoding(Encoding):
    """``list[...]``: uint32 placeholder 0, uint32 count, count x uint32 sizes, the elements."""

    __slots__ = ("element",)

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.element: Encoding = _SINGLE[name[5:-1]](name[5:-1])

    def _encode(self, value: Any) -> bytes:
        self._require(value, list)
        # The element codec is called directly: bytes do not pass through inside a list.
        items = [self.element._encode(item) for item in value]
        return _u32([0, len(items), *map(len, items)]) + b"".join(items)

    def _decode(self, data: bytes | memoryview) -> list[Any]:
        count = int(np.frombuffer(data, "<u4", 1, 4)[0])
        sizes = np.frombuffer(data, "<u4", count, 8).astype(np.int64)
        ends = 8 + 4 * count + np.cumsum(sizes)
        return [self.element._decode(data[end - size : end]) for size, end in zip(sizes, ends)]


_SINGLE: dict[str, type[Encoding]] = {
    "pil": PilEncoding,
    "jpeg": JpegEncoding,
    "png": PngEncoding,
}

IMAGE_ENCODINGS: dict[str, type[Encoding]] = {
    **_SINGLE,
    "jpeg_array": JpegArrayEncoding,
    "jpegarray": JpegArrayEncoding,
    "list[pil]": ImageListEncoding,
    "list[jpeg]": ImageListEncoding,
    "list[png]": ImageListEncoding,
}
