"""Compact snapshots of a PCG64 generator, stored in arrays so that millions can be kept cheaply.

A streamed epoch plan replays the shuffle's random draws once and remembers where every span's
draws begin; regenerating a span later means putting the generator back at that point. Keeping
``bit_generator.state`` dicts would cost a Python object per span, so a snapshot here is four
array cells: the 128-bit state in two words, and the buffered 32-bit half (numpy's PCG64 keeps
one after an odd number of 32-bit draws). The increment is fixed per generator and kept once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_WORD = (1 << 64) - 1


@dataclass(slots=True)
class StateTable:
    """A fixed number of PCG64 snapshots of one generator (same increment).

    Attributes:
        inc: The generator's 128-bit increment.
        high: Upper 64 bits of each snapshot's state.
        low: Lower 64 bits of each snapshot's state.
        has_half: Whether a buffered 32-bit half is pending at each snapshot.
        half: The buffered half (0 when none).
    """

    inc: int
    high: np.ndarray
    low: np.ndarray
    has_half: np.ndarray
    half: np.ndarray

    @classmethod
    def empty(cls, size: int, rng: np.random.Generator) -> StateTable:
        """A table of ``size`` unset snapshots for ``rng``'s generator."""
        return cls(int(rng.bit_generator.state["state"]["inc"]), np.zeros(size, np.uint64),
                   np.zeros(size, np.uint64), np.zeros(size, np.uint8),
                   np.zeros(size, np.uint32))

    def save(self, index: int, rng: np.random.Generator) -> None:
        """Record ``rng``'s current state as snapshot ``index``."""
        state = rng.bit_generator.state
        value = state["state"]["state"]
        self.high[index] = value >> 64
        self.low[index] = value & _WORD
        self.has_half[index] = state["has_uint32"]
        self.half[index] = state["uinteger"]

    def restore(self, index: int, rng: np.random.Generator) -> None:
        """Put ``rng`` back to snapshot ``index``."""
        rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": (int(self.high[index]) << 64) | int(self.low[index]),
                      "inc": self.inc},
            "has_uint32": int(self.has_half[index]),
            "uinteger": int(self.half[index]),
        }


def is_pcg64(rng: np.random.Generator) -> bool:
    """Whether ``rng`` runs on PCG64 (the only generator the snapshots support)."""
    return isinstance(rng.bit_generator, np.random.PCG64)
