"""Resumable training state: the state dict and the epoch counter, kept without shared memory.

The reference keeps its epoch counter and the loaded resume state in ``/dev/shm`` segments that
every worker of the node attaches to, plus a node-wide barrier so all workers agree on the epoch.
Killed runs leak those segments, and the barrier deadlocks when ranks iterate unevenly. We need
neither, because the epoch is a pure function of *how many times this worker slot has started
iterating* and of the loaded resume state:

* Every worker slot ``(worker_of_rank, workers_per_rank)`` of a rank starts iterating exactly once
  per epoch, so each slot keeps its own ``next_epoch`` and all slots agree without talking to
  each other (or waiting for each other: there is no barrier).
* ``__iter__`` resolves ``(epoch, sample_in_epoch)`` from the slot's ``next_epoch`` and the resume
  state exactly as the reference does (:func:`resolve_epoch`), then stores ``epoch + 1``.

Where the counter lives, so that it survives every DataLoader mode:

* ``num_workers=0``: the dataset object in the main process iterates itself; memory would do.
* Persistent workers: each worker's copy of the dataset lives for the whole run; memory would do.
* Non-persistent workers: each epoch forks (or pickles) *fresh* copies of the main-process object,
  which never iterated, so memory alone would restart at epoch 0 every epoch.

Hence a small :class:`EpochLedger` directory, node-local under the temp dir and private to one
dataset object (a random token made at construction travels with every copy of the object):
``next_epoch.<workers>.<worker>`` per slot and ``resume.json`` for the hand-off from
``load_state_dict`` (called in the main process) to workers that may already exist. Files are
replaced atomically (write a temp file, then ``os.replace``), so a killed process leaves either
the old or the new value, never a torn one. The main process reads the ledger in ``state_dict``:
its ``next_epoch`` is the largest over the rank's slots, which equals the reference's node-shared
counter. The directory is removed when the owning (constructing) object is garbage collected;
a crash leaves a few bytes that nothing reads again (the token is random), so nothing can block
a later run, and the next ledger created on the node prunes directories whose owner is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdsloader.atomic import write_bytes_atomic

#: The keys of a state dict, identical to the reference's so checkpoints are interchangeable.
STATE_KEYS = (
    "epoch",
    "sample_in_epoch",
    "num_canonical_nodes",
    "shuffle_seed",
    "initial_physical_nodes",
)


@dataclass(frozen=True, slots=True)
class ResumeState:
    """A validated state dict, as produced by ``StreamingDataset.state_dict``.

    Attributes:
        epoch: The epoch being iterated when the state was taken.
        sample_in_epoch: Global samples of that epoch already consumed (all ranks together).
        num_canonical_nodes: The canonical node count the order was built with.
        shuffle_seed: The shuffle seed of the run.
        initial_physical_nodes: The first run's node count (None in very old checkpoints).
    """

    epoch: int
    sample_in_epoch: int
    num_canonical_nodes: int
    shuffle_seed: int
    initial_physical_nodes: int | None = None

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> ResumeState:
        """Validate a state dict (ours or the reference's); extra keys are ignored.

        Raises:
            ValueError: A required key is missing or a value is not a suitable integer.
        """
        if not isinstance(obj, Mapping):
            raise ValueError(f"a state dict must be a mapping, got {type(obj).__name__}")
        missing = [key for key in STATE_KEYS[:4] if key not in obj]
        if missing:
            raise ValueError(f"state dict lacks required keys {missing}: {dict(obj)!r}")
        values = {key: _as_int(obj, key) for key in STATE_KEYS[:4]}
        if values["sample_in_epoch"] < 0 or values["shuffle_seed"] < 0:
            raise ValueError(f"state dict has negative counters: {dict(obj)!r}")
        if values["num_canonical_nodes"] < 1:
            raise ValueError(f"state dict has num_canonical_nodes < 1: {dict(obj)!r}")
        nodes = None
        if obj.get("initial_physical_nodes") is not None:
            nodes = _as_int(obj, "initial_physical_nodes")
        return cls(**values, initial_physical_nodes=nodes)

    def to_dict(self) -> dict[str, Any]:
        """The state in the reference's dict form."""
        return {key: getattr(self, key) for key in STATE_KEYS}


def _as_int(obj: Mapping[str, Any], key: str) -> int:
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int):
        # numpy integers and integral floats come back from some checkpoint formats.
        try:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"state dict key {key!r} must be an integer, got {value!r}") from exc
    return int(value)


