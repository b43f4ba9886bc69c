"""Parse and validate conversion source names without Spark (the REST layer uses this too).

A source is either a catalog identifier of one to three parts (``table``, ``db.table``,
``catalog.db.table``; each part plain ``[A-Za-z_][A-Za-z0-9_]*`` or backquoted) or a path-based
table: ``parquet.`/path` ``, ``json.`/path` ``, ``orc.`/path` ``, ``csv.`/path` ``. Anything else is
refused, so no SQL text ever reaches Spark: the identifier is handed to ``spark.table`` and the path
to ``DataFrameReader.load``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.errors import InvalidSourceError

PATH_FORMATS = ("parquet", "json", "orc", "csv")
MAX_SOURCE_LENGTH = 1024

_PLAIN = r"[A-Za-z_][A-Za-z0-9_]*"
# Inside backquotes any printable character except a lone backquote (`` is an escaped one).
_QUOTED = r"`(?:[^`\x00-\x1f\x7f]|``)+`"
_PART = rf"(?:{_PLAIN}|{_QUOTED})"
_IDENTIFIER = re.compile(rf"{_PART}(?:\.{_PART}){{0,2}}")
_PART_RE = re.compile(_PART)
_PATH_FORMS = ", ".join(f"{name}.`/path`" for name in PATH_FORMATS)
_PATH_TABLE = re.compile(r"(?P<format>[A-Za-z]+)\.`(?P<path>[^`\x00-\x1f\x7f]+)`")


@dataclass(frozen=True, slots=True)
class SourceRef:
    """A validated source: either catalog ``parts`` or a ``format`` plus ``path``."""

    text: str
    parts: tuple[str, ...] = ()
    format: str | None = None
    path: str | None = None

    @property
    def is_path(self) -> bool:
        return self.format is not None


def parse_source(source: str) -> SourceRef:
    """Parse ``source`` into a :class:`SourceRef`.

    Raises:
        InvalidSourceError: the text is neither a valid identifier nor a supported path table.
    """
    if not isinstance(source, str):
        raise InvalidSourceError(f"source table must be a string, not {type(source).__name__}")
    text = source.strip()
    if not text or len(text) > MAX_SOURCE_LENGTH:
        raise InvalidSourceError("source table must be 1 to 1024 characters")
    path_match = _PATH_TABLE.fullmatch(text)
    if path_match is not None and path_match["format"].lower() in PATH_FORMATS:
        return SourceRef(text=text, format=path_match["format"].lower(), path=path_match["path"])
    if _IDENTIFIER.fullmatch(text) is None:
        raise InvalidSourceError(
            f"invalid source table {source!r}: expected table, db.table, catalog.db.table "
            f"(parts may be `backquoted`) or one of {_PATH_FORMS}"
        )
    return SourceRef(text=text, parts=tuple(_unquote(p) for p in _PART_RE.findall(text)))


def validate_table_identifier(source: str) -> str:
    """Return ``source`` stripped if it is a valid catalog identifier or path table.

    Raises:
        InvalidSourceError: the text is not a valid source (see the module docstring).
    """
    return parse_source(source).text


def _unquote(part: str) -> str:
    if part.startswith("`"):
        return part[1:-1].replace("``", "`")
    return part
