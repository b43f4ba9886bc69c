"""Shuffles equal the reference's ``get_shuffle`` exactly; the fast position sort is exact."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from mdsloader.ordering import SHUFFLE_ALGOS, get_shuffle, py1e
from mdsloader.ordering.argsort import _colliding_neighbours, argsort_positions
from mdsloader.ordering.arrays import NARROW_SHUFFLE_MIN, shuffled_range
from mdsloader.ordering.py1e import (
    _skip_uniforms,
    _sort_node,
    _SpanLookup,
    py1e_order,
    shuffle_py1e,
)
from mdsloader.ordering.shuffle import fixed_pieces
from mdsloader.ordering.spans import cut_pieces


@pytest.fixture(scope="module")
def ref_shuffle(reference):
    from streaming.base.shuffle import get_shuffle as ref

    return ref


def _both(ref, algo, sizes, ncn, seed, epoch, block):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected, error = ref(algo, np.asarray(sizes, np.int64), ncn, seed, epoch, block), None
        except ValueError as exc:
            expected, error = None, exc
        if error is not None:
            with pytest.raises(ValueError):
                get_shuffle(algo, sizes, ncn, seed, epoch, block)
            return None
        got = get_shuffle(algo, sizes, ncn, seed, epoch, block)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected, err_msg=f"{algo} {list(sizes)} {ncn} {seed}")
    return got


@pytest.mark.interop
@pytest.mark.parametrize("algo", SHUFFLE_ALGOS)
def test_shuffle_random_cases_match_reference(ref_shuffle, algo):
    rng = np.random.default_rng(SHUFFLE_ALGOS.index(algo))
    for _ in range(250):
        # Tiny shards too, so that canonical nodes of 0 or 1 samples occur.
        sizes = rng.integers(0, int(rng.choice([3, 40])), int(rng.integers(1, 14)))
        if rng.random() < 0.4:
            sizes[rng.integers(0, len(sizes))] = 0  # empty shards keep their place in the order
        ncn = int(rng.choice([1, 2, 3, 4, 8]))
        block = int(rng.choice([2, 7, 20, 100, 1 << 18]))
        _both(ref_shuffle, algo, sizes, ncn, int(rng.integers(0, 10_000)), int(rng.integers(0, 3)),
              block)


@pytest.mark.interop
@pytest.mark.parametrize("algo", SHUFFLE_ALGOS)
@pytest.mark.parametrize("ncn", [1, 8])
def test_shuffle_of_many_uneven_shards_matches_reference(ref_shuffle, algo, ncn):
    sizes = np.random.default_rng(7).integers(0, 900, 120)
    for epoch in (0, 1):
        got = _both(ref_shuffle, algo, sizes, ncn, 9176, epoch, 4_000 // ncn)
        assert sorted(got.tolist()) == list(range(int(sizes.sum())))


@pytest.mark.interop
@pytest.mark.parametrize("sizes", [[3, 5], [1, 2, 3, 2], [8], [0, 9, 0]])
def test_shuffle_with_one_sample_per_canonical_node_matches_reference(ref_shuffle, sizes):
    for algo in SHUFFLE_ALGOS:
        for seed in range(4):
            _both(ref_shuffle, algo, np.array(sizes), sum(sizes), seed, seed % 2, 10)


@pytest.mark.parametrize("algo", SHUFFLE_ALGOS)
def test_shuffle_changes_with_epoch_and_is_deterministic(algo):
    sizes = np.full(20, 50)
    first = get_shuffle(algo, sizes, 2, 1, 0, 300)
    np.testing.assert_array_equal(first, get_shuffle(algo, sizes, 2, 1, 0, 300))
    assert not np.array_equal(first, get_shuffle(algo, sizes, 2, 1, 1, 300))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("nope", [3], 1, 0, 0, 10), "shuffle_algo"),
        (("py1s", [3], 0, 0, 0, 10), "num_canonical_nodes"),
        (("py1s", [3], 1, -1, 0, 10), "shuffle_seed"),
        (("py1s", [3], 1, 0, -1, 10), "epoch"),
        (("py1e", [3], 1, 0, 0, 0), "shuffle_block_size"),
        (("py1s", [3, -1], 1, 0, 0, 10), "shard_sizes"),
        (("py1e", [1, 1], 4, 0, 0, 10), "Canonical node"),
    ],
)
def test_shuffle_rejects_invalid_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        get_shuffle(*args)


def test_py1e_warns_when_shards_exceed_the_block():
    with pytest.warns(UserWarning, match="block size"):
        get_shuffle("py1e", np.full(4, 100), 1, 0, 0, 10)


def test_py1e_skipping_a_canonical_node_keeps_the_others_exact():
    sizes = np.random.default_rng(1).integers(1, 5000, 60)
    pieces = fixed_pieces(sizes, 4, 5)
    full = shuffle_py1e(pieces, 5, 2, 20_000)
    needed = np.array([False, True, False, True])
    partial = py1e_order(pieces, 5, 2, 20_000, needed)
    for c in np.flatnonzero(needed):
        part = slice(pieces.sample_bounds[c], pieces.sample_bounds[c + 1])
        np.testing.assert_array_equal(partial[part], full[part])


def test_skipping_uniforms_leaves_the_generator_where_drawing_does():
    for count in (0, 10, 5000, 100_000):
        drawn, skipped = np.random.default_rng(3), np.random.default_rng(3)
        for rng in (drawn, skipped):
            rng.integers(0, 7)  # leaves a buffered 32-bit half behind in some numpy versions
            rng.shuffle(np.arange(9))  # 32-bit draws: leaves a buffered half
        drawn.uniform(0.0, 1.0, count)
        _skip_uniforms(skipped, count)
        assert drawn.bit_generator.state == skipped.bit_generator.state
        assert drawn.integers(0, 1 << 40) == skipped.integers(0, 1 << 40)


def test_cut_pieces_splits_at_canonical_bounds_and_keeps_empty_shards():
    # Layout sizes 4, 0, 6 over 3 parts of 10 samples: bounds at 3 and 6.
    pieces = cut_pieces(np.array([100, 200, 300]), np.array([4, 0, 6]), 3)
    assert pieces.sizes.tolist() == [3, 1, 0, 2, 4]
    assert pieces.begins.tolist() == [100, 103, 200, 300, 302]
    assert pieces.part_bounds.tolist() == [0, 1, 4, 5]
    assert pieces.sample_bounds.tolist() == [0, 3, 6, 10]


def _positions(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "uniform":
        return rng.random(n) * n
    if kind == "ties":
        return np.floor(rng.random(n) * n * 4) / 4
    if kind == "dense":
        return np.round(rng.random(n) * 3, 12)
    return rng.normal(0, n, n)  # outside [0, n): the plain argsort fallback


@pytest.mark.parametrize("kind", ["uniform", "ties", "dense", "outside"])
def test_argsort_positions_equals_stable_argsort(kind):
    rng = np.random.default_rng(len(kind))
    for _ in range(50):
        values = _positions(kind, rng, int(rng.integers(1, 4000)))
        np.testing.assert_array_equal(argsort_positions(values), np.argsort(values, kind="stable"))


def test_argsort_positions_writes_into_out_on_every_path():
    for values in (np.array([0.0]), np.array([2.0, -1.0, 0.5]), np.array([1.5, 0.2, 0.7])):
        out = np.full(5, 99, np.uint64)
        got = argsort_positions(values, out=out)
        np.testing.assert_array_equal(got, np.argsort(values, kind="stable"))
        np.testing.assert_array_equal(out[:values.size].view(np.int64), got)


def test_argsort_positions_reorders_distinct_values_that_share_a_quantum():
    # 3000 positions keep 40 fractional bits; spreads of 2**-44 collide but are distinct.
    rng = np.random.default_rng(0)
    n = 3000
    values = np.floor(rng.random(n) * 50) + rng.random(n) * 2.0**-44
    assert _colliding_neighbours(np.sort(_keys(values)), 12).size > n // 2
    np.testing.assert_array_equal(argsort_positions(values, in_range=True),
                                  np.argsort(values, kind="stable"))


def _keys(values: np.ndarray) -> np.ndarray:
    keys = (values * 2.0**40).astype(np.uint64) << np.uint64(12)
    return keys | np.arange(values.size, dtype=np.uint64)


@pytest.mark.parametrize("id_base", [1 << 40, 1 << 56])
def test_py1e_node_sort_resolves_collisions_through_the_span_lookup(id_base):
    # Sample ids near 2**40 leave 11 fraction bits (many collisions); near 2**56, too few bits,
    # so the exact fallback runs. Both must equal a plain stable argsort.
    rng = np.random.default_rng(4)
    sizes = np.array([700, 0, 1300, 1000])
    begins = id_base + np.array([5000, 9000, 0, 2000])
    ids = np.concatenate([b + rng.permutation(s) for b, s in zip(begins, sizes)])
    positions = np.floor(rng.random(ids.size) * 100) + rng.random(ids.size) * 1e-4
    out = np.empty(ids.size, np.int64)
    _sort_node(positions, ids, _SpanLookup(ids, begins, sizes), int(id_base * 2).bit_length(),
               out)
    np.testing.assert_array_equal(out, ids[np.argsort(positions, kind="stable")])


@pytest.mark.interop
def test_py1e_sorting_in_a_helper_thread_matches_reference(ref_shuffle, monkeypatch):
    monkeypatch.setattr(py1e, "_PIPELINE_MIN", 1)  # pipeline even tiny canonical nodes
    rng = np.random.default_rng(21)
    for _ in range(60):
        sizes = rng.integers(0, 60, int(rng.integers(1, 10)))
        _both(ref_shuffle, "py1e", sizes, int(rng.choice([2, 3, 8])), int(rng.integers(0, 99)),
              int(rng.integers(0, 2)), int(rng.choice([7, 50])))
    # And at the real threshold: 3 canonical nodes of ~100k samples.
    monkeypatch.undo()
    _both(ref_shuffle, "py1e", np.random.default_rng(2).integers(1000, 3000, 150), 3, 7, 1,
          200_000)


@pytest.mark.interop
def test_py1e_nodes_whose_spans_never_shift_match_reference(ref_shuffle, monkeypatch):
    # Shards larger than the block are clipped (shifts of exactly 0, their draws skipped) and a
    # node of only such spans is taken in slot order without a sort; mixed with nodes that do
    # shift, pipelined or not, and with spans above the 4096-draw skip threshold.
    cases = [([9000, 12000], 1, 100), ([9000, 5, 12000, 7, 30], 2, 100), ([5000], 1, 7),
             ([20, 9000, 40, 9000, 10], 3, 60), ([70_000, 300, 500, 70_000], 2, 1000),
             ([110, 115, 120], 1, 100), ([50], 1, 100), ([6000, 9000], 2, 8000)]
    for pipelined in (False, True):
        if pipelined:
            monkeypatch.setattr(py1e, "_PIPELINE_MIN", 1)
        for sizes, ncn, block in cases:
            for seed in range(3):
                _both(ref_shuffle, "py1e", np.array(sizes), ncn, seed, seed % 2, block)


@pytest.mark.parametrize("size", [0, 1, 2, NARROW_SHUFFLE_MIN - 1, NARROW_SHUFFLE_MIN,
                                  3 * NARROW_SHUFFLE_MIN + 7])
@pytest.mark.parametrize("begin", [0, 5, 2**31 - 10, 2**40])
def test_shuffled_range_equals_an_int64_shuffle_and_consumes_the_same_draws(size, begin):
    ours, theirs = np.random.default_rng(11), np.random.default_rng(11)
    out = np.full(size, -1, np.int64)
    shuffled_range(out, begin, ours)
    expected = np.arange(begin, begin + size, dtype=np.int64)
    theirs.shuffle(expected)
    assert out.dtype == np.int64
    assert np.array_equal(out, expected)
    assert ours.integers(0, 2**62) == theirs.integers(0, 2**62)  # same stream position after


def test_naive_shuffle_is_generator_permutation():
    sizes = np.array([NARROW_SHUFFLE_MIN, 3, NARROW_SHUFFLE_MIN + 5], np.int64)
    got = get_shuffle("naive", sizes, 1, 9176, 3, 1 << 18)
    expected = np.random.default_rng(9176 + 3).permutation(int(sizes.sum()))
    assert got.dtype == np.int64 and np.array_equal(got, expected)


@pytest.mark.interop
@pytest.mark.parametrize("algo", ["py1e", "naive"])
@pytest.mark.parametrize("block", [50_000, 1 << 18])
def test_shuffles_with_spans_past_the_narrow_threshold_match_reference(ref_shuffle, algo, block):
    # Spans of at least NARROW_SHUFFLE_MIN samples are shuffled as int32 (shuffled_range); a
    # block below the span size also exercises py1e's clipped, sort-free path.
    sizes = [NARROW_SHUFFLE_MIN + 123, 5, 2 * NARROW_SHUFFLE_MIN, 40_000]
    for ncn in (1, 2):
        _both(ref_shuffle, algo, sizes, ncn, 9176, 1, block)