def resolve_epoch(
    next_epoch: int, resume: ResumeState | None
) -> tuple[int, int, ResumeState | None]:
    """Decide which epoch an ``__iter__`` call runs and where in it to start.

    The reference's rule: a resume state older than the epoch we are about to start is stale and
    ignored; otherwise its epoch and offset win.

    Args:
        next_epoch: The epoch this worker slot would start without a resume state.
        resume: The loaded state, if any.

    Returns:
        ``(epoch, sample_in_epoch, applied)`` where ``applied`` is the resume state that took
        effect (None when starting fresh).
    """
    if resume is None or resume.epoch < next_epoch:
        return next_epoch, 0, None
    return resume.epoch, resume.sample_in_epoch, resume


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def ledger_root() -> Path:
    """The per-user directory that holds every dataset object's ledger on this node."""
    return Path(tempfile.gettempdir()) / f"mdsloader-{os.getuid()}" / "runs"


def _prune_dead_ledgers(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        for path in root.iterdir():
            pid = path.name.partition("-")[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process (a shared temp dir): leave it alone
    return True


class EpochLedger:
    """Node-local epoch counters and resume hand-off for one dataset object (see module doc)."""

    def __init__(self, directory: Path | None = None) -> None:
        """Create a ledger; by default in a fresh, randomly named directory under the temp dir.

        Default directories are named ``<owner pid>-<random>``; creating one also prunes those
        of owners that no longer exist (killed runs, processes that exited without cleanup).
        """
        if directory is None:
            _prune_dead_ledgers(ledger_root())
            directory = ledger_root() / f"{os.getpid()}-{uuid.uuid4().hex}"
        self.directory = directory
        self._owner_pid = os.getpid()

    def save_resume(self, state: ResumeState) -> None:
        """Publish a loaded state to every copy of the dataset (current and future workers)."""
        write_bytes_atomic(
            self.directory / "resume.json", json.dumps(state.to_dict(), sort_keys=True).encode()
        )

    def load_resume(self) -> ResumeState | None:
        """The last published resume state, or None."""
        text = _read_text(self.directory / "resume.json")
        return None if text is None else ResumeState.from_dict(json.loads(text))

    def _slot_path(self, worker: int, workers: int) -> Path:
        return self.directory / f"next_epoch.{workers}.{worker}"

    def next_epoch(self, slot: tuple[int, int] | None = None) -> int:
        """A slot's next epoch, or with ``slot=None`` the largest over all slots (0 if none).

        A slot is ``(worker_of_rank, workers_per_rank)``. A slot that never iterated (e.g. the
        first DataLoader epoch after iterating in the main process) continues from the other
        worker layouts' counters, like the reference's node-shared counter; it never reads its
        own layout's siblings, which may already be one epoch ahead.
        """
        if slot is not None:
            text = _read_text(self._slot_path(*slot))
            if text:
                return int(text)
        values = [0]
        with contextlib.suppress(FileNotFoundError):
            for path in self.directory.glob("next_epoch.*"):
                if slot is not None and path.name.startswith(f"next_epoch.{slot[1]}."):
                    continue
                text = _read_text(path)
                if text:
                    values.append(int(text))
        return max(values)

    def set_next_epoch(self, slot: tuple[int, int], value: int) -> None:
        """Record the epoch this slot starts on its next ``__iter__``."""
        write_bytes_atomic(self._slot_path(*slot), str(int(value)).encode())

    def remove(self) -> None:
        """Delete the ledger, only from the process that created it (workers share it)."""
        if os.getpid() == self._owner_pid:
            shutil.rmtree(self.directory, ignore_errors=True)
