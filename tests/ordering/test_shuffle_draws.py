"""The compiled shuffle-draw replay against numpy's own ``Generator.shuffle``, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from mdsloader.ordering import shuffle_draws
from mdsloader.ordering.rngstate import StateTable
from tests.conftest import require


def _state(rng: np.random.Generator) -> tuple[int, int, int]:
    state = rng.bit_generator.state
    return state["state"]["state"], state["has_uint32"], state["uinteger"]


def _numpy_replay(rng: np.random.Generator, sizes: list[int]) -> list[tuple[int, int, int]]:
    """The reference behaviour: real shuffles, the state read before each."""
    before = []
    for size in sizes:
        before.append(_state(rng))
        rng.shuffle(np.arange(size))
    return before


def _table_states(table: StateTable) -> list[tuple[int, int, int]]:
    return [((int(hi) << 64) | int(lo), int(has), int(half))
            for hi, lo, has, half in zip(table.high, table.low, table.has_half, table.half)]


@pytest.fixture
def compiled() -> None:
    require(shuffle_draws.compiled_available(),
            "the loader was installed without its C extension (no C compiler)")


def _generator(seed: int, odd_halves: int) -> np.random.Generator:
    rng = np.random.default_rng(seed)
    # 32-bit bounded draws leave numpy's PCG64 with a buffered half-word after an odd count.
    rng.integers(0, 7, size=odd_halves, dtype=np.uint32)
    return rng


@pytest.mark.parametrize("use_compiled", [True, False])
@pytest.mark.parametrize("odd_halves", [0, 1, 2])
def test_states_match_numpy_shuffle(compiled, use_compiled: bool, odd_halves: int) -> None:
    """Random span sizes (0, 1, powers of two and their neighbours, large): every state equal."""
    picker = np.random.default_rng(123)
    special = [0, 1, 2, 3, 4, 5, 255, 256, 257, 4095, 4096, 4097, 65536, 65537, 100_000]
    for trial in range(40):
        sizes = picker.choice(special, size=picker.integers(0, 12)).tolist()
        sizes += picker.integers(0, 3000, size=picker.integers(0, 6)).tolist()
        picker.shuffle(sizes)
        expected_rng = _generator(trial, odd_halves)
        expected = _numpy_replay(expected_rng, sizes)
        rng = _generator(trial, odd_halves)
        table = StateTable.empty(len(sizes) + 2, rng)
        shuffle_draws.skip_shuffles(rng, np.array(sizes, np.int64), table, 1,
                                    use_compiled=use_compiled)
        assert _table_states(table)[1:len(sizes) + 1] == expected
        assert _state(rng) == _state(expected_rng)
        # And the generator goes on exactly as numpy's does (its buffered half included).
        assert rng.integers(0, 1000, 5, dtype=np.uint32).tolist() == \
            expected_rng.integers(0, 1000, 5, dtype=np.uint32).tolist()


def test_refill_boundaries(compiled) -> None:
    """Many small spans cross the helper's internal word buffer at every possible offset."""
    sizes = ([2, 3] * 3000) + [1, 0] * 10 + [7] * 2000
    expected_rng = _generator(9, 1)
    expected = _numpy_replay(expected_rng, sizes)
    rng = _generator(9, 1)
    table = StateTable.empty(len(sizes), rng)
    shuffle_draws.skip_shuffles(rng, np.array(sizes), table, 0)
    assert _table_states(table) == expected
    assert _state(rng) == _state(expected_rng)


def test_compiled_refuses_what_it_cannot_replay(compiled) -> None:
    from mdsloader.ordering._shuffle_draws import skip_shuffles

    state = np.random.default_rng(0).bit_generator.state
    args = (state["state"]["state"], state["state"]["inc"], 0, 0)
    out = (np.zeros(1, np.uint64), np.zeros(1, np.uint64), np.zeros(1, np.uint8),
           np.zeros(1, np.uint32))
    with pytest.raises(ValueError, match="span 0 has 4294967297 items"):
        skip_shuffles(*args, np.array([(1 << 32) + 1]), *out)
    with pytest.raises(ValueError, match="high holds 1 items, sizes 2"):
        skip_shuffles(*args, np.array([3, 4]), *out)
    with pytest.raises(TypeError, match="sizes must hold 8-byte items"):
        skip_shuffles(*args, np.array([3], np.int32), *out)
