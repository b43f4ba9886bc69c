"""Advance a generator past a run of ``rng.shuffle`` calls, recording its state before each.

The streamed ``py1e`` plan needs only where the random stream stands after each within-span
shuffle, not the shuffled spans. The compiled helper (``_shuffle_draws``, built with the loader
where a C compiler exists) replays just the draws, about 1.8 ns per item against numpy's 8-10 ns
for a real shuffle; without it, numpy shuffles a scratch array. Both leave the generator in the
same state, bit for bit (``tests/ordering/test_shuffle_draws.py`` holds them to it).
"""

from __future__ import annotations

import numpy as np

from mdsloader.ordering.rngstate import StateTable, is_pcg64

try:
    from mdsloader.ordering._shuffle_draws import skip_shuffles as _compiled
except ImportError:  # built without a C compiler: numpy does the same draws, slower
    _compiled = None

# numpy draws 64-bit words for bounds of 2**32 and more; the helper refuses such spans.
_LARGEST_COMPILED = 1 << 32


def compiled_available() -> bool:
    """Whether the compiled replay is installed (otherwise numpy's shuffle is used)."""
    return _compiled is not None


def skip_shuffles(rng: np.random.Generator, sizes: np.ndarray, table: StateTable,
                  first: int, *, use_compiled: bool = True) -> None:
    """Advance ``rng`` as ``rng.shuffle`` of arrays of ``sizes`` would, in order.

    Before shuffle ``j`` the generator's state is saved as snapshot ``first + j`` of ``table``.

    Args:
        rng: The generator (PCG64 for the compiled path).
        sizes: Items per shuffle.
        table: Where the snapshots go.
        first: Snapshot index of the first shuffle.
        use_compiled: Use the compiled helper when available (tests compare both paths).
    """
    sizes = np.ascontiguousarray(sizes, dtype=np.int64)
    count = len(sizes)
    if (use_compiled and _compiled is not None and is_pcg64(rng)
            and int(sizes.max(initial=0)) <= _LARGEST_COMPILED):
        state = rng.bit_generator.state
        end = first + count
        value, has_half, half = _compiled(
            state["state"]["state"], state["state"]["inc"], state["has_uint32"],
            state["uinteger"], sizes, table.high[first:end], table.low[first:end],
            table.has_half[first:end], table.half[first:end])
        rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": value, "inc": state["state"]["inc"]},
            "has_uint32": has_half,
            "uinteger": half,
        }
        return
    # numpy draws the same swaps whatever the array holds: one cache-resident scratch array.
    scratch = np.empty(int(sizes.max(initial=0)), np.int64)
    for j, size in enumerate(sizes.tolist()):
        table.save(first + j, rng)
        if size > 1:
            rng.shuffle(scratch[:size])
