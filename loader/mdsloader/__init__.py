"""mdsloader: read, write and stream MDS v2 datasets (MosaicML Streaming compatible).

The base import is light: numpy, zstandard and xxhash only. torch is imported when
``StreamingDataset``/``StreamingDataLoader`` are first touched, and boto3 when an ``s3://`` storage
is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from mdsloader import errors
from mdsloader.errors import MDSError

__version__ = "0.1.0"

# Public name -> module that defines it. Resolved lazily so that `import mdsloader` stays cheap and
# never pulls torch or boto3.
_LAZY = {
    "MDSWriter": "mdsloader.mds.writer",
    "read_index": "mdsloader.mds.index",
    "ShardReader": "mdsloader.mds.reader",
    "DatasetReader": "mdsloader.mds.reader",
    "open_storage": "mdsloader.storage",
    "StreamingDataset": "mdsloader.dataset",
    "Stream": "mdsloader.stream",
    "StreamingDataLoader": "mdsloader.dataloader",
    "fast_collate": "mdsloader.collate",
}

__all__ = ["MDSError", "__version__", "errors", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mdsloader' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
