"""Which sources a principal may read: catalog patterns and path roots.

A catalog identifier is normalised before it is matched, so no spelling gets around a pattern:
backquotes are removed, every part is lower-cased (Spark's catalog is case-insensitive unless
``spark.sql.caseSensitive`` is set, which this service does not support for access checks), and
one- and two-part names are completed with the default catalog and database. ``sales.events``,
```SALES`.`Events```` and ``spark_catalog.sales.events`` are therefore one table.

A path-based source (``parquet.`/data/x` ``) is resolved the way the worker's filesystem will see
it (``..`` and symlinks followed, ``file://`` unwrapped) and must lie under an allowed root.
Hadoop glob characters are refused outright: ``/data/sales/{x,../../hr}`` or ``/data/*`` would
let Spark read outside the root that a prefix check saw.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from worker.convert.identifiers import SourceRef, parse_source
from worker.errors import InvalidSourceError

DEFAULT_CATALOG = "spark_catalog"
DEFAULT_DATABASE = "default"
# Hadoop's glob syntax (and the escape character): a path containing any of them can match
# paths that a prefix check does not see.
_GLOB = re.compile(r"[*?\[\]{}\\,]")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")


class SourceNotAllowedError(ValueError):
    """The source is well formed but the principal may not read it (the message says why)."""


@dataclass(frozen=True, slots=True)
class CatalogDefaults:
    """What a one- or two-part table name means: Spark's default catalog and current database."""

    catalog: str = DEFAULT_CATALOG
    database: str = DEFAULT_DATABASE


def normalise_catalog_name(
    parts: Iterable[str], defaults: CatalogDefaults = CatalogDefaults()
) -> tuple[str, str, str]:
    """``(catalog, database, table)``, lower-cased, from the unquoted parts of an identifier."""
    lowered = [part.lower() for part in parts]
    if not 1 <= len(lowered) <= 3:
        raise InvalidSourceError(f"a table name has one to three parts, not {len(lowered)}")
    if len(lowered) == 1:
        lowered = [defaults.database, *lowered]
    if len(lowered) == 2:
        lowered = [defaults.catalog, *lowered]
    return lowered[0], lowered[1], lowered[2]


@dataclass(frozen=True, slots=True)
class CatalogPattern:
    """One allowed-sources entry: ``*`` (every catalog table) or a one- to three-part name whose
    parts may use shell wildcards (``sales.*``, ``main.sales.events``, ``*.sales.events_*``)."""

    text: str
    parts: tuple[str, str, str] | None  # None: the pattern "*" (every catalog table)

    @classmethod
    def parse(cls, text: str, defaults: CatalogDefaults = CatalogDefaults()) -> CatalogPattern:
        raw = text.strip()
        if raw == "*":
            return cls(raw, None)
        parts = raw.split(".")
        if not 1 <= len(parts) <= 3 or any(not p or p != p.strip() for p in parts):
            raise ValueError(
                f"invalid source pattern {text!r}: use '*', 'db.*', 'db.table' or "
                "'catalog.db.table' (parts may use * and ? wildcards)"
            )
        return cls(raw, normalise_catalog_name(parts, defaults))

    def matches(self, name: tuple[str, str, str]) -> bool:
        if self.parts is None:
            return True
        return all(fnmatch.fnmatchcase(n, p) for n, p in zip(name, self.parts))


@dataclass(frozen=True, slots=True)
class PathRoot:
    """One allowed source root: a local directory (symlinks resolved) or a ``scheme://`` prefix."""

    scheme: str  # "file" for local paths
    location: str  # the absolute real path, or "netloc/path" without a trailing slash

    @classmethod
    def parse(cls, text: str) -> PathRoot:
        try:
            scheme, location = _normalise_path(text.strip())
        except InvalidSourceError as exc:
            raise ValueError(f"invalid source root {text!r}: {exc.message}") from None
        return cls(scheme, location)

    def contains(self, scheme: str, location: str) -> bool:
        if scheme != self.scheme:
            return False
        if scheme == "file":
            return os.path.commonpath([location, self.location]) == self.location
        return location == self.location or location.startswith(self.location.rstrip("/") + "/")

    def __str__(self) -> str:
        return self.location if self.scheme == "file" else f"{self.scheme}://{self.location}"


def _normalise_path(path: str) -> tuple[str, str]:
    """``(scheme, location)`` of a source path, as the worker's filesystem resolves it."""
    if not path:
        raise InvalidSourceError("the path is empty")
    if _GLOB.search(path):
        raise InvalidSourceError(
            "glob characters (* ? [ ] { } , \\) are not allowed in a source path"
        )
    match = _SCHEME.match(path)
    scheme = match["scheme"].lower() if match else "file"
    if scheme == "file" and match:
        parts = urlsplit(path)
        if parts.netloc not in {"", "localhost"} or parts.query or parts.fragment:
            raise InvalidSourceError("a file URI must look like file:///absolute/path")
        path = unquote(parts.path)
    if scheme == "file":
        if not path.startswith("/"):
            raise InvalidSourceError("a local source path must be absolute")
        # realpath follows symlinks and "..": the check sees where the read will really go.
        return "file", os.path.realpath(path)
    parts = urlsplit(path)
    segments = [s for s in parts.path.split("/") if s]
    if any(s in {".", ".."} for s in segments) or parts.query or parts.fragment:
        raise InvalidSourceError("a source URI must not contain '.', '..', '?' or '#'")
    if not parts.netloc:
        raise InvalidSourceError(f"a {scheme}:// source needs a host or bucket")
    return scheme, "/".join([parts.netloc.lower(), *segments])


@dataclass(frozen=True, slots=True)
class SourceGrant:
    """The sources one principal may read."""

    patterns: tuple[CatalogPattern, ...]
    roots: tuple[PathRoot, ...]
    defaults: CatalogDefaults = field(default_factory=CatalogDefaults)

    @classmethod
    def parse(
        cls,
        patterns: Iterable[str],
        roots: Iterable[str],
        defaults: CatalogDefaults = CatalogDefaults(),
    ) -> SourceGrant:
        return cls(
            tuple(CatalogPattern.parse(p, defaults) for p in patterns),
            tuple(PathRoot.parse(r) for r in roots),
            defaults,
        )

    def authorise(self, source: str | SourceRef) -> str:
        """Check ``source`` and return its canonical text (the one the worker reads).

        Raises:
            InvalidSourceError: ``source`` is not a valid source name or path.
            SourceNotAllowedError: valid, but outside this grant.
        """
        ref = parse_source(source) if isinstance(source, str) else source
        if ref.is_path:
            return self._authorise_path(ref)
        name = normalise_catalog_name(ref.parts, self.defaults)
        if not any(p.matches(name) for p in self.patterns):
            raise SourceNotAllowedError(
                f"source table {'.'.join(name)!r} (from {ref.text!r}) is not in the allowed "
                "sources"
            )
        return ref.text

    def _authorise_path(self, ref: SourceRef) -> str:
        scheme, location = _normalise_path(ref.path or "")
        if not any(root.contains(scheme, location) for root in self.roots):
            where = location if scheme == "file" else f"{scheme}://{location}"
            raise SourceNotAllowedError(
                f"source path {where!r} (from {ref.text!r}) is not under an allowed source root"
                + ("" if self.roots else " (none is configured)")
            )
        if scheme != "file":
            return ref.text
        if "`" in location:
            raise InvalidSourceError(f"the resolved path {location!r} contains a backquote")
        # The worker reads the path it checked, not the submitted spelling: a symlink on the
        # way (or one changed since the API's check) is judged by where it leads now.
        return f"{ref.format}.`{location}`"
