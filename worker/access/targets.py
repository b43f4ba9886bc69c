"""Target URIs: parsing, normalisation, and the deployment's allow-list (no path traversal)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTAINER = re.compile(r"^(?!.*--)[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
_AZURE_HOST = re.compile(r"^[a-z0-9]{3,24}(\.[a-z0-9-]+)+$", re.IGNORECASE)


class TargetError(ValueError):
    """The target cannot be parsed (a malformed URI, an unsupported scheme)."""


class TargetNotAllowedError(ValueError):
    """The target is well formed but outside the allow-list, or tries to escape it."""


@dataclass(frozen=True, slots=True)
class Target:
    """A normalised target: ``s3://``, ``gs://`` or ``azure://`` and its location, or an absolute,
    symlink-resolved local path."""

    scheme: str  # "s3", "gs", "azure" or "file"
    location: str  # "bucket/prefix" (azure: "[account host/]container/prefix"), or the path

    def __str__(self) -> str:
        return self.location if self.scheme == "file" else f"{self.scheme}://{self.location}"

    def is_under(self, root: Target) -> bool:
        if self.scheme != root.scheme:
            return False
        if self.scheme == "file":
            return os.path.commonpath([self.location, root.location]) == root.location
        return self.location == root.location or self.location.startswith(root.location + "/")


def _check_segments(segments: list[str], raw: str) -> None:
    # Refuse rather than normalise: "a/../b" is never what a caller means for a dataset target.
    if any(segment in {".", ".."} for segment in segments):
        raise TargetNotAllowedError(f"target {raw!r} contains '.' or '..' path segments")


def parse_target(raw: str) -> Target:
    """Parse and normalise a target URI or local path.

    Raises:
        TargetError: malformed or unsupported.
        TargetNotAllowedError: it contains traversal segments.
    """
    if not raw or _CONTROL.search(raw):
        raise TargetError("target must be a non-empty string without control characters")
    if raw.startswith("s3://"):
        return _parse_s3(raw)
    if raw.startswith("gs://"):
        return _parse_bucket_url("gs", raw)
    if raw.startswith("azure://"):
        return _parse_azure(raw)
    if raw.startswith("file://"):
        parts = urlsplit(raw)
        if parts.netloc not in {"", "localhost"} or parts.query or parts.fragment:
            raise TargetError(f"file URI {raw!r} must look like file:///absolute/path")
        return _parse_local(unquote(parts.path), raw)
    if "://" in raw:
        raise TargetError(
            f"unsupported target scheme in {raw!r}: use s3://, gs://, azure:// or a local path"
        )
    return _parse_local(raw, raw)


def _parse_s3(raw: str) -> Target:
    bucket, _, prefix = raw[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket):
        raise TargetError(f"invalid S3 bucket name {bucket!r} in {raw!r}")
    segments = [s for s in prefix.split("/") if s]
    _check_segments(segments, raw)
    return Target("s3", "/".join([bucket, *segments]))


def _parse_bucket_url(scheme: str, raw: str) -> Target:
    # GCS bucket names follow the same DNS-style rule as S3's (plus "_", which we do not need).
    bucket, _, prefix = raw[len(scheme) + 3 :].partition("/")
    if not _BUCKET.match(bucket):
        raise TargetError(f"invalid {scheme} bucket name {bucket!r} in {raw!r}")
    segments = [s for s in prefix.split("/") if s]
    _check_segments(segments, raw)
    return Target(scheme, "/".join([bucket, *segments]))


def _parse_azure(raw: str) -> Target:
    # azure://<container>/<prefix> or azure://<account>.blob.core.windows.net/<container>/<prefix>
    # (mdsloader.storage.azure has the rule); the form is kept, so two forms never match.
    head, _, rest = raw[len("azure://") :].partition("/")
    segments = [s for s in rest.split("/") if s]
    if "." in head:
        if not _AZURE_HOST.match(head) or not segments:
            raise TargetError(f"invalid azure account host or no container in {raw!r}")
        head, container, segments = head.lower(), segments[0], segments[1:]
        parts = [head, container]
    else:
        container, parts = head, [head]
    if not _CONTAINER.match(container):
        raise TargetError(f"invalid azure container name {container!r} in {raw!r}")
    _check_segments(segments, raw)
    return Target("azure", "/".join([*parts, *segments]))


def _parse_local(path: str, raw: str) -> Target:
    if not path.startswith("/"):
        raise TargetError(f"local target {raw!r} must be an absolute path")
    _check_segments(path.split("/"), raw)
    # realpath resolves symlinks in the existing part of the path, so a link inside an allowed
    # root that points outside it is judged by where it really leads.
    return Target("file", os.path.realpath(path))


def parse_allow_list(entries: list[str]) -> list[Target]:
    """Parse the configured roots; a malformed entry is a configuration error (ValueError)."""
    return [parse_target(entry) for entry in entries]


def resolve_target(raw: str, allowed: list[Target]) -> Target:
    """Parse ``raw`` and check it lies under one of the ``allowed`` roots.

    Raises:
        TargetError: malformed.
        TargetNotAllowedError: traversal, or outside every allowed root.
    """
    target = parse_target(raw)
    if not any(target.is_under(root) for root in allowed):
        raise TargetNotAllowedError(f"target {raw!r} is outside the allowed targets")
    return target
