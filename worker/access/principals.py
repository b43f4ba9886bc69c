"""Principals: who a bearer token is, and what it may do.

Principals come from a file (``APP_PRINCIPALS_FILE``, YAML or JSON) that holds SHA-256 digests of
tokens, never the tokens themselves::

    principals:
      - name: sales-etl
        tokens: ["sha256:9f86d0..."]
        scopes: [jobs:submit, jobs:read, jobs:cancel]
        sources: ["sales.*", "main.sales.events"]     # catalog patterns
        source_paths: ["/data/sales"]                  # roots for parquet.`/path` sources
        targets: ["s3://datasets/sales/"]              # where its jobs may write
        max_active_jobs: 4                             # optional: overrides the global quota

The legacy ``APP_API_TOKENS`` list keeps working: each token is a principal named
``token:<first 12 hex of its digest>`` with every scope and the global allow-lists, and a
development server with ``APP_AUTH_DISABLED`` acts as the all-powerful ``anonymous``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
)

from worker.access.sources import CatalogDefaults, SourceGrant
from worker.access.targets import Target, TargetError, TargetNotAllowedError, parse_target

ANONYMOUS = "anonymous"
LEGACY_PREFIX = "token:"


class Scope(StrEnum):
    SUBMIT = "jobs:submit"
    READ = "jobs:read"
    CANCEL = "jobs:cancel"
    ADMIN = "admin"


ALL_SCOPES = frozenset(Scope)


class AccessConfigError(Exception):
    """The principals file cannot be read or is invalid (the message says where and why)."""


def token_digest(token: str) -> str:
    """``sha256:<hex>`` of a raw token: what the principals file stores."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def legacy_name(token: str) -> str:
    """The principal name of an ``APP_API_TOKENS`` token (stable when the list is reordered)."""
    return LEGACY_PREFIX + hashlib.sha256(token.encode()).hexdigest()[:12]


Digest = Annotated[
    str,
    StringConstraints(strip_whitespace=True, to_lower=True, pattern=r"^(sha256:)?[0-9a-fA-F]{64}$"),
]


class PrincipalEntry(BaseModel):
    """One principal as written in the file (validated strictly: typos are errors)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # No ':' so that a file principal can never be mistaken for a legacy token principal.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
    tokens: list[Digest] = Field(min_length=1)
    scopes: list[Annotated[Scope, Field(strict=False)]] = Field(min_length=1)  # from text
    sources: list[str] = Field(default_factory=list)
    source_paths: list[str] = Field(default_factory=list)
    targets: list[str] = Field(default_factory=list)
    max_active_jobs: int | None = Field(None, ge=0)


class PrincipalsDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    principals: list[PrincipalEntry]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller and its grants."""

    name: str
    scopes: frozenset[Scope]
    sources: SourceGrant
    targets: tuple[Target, ...]
    max_active_jobs: int | None = None
    digests: tuple[str, ...] = field(default=(), repr=False)

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def has(self, scope: Scope) -> bool:
        """Admin holds every scope."""
        return self.is_admin or scope in self.scopes

    def authorise_target(self, raw: str) -> Target:
        """Parse ``raw`` and check it lies under one of this principal's targets.

        Raises:
            TargetError: malformed.
            TargetNotAllowedError: traversal, or outside every allowed target.
        """
        target = parse_target(raw)
        if not any(target.is_under(root) for root in self.targets):
            raise TargetNotAllowedError(f"target {raw!r} is outside the allowed targets")
        return target


@dataclass(frozen=True, slots=True)
class GlobalGrants:
    """The deployment-wide allow-lists that legacy and anonymous principals use."""

    sources: Sequence[str] = ("*",)
    source_paths: Sequence[str] = ()
    targets: Sequence[str] = ()
    defaults: CatalogDefaults = field(default_factory=CatalogDefaults)


def _parse_targets(entries: Iterable[str], where: str) -> tuple[Target, ...]:
    try:
        return tuple(parse_target(e) for e in entries)
    except (TargetError, TargetNotAllowedError) as exc:
        raise AccessConfigError(f"{where}: invalid target {exc}") from None


def _sources(patterns: Iterable[str], roots: Iterable[str], defaults: CatalogDefaults, where: str):
    try:
        return SourceGrant.parse(patterns, roots, defaults)
    except ValueError as exc:
        raise AccessConfigError(f"{where}: {exc}") from None


def load_principals_file(path: Path, defaults: CatalogDefaults) -> list[Principal]:
    """Read and validate a principals file (``.json``, else YAML).

    Raises:
        AccessConfigError: unreadable, malformed, or invalid; the message names the entry.
    """
    try:
        text = path.read_text()
        data: Any = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        document = PrincipalsDocument.model_validate(data)
    except OSError as exc:
        raise AccessConfigError(f"cannot read principals file {str(path)!r}: {exc}") from None
    except (ValueError, yaml.YAMLError) as exc:  # JSON, YAML and pydantic errors
        detail = _validation_summary(exc) if isinstance(exc, ValidationError) else str(exc)
        raise AccessConfigError(f"invalid principals file {str(path)!r}: {detail}") from None
    principals: list[Principal] = []
    seen_names: set[str] = set()
    seen_digests: set[str] = set()
    for entry in document.principals:
        where = f"{path}: principal {entry.name!r}"
        if entry.name in seen_names or entry.name == ANONYMOUS:
            raise AccessConfigError(f"{where}: the name is used twice or reserved")
        principal = principal_from_entry(entry, defaults, where)
        digests = principal.digests
        if seen_digests.intersection(digests) or len(set(digests)) != len(digests):
            raise AccessConfigError(f"{where}: a token digest is listed twice")
        seen_names.add(entry.name)
        seen_digests.update(digests)
        principals.append(principal)
    return principals


