"""Conversion targets on gs:// and azure://: parsed, normalised and allow-listed like s3://."""

from __future__ import annotations

import pytest

from worker.access.targets import (
    TargetError,
    TargetNotAllowedError,
    parse_allow_list,
    parse_target,
    resolve_target,
)

HOST = "acct.blob.core.windows.net"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("gs://bucket/a//b/", "gs://bucket/a/b"),
        ("azure://data/a//b/", "azure://data/a/b"),
        ("azure://ACCT.blob.core.windows.net/data/x/", f"azure://{HOST}/data/x"),
    ],
)
def test_remote_targets_are_normalised(raw: str, normal: str) -> None:
    assert str(parse_target(raw)) == normal


def test_remote_targets_are_matched_by_segment_and_form() -> None:
    roots = parse_allow_list(["gs://bucket/a", "azure://data/sets", f"azure://{HOST}/data/hosted"])
    assert str(resolve_target("gs://bucket/a/b", roots)) == "gs://bucket/a/b"
    assert str(resolve_target("azure://data/sets/x", roots)) == "azure://data/sets/x"
    assert (
        str(resolve_target(f"azure://{HOST}/data/hosted/y", roots))
        == f"azure://{HOST}/data/hosted/y"
    )
    # An allow-list entry in one form does not admit the other form (or another scheme).
    for outside in ("gs://bucket/ab", "s3://bucket/a/b", "azure://data/hosted/y",
                    f"azure://{HOST}/data/sets/x", "gs://other/a"):  # fmt: skip
        with pytest.raises(TargetNotAllowedError):
            resolve_target(outside, roots)


@pytest.mark.parametrize("raw", ["gs://bkt/a/../c", "azure://data/./c", f"azure://{HOST}/data/.."])
def test_traversal_is_refused(raw: str) -> None:
    with pytest.raises(TargetNotAllowedError):
        parse_target(raw)


@pytest.mark.parametrize(
    "raw",
    ["gs://UP/x", "gs:///x", "azure://a/x", "azure://Data/x", "azure://bad--name/x", f"azure://{HOST}",
     "oci://b/x", "hf://datasets/x", "sftp://h/x"],
)  # fmt: skip
def test_malformed_or_unsupported_remote_targets(raw: str) -> None:
    with pytest.raises(TargetError):
        parse_target(raw)
