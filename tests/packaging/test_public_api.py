"""The loader's public names resolve, and its base import stays light."""

from __future__ import annotations

import subprocess
import sys

import mdsloader


def test_every_public_name_resolves() -> None:
    for name in mdsloader.__all__:
        assert getattr(mdsloader, name) is not None, name


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        mdsloader.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("mdsloader.NoSuchThing resolved")


def test_base_import_and_format_use_pull_neither_torch_nor_boto3() -> None:
    code = (
        "import sys, mdsloader; mdsloader.MDSWriter; mdsloader.DatasetReader; "
        "mdsloader.open_storage; print(sorted(m for m in ('torch', 'boto3', 'pyspark', 'fastapi')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
