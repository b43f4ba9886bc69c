"""Byte-compile the loader before a bench, as installing its wheel does.

pip compiles every module of a wheel it installs (the reference's included), but the loader here
is an editable install, and this machine sets ``PYTHONDONTWRITEBYTECODE=1``, so without this each
fresh bench process (and each DataLoader worker) would compile our modules from source on first
import: tens of milliseconds charged to us and not to the reference.
"""

from __future__ import annotations

import compileall
import importlib.util
from pathlib import Path


def compile_loader() -> None:
    """Write ``__pycache__`` for every module of the installed ``mdsloader`` package."""
    spec = importlib.util.find_spec("mdsloader")
    if spec is None or spec.origin is None:
        raise RuntimeError("mdsloader is not installed")
    compileall.compile_dir(Path(spec.origin).parent, quiet=1)
