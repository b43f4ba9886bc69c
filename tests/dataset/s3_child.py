"""Code that runs in spawned interpreters for tests/dataset/test_s3.py.

A spawned child re-imports the module that defines its target; this one imports only the loader,
so the child does not load pytest, the test module or its fixtures.
"""

from __future__ import annotations

from typing import Any


def ensure_peak(remote: str, local: str, queue: Any) -> None:  # pragma: no cover - spawned child
    """Make shard 0 local and report its path and the peak of Python allocations meanwhile."""
    import tracemalloc

    from mdsloader.dataset import StreamingDataset

    ds = StreamingDataset(remote=remote, local=local, batch_size=1, validate_hash="xxh64")
    tracemalloc.start()
    path = ds.cache.ensure(0)
    queue.put((str(path), tracemalloc.get_traced_memory()[1]))
