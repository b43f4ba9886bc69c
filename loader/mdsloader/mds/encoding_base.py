"""The base class of every column encoding: the encode/decode contract and its error mapping."""

from __future__ import annotations

from typing import Any

from mdsloader.errors import EncodingError, MissingExtraError

__all__ = ["Encoding"]


class Encoding:
    """Encodes values of one column type to bytes and back.

    Attributes:
        name: The encoding string as stored in the index (e.g. ``"ndarray:int32:3"``).
        size: The fixed encoded width in bytes, or None for variable-size encodings.
    """

    __slots__ = ("name", "size")

    def __init__(self, name: str, size: int | None = None) -> None:
        self.name = name
        self.size = size

    def encode(self, value: Any) -> bytes:
        """Encode one value (``bytes`` values pass through unchanged).

        Raises:
            EncodingError: The value does not fit this encoding.
        """
        if isinstance(value, bytes):
            return value
        try:
            return self._encode(value)
        except EncodingError:
            raise
        except MissingExtraError:
            raise
        except Exception as exc:  # numpy / json / pickle raise many types; normalise them
            raise self._error(value, str(exc)) from exc

    def decode(self, data: bytes | memoryview) -> Any:
        """Decode the stored bytes of one value.

        Raises:
            EncodingError: The bytes are not a valid value of this encoding.
        """
        try:
            return self._decode(data)
        except (EncodingError, MissingExtraError):
            raise
        except Exception as exc:
            raise EncodingError(f"cannot decode {self.name!r} value: {exc}") from exc

    def _encode(self, value: Any) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    def _decode(self, data: bytes | memoryview) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _error(self, value: Any, why: str = "") -> EncodingError:
        detail = f": {why}" if why else ""
        return EncodingError(
            f"encoding {self.name!r} cannot store a value of type {type(value).__name__}{detail}"
        )

    def _require(self, value: Any, kind: type | tuple[type, ...]) -> None:
        if not isinstance(value, kind):
            raise self._error(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