def principal_from_entry(entry: PrincipalEntry, defaults: CatalogDefaults, where: str) -> Principal:
    """The principal of one file entry; AccessConfigError (prefixed with ``where``) if a source
    pattern, source root or target is invalid."""
    digests = tuple(d if d.startswith("sha256:") else "sha256:" + d for d in entry.tokens)
    return Principal(
        name=entry.name,
        scopes=frozenset(entry.scopes),
        sources=_sources(entry.sources, entry.source_paths, defaults, where),
        targets=_parse_targets(entry.targets, where),
        max_active_jobs=entry.max_active_jobs,
        digests=digests,
    )


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
    )


class PrincipalsFile:
    """A principals file that is read again when it changes (checked at most once a second).

    A file that becomes invalid is not silently replaced by the last good one: access could stay
    wider than the operator just made it. Until it is fixed, :meth:`current` raises.
    """

    def __init__(self, path: Path, defaults: CatalogDefaults, check_interval: float = 1.0) -> None:
        self.path, self.defaults, self.check_interval = path, defaults, check_interval
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._principals: list[Principal] = []
        self._error: AccessConfigError | None = None
        self.current()  # fail at start on a bad file

    def current(self) -> list[Principal]:
        with self._lock:
            now = time.monotonic()
            if self._stamp is None or now - self._checked >= self.check_interval:
                self._checked = now
                self._reload_if_changed()
            if self._error is not None:
                raise self._error
            return self._principals

    def _reload_if_changed(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as exc:
            self._error = AccessConfigError(f"cannot read principals file {self.path}: {exc}")
            self._stamp = None
            return
        if stamp == self._stamp:
            return
        try:
            self._principals, self._error = load_principals_file(self.path, self.defaults), None
        except AccessConfigError as exc:
            self._error = exc
        self._stamp = stamp


class PrincipalRegistry:
    """Every principal the deployment knows: the file's, the legacy tokens', and ``anonymous``
    when authentication is disabled."""

    def __init__(
        self,
        *,
        principals_file: PrincipalsFile | None,
        legacy_tokens: Iterable[str],
        grants: GlobalGrants,
        auth_disabled: bool = False,
    ) -> None:
        self.file = principals_file
        self.auth_disabled = auth_disabled
        sources = _sources(grants.sources, grants.source_paths, grants.defaults, "global grants")
        targets = _parse_targets(grants.targets, "global allowed targets")
        self.legacy = [
            Principal(
                legacy_name(token), ALL_SCOPES, sources, targets, digests=(token_digest(token),)
            )
            for token in legacy_tokens
        ]
        self.anonymous = Principal(ANONYMOUS, ALL_SCOPES, sources, targets)

    def principals(self) -> list[Principal]:
        """Raises AccessConfigError when the principals file is invalid."""
        from_file = self.file.current() if self.file is not None else []
        return [*from_file, *self.legacy]

    def authenticate(self, token: str) -> Principal | None:
        """The principal holding ``token``, or None. Compares digests in constant time, against
        every digest, so timing tells nothing about which one (if any) matched."""
        presented = token_digest(token).encode()
        found: Principal | None = None
        for principal in self.principals():
            for digest in principal.digests:
                if hmac.compare_digest(presented, digest.encode()) and found is None:
                    found = principal
        return found

    def get(self, name: str) -> Principal | None:
        """The principal called ``name`` as configured now (the worker's re-check)."""
        if name == ANONYMOUS:
            return self.anonymous if self.auth_disabled else None
        return next((p for p in self.principals() if p.name == name), None)

    @property
    def configured(self) -> bool:
        return self.auth_disabled or self.file is not None or bool(self.legacy)


def _secret(value: object) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def build_registry(settings: Any) -> PrincipalRegistry:
    """The registry a process's settings describe (``worker.settings.SharedSettings``).

    Raises:
        AccessConfigError: the principals file or a global allow-list is invalid.
    """
    defaults = CatalogDefaults(
        settings.source_default_catalog.lower(), settings.source_default_database.lower()
    )
    path = settings.principals_file
    return PrincipalRegistry(
        principals_file=PrincipalsFile(Path(path), defaults) if path else None,
        legacy_tokens=[_secret(t) for t in settings.api_tokens],
        grants=GlobalGrants(
            sources=tuple(settings.allowed_sources),
            source_paths=tuple(settings.allowed_source_paths),
            targets=tuple(settings.effective_allowed_targets()),
            defaults=defaults,
        ),
        auth_disabled=settings.auth_disabled,
    )
