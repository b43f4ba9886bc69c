"""Fixtures of the MDS format tests."""

from __future__ import annotations

from types import ModuleType

import pytest
from format_helpers import load_golden_module


@pytest.fixture(scope="session")
def golden() -> ModuleType:
    """The module that made tests/data/golden (its DATASETS and samples())."""
    return load_golden_module()
