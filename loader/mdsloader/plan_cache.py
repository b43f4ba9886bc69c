"""Node-local cache of epoch plans: the ``py1e`` replay of an epoch, made once per node.

The only part of a streamed epoch plan whose cost grows with the dataset is the replay of the
epoch's random draws (:func:`mdsloader.ordering.py1e_stream.replay_py1e`, about 10 ns per sample:
10 s at a billion samples). Its result is small (a few dozen bytes per span), so the first
process of a node that needs it computes it under a lock and publishes it; every other worker of
the node, and any restart on the node, maps it instead.

Layout: ``<dir>/py1e-<run>-e<epoch>-<key>/`` holds one ``.npy`` per array and ``meta.json``.

* ``key`` hashes every input of the replay: the spans (which carry the index's sample counts,
  the stream weighting and resampling, the canonical node count and the run seed), the seed,
  the epoch and the block size, and the format version. A changed index or setting is a
  different key, so a stale plan is never read; ``meta.json`` repeats the key and is checked.
* Directories are written under a temporary name and renamed into place, so a reader sees a
  whole plan or none. Whoever publishes epoch ``e`` of a run removes that run's epochs before
  ``e - 1`` (a process still reading one keeps its mapping: unlinked files stay readable).
* :meth:`PlanCache.prepare` computes the next epoch's plan in the background while the current
  one runs, so that only a run's very first epoch start pays for the replay.

The replay does not depend on the topology (nodes, ranks, workers), so workers of any layout
share one plan; their own windows are cheap and stay per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mdsloader.locks import file_lock
from mdsloader.ordering.py1e_stream import Py1eReplay, replay_py1e
from mdsloader.ordering.rngstate import StateTable
from mdsloader.ordering.spans import Pieces

FORMAT_VERSION = 1
_ARRAYS = ("begins", "sizes", "node_spans", "node_bounds", "lower", "upper")
_TABLE_FIELDS = ("high", "low", "has_half", "half")


class PlanCache:
    """Epoch plans under ``directory``, shared by every process of a node.

    Args:
        directory: Where plans live (node-local; created when first needed).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def py1e_replay(self, pieces: Pieces, seed: int, epoch: int, block_size: int) -> Py1eReplay:
        """The epoch's ``py1e`` replay, from the cache or computed once and published.

        Same arguments and result as :func:`~mdsloader.ordering.py1e_stream.replay_py1e`. When the
        directory cannot be written the replay is computed and returned uncached.
        """
        run, key, path = self._entry(pieces, seed, epoch, block_size)
        found = _load(path, key)
        if found is not None:
            return found
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(file_lock(self.directory / f".{path.name}.lock"))
            except OSError:
                # A read-only cache directory costs the sharing, not the run.
                return replay_py1e(pieces, seed, epoch, block_size)
            # Whoever held the lock before us may have published it meanwhile.
            found = _load(path, key)
            if found is not None:
                return found
            replay = replay_py1e(pieces, seed, epoch, block_size)
            with contextlib.suppress(OSError):  # a full disk, likewise
                _publish(path, key, replay)
                self._prune(run, epoch)
            return replay

    def prepare(self, pieces: Pieces, seed: int, epoch: int, block_size: int) -> bool:
        """Publish an epoch's replay ahead of need, unless some process has it or is on it.

        Meant for a background thread during the previous epoch, so that the next one starts
        from the cache. Never waits for the lock: whoever holds it is already preparing.

        Returns:
            Whether this call computed and published the plan.
        """
        run, key, path = self._entry(pieces, seed, epoch, block_size)
        if path.exists():
            return False
        try:
            with file_lock(self.directory / f".{path.name}.lock", blocking=False) as held:
                if not held or _load(path, key) is not None:
                    return False
                replay = replay_py1e(pieces, seed, epoch, block_size)
                _publish(path, key, replay)
                self._prune(run, epoch)
                return True
        except OSError:
            return False

    def _entry(self, pieces: Pieces, seed: int, epoch: int,
               block_size: int) -> tuple[str, str, Path]:
        """(run key, full key, directory) of an epoch's plan."""
        run, key = _keys(pieces, seed, epoch, block_size)
        return run, key, self.directory / f"py1e-{run}-e{epoch}-{key[:16]}"

    def _prune(self, run: str, epoch: int) -> None:
        """Remove this run's plans of epochs before the previous one, and their lock files.

        The previous epoch's plan stays: while epoch ``e`` is prepared, ``e - 1`` is running and
        a restart in it should still find its plan.
        """
        prefix = f"py1e-{run}-e"
        for entry in self.directory.iterdir():
            name = entry.name.lstrip(".")
            if not name.startswith(prefix):
                continue
            try:
                entry_epoch = int(name[len(prefix):].split("-", 1)[0])
            except ValueError:
                continue
            if entry_epoch < epoch - 1:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        entry.unlink()


def _keys(pieces: Pieces, seed: int, epoch: int, block_size: int) -> tuple[str, str]:
    """(run key, full key): the run key leaves out the epoch, so a run's epochs can be found."""
    run = hashlib.sha256()
    run.update(f"py1e-replay v{FORMAT_VERSION} seed={seed} block={block_size}\n".encode())
    for array in (pieces.begins, pieces.sizes, pieces.part_bounds, pieces.sample_bounds):
        data = np.ascontiguousarray(array, np.int64)
        run.update(len(data).to_bytes(8, "little"))
        run.update(data.tobytes())
    full = run.copy()
    full.update(f"epoch={epoch}".encode())
    return run.hexdigest()[:16], full.hexdigest()


def _publish(path: Path, key: str, replay: Py1eReplay) -> None:
    """Write ``replay`` as a directory at ``path``, atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        for name in _ARRAYS:
            np.save(staging / f"{name}.npy", np.asarray(getattr(replay, name)))
        for table in ("shuffles", "shifts"):
            for field in _TABLE_FIELDS:
                np.save(staging / f"{table}_{field}.npy", getattr(getattr(replay, table), field))
        meta = {"version": FORMAT_VERSION, "key": key, "spans": len(replay.sizes),
                "clipped": bool(replay.clipped), "inc": str(replay.shuffles.inc)}
        (staging / "meta.json").write_text(json.dumps(meta))
        os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _load(path: Path, key: str) -> Py1eReplay | None:
    """The plan at ``path`` if it is whole and made for ``key``, else None (mapped, not read)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("version") != FORMAT_VERSION or meta.get("key") != key:
            return None
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
        inc = int(meta["inc"])
        tables = {
            table: StateTable(inc, *(np.load(path / f"{table}_{field}.npy", mmap_mode="r")
                                     for field in _TABLE_FIELDS))
            for table in ("shuffles", "shifts")
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None
    spans = int(meta["spans"])
    lengths = [len(arrays[name]) for name in ("begins", "sizes", "lower", "upper")]
    lengths += [len(getattr(t, f)) for t in tables.values() for f in _TABLE_FIELDS]
    if any(length != spans for length in lengths):
        return None
    return Py1eReplay(clipped=bool(meta["clipped"]), **arrays, **tables)
