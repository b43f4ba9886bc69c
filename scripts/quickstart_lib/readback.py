"""Stream the converted demo dataset back with the loader and check every sample."""

from __future__ import annotations

import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quickstart_lib.demo import embedding_for, label_for


@dataclass(frozen=True, slots=True)
class ReadReport:
    """What one epoch over the dataset yielded, compared with the demo table."""

    expected: int
    samples: int
    missing: int
    duplicated: int
    wrong_values: int
    shuffled: bool
    seconds: float

    @property
    def complete(self) -> bool:
        """Every row came back exactly once with the values it was written with."""
        return (
            self.samples == self.expected
            and self.missing == 0
            and self.duplicated == 0
            and self.wrong_values == 0
        )

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("inf")


def _wrong_values(batch: dict[str, object], ids: np.ndarray) -> int:
    """Samples of the batch whose embedding, label or text differ from what was seeded."""
    embeddings = np.asarray(batch["embedding"])
    labels = np.asarray(batch["label"])
    texts = batch["text"]
    bad = ~np.all(embeddings == embedding_for(ids), axis=1)
    bad |= labels != label_for(ids)
    bad |= np.array([not isinstance(t, str) or not t for t in texts])  # type: ignore[attr-defined]
    return int(bad.sum())


def read_back(
    remote: str,
    cache: Path,
    *,
    expected: int,
    workers: int = 2,
    batch_size: int = 512,
    show: Callable[[str], None] | None = None,
) -> ReadReport:
    """Read one shuffled epoch of ``remote`` through ``StreamingDataLoader``.

    The cache directory is emptied first, so every shard is fetched from ``remote``, and removed
    afterwards (it is a copy of the dataset).
    """
    from mdsloader import StreamingDataLoader, StreamingDataset

    shutil.rmtree(cache, ignore_errors=True)
    # Samples are decoded zero-copy from the mmapped shard, so their arrays are read-only; the
    # default collate copies them into new tensors anyway, and its warning would only add noise.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    dataset = StreamingDataset(remote=remote, local=str(cache), batch_size=batch_size, shuffle=True)
    loader = StreamingDataLoader(dataset, batch_size=batch_size, num_workers=workers)
    counts = np.zeros(expected, dtype=np.int64)
    samples = wrong = out_of_range = 0
    first_ids: np.ndarray | None = None
    started = last_shown = time.monotonic()
    for batch in loader:
        ids = batch["id"].numpy()
        first_ids = ids if first_ids is None else first_ids
        inside = (ids >= 0) & (ids < expected)
        out_of_range += int((~inside).sum())
        np.add.at(counts, ids[inside], 1)
        wrong += _wrong_values(batch, ids.clip(0, max(expected - 1, 0)))
        samples += len(ids)
        if show is not None and time.monotonic() - last_shown >= 2.0:
            last_shown = time.monotonic()
            show(f"{samples:,}/{expected:,} samples  {samples / (last_shown - started):,.0f}/s")
    seconds = time.monotonic() - started
    del loader, dataset
    shutil.rmtree(cache, ignore_errors=True)
    shuffled = first_ids is not None and not np.array_equal(first_ids, np.sort(first_ids))
    return ReadReport(
        expected=expected, samples=samples, missing=int((counts == 0).sum()),
        duplicated=int((counts > 1).sum()) + out_of_range, wrong_values=wrong,
        shuffled=shuffled, seconds=seconds,
    )  # fmt: skip
