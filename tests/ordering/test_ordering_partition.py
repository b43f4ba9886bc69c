"""Partitioning equals the reference's ``get_partitions`` exactly, full array and per worker."""

from __future__ import annotations

import itertools
import logging
import warnings

import numpy as np
import pytest

from mdsloader.ordering import get_partitions, worker_partition

pytestmark = pytest.mark.interop

SIZES = (1, 2, 3, 5, 7, 8, 13, 31, 97, 100, 257)


@pytest.fixture(scope="module")
def ref_partitions(reference):
    from streaming.base.partition import get_partitions as ref

    # The reference logs a warning for every drop_first that is not a multiple of the node count.
    logging.getLogger("streaming").setLevel(logging.ERROR)
    return ref


def _call(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args), None
        except (ValueError, ZeroDivisionError) as exc:
            return None, exc


def _assert_same(ref, args) -> None:
    expected, ref_error = _call(ref, *args)
    got, our_error = _call(get_partitions, *args)
    if ref_error is not None:
        assert isinstance(our_error, ValueError), (args, ref_error, got)
        return
    assert our_error is None, (args, our_error)
    assert got.dtype == np.int64
    assert got.shape == expected.shape, args
    np.testing.assert_array_equal(got, expected, err_msg=str(args))
    nodes, ranks, workers = expected.shape[:3]
    for node, rank, worker in itertools.product(range(nodes), range(ranks), range(workers)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one = worker_partition(*args, node=node, rank_of_node=rank, worker=worker)
        np.testing.assert_array_equal(one, expected[node, rank, worker].ravel(), err_msg=str(args))


def _drops(num_samples: int, world: int, rng: np.random.Generator) -> list[int]:
    """Resumption points: start, a random middle, the exact end and the furthest allowed."""
    furthest = num_samples + world - num_samples % world
    return [0, int(rng.integers(0, num_samples + 1)), num_samples, furthest]


@pytest.mark.parametrize("algo", ["orig", "relaxed"])
def test_partition_matrix_matches_reference(ref_partitions, algo):
    rng = np.random.default_rng(5)
    grid = itertools.product((1, 2, 4, 8), (1, 2, 4), (1, 2, 3, 4), (1, 2, 3), (1, 3, 8))
    for ncn, nodes, ranks, workers, batch in grid:
        num_samples = int(rng.choice(SIZES))
        for drop in _drops(num_samples, nodes * ranks, rng)[: 1 + (ncn * ranks) % 4]:
            _assert_same(ref_partitions, (algo, num_samples, ncn, nodes, ranks, workers, batch,
                                          drop, None))


def test_partition_random_cases_match_reference(ref_partitions):
    rng = np.random.default_rng(11)
    for _ in range(400):
        nodes = int(rng.choice([1, 2, 3, 4, 6]))
        ranks = int(rng.integers(1, 5))
        num_samples = int(rng.integers(1, 3000))
        args = (
            str(rng.choice(["orig", "relaxed"])), num_samples, int(rng.choice([1, 2, 3, 4, 8, 12])),
            nodes, ranks, int(rng.integers(1, 4)), int(rng.choice([1, 3, 8])),
            int(rng.choice(_drops(num_samples, nodes * ranks, rng))),
            None if rng.random() < 0.5 else int(rng.choice([1, 2, 3, 4, 6])),
        )
        _assert_same(ref_partitions, args)


def test_relaxed_resumption_on_another_node_count_matches_reference(ref_partitions):
    # Global batch 24 kept constant; the new node counts divide neither way with NCN 4 or 8.
    rng = np.random.default_rng(3)
    for ncn, initial, nodes, ranks in itertools.product((4, 8), (1, 2, 4), (3, 6), (1, 2)):
        batch = 24 // (nodes * ranks)
        for num_samples in (97, 1000):
            for drop in [*_drops(num_samples, nodes * ranks, rng)[:3], 240]:
                args = ("relaxed", num_samples, ncn, nodes, ranks, 2, batch, drop, initial)
                _assert_same(ref_partitions, args)


def test_global_batches_do_not_depend_on_topology():
    """Elastic determinism (mds-format.md 3.6): the same global batches for any topology."""
    num_samples, ncn, global_batch = 1009, 4, 24

    def global_batches(nodes: int, ranks: int, workers: int) -> list[list[int]]:
        part = get_partitions("orig", num_samples, ncn, nodes, ranks, workers,
                              global_batch // (nodes * ranks))
        # A DataLoader takes batches from a rank's workers round-robin; devices then stack.
        per_device = part.transpose(3, 2, 0, 1, 4)  # (batches, workers, nodes, ranks, batch)
        flat = per_device.reshape(-1, nodes * ranks * (global_batch // (nodes * ranks)))
        return [sorted(b[b != -1].tolist()) for b in flat]

    base = global_batches(1, 8, 2)
    for topology in [(2, 4, 3), (4, 2, 1), (1, 1, 4), (2, 2, 2), (1, 24, 1)]:
        other = global_batches(*topology)
        full = num_samples // global_batch
        assert [b for b in other if b][:full] == base[:full], topology


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"algo": "nope"}, "partition_algo"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_canonical_nodes": 0}, "num_canonical_nodes"),
        ({"workers_per_rank": 0}, "workers_per_rank"),
        ({"batch_size": 0}, "batch_size"),
        ({"drop_first": -1}, "drop_first"),
        ({"drop_first": 10_000}, "drop_first"),
        ({"algo": "orig", "num_canonical_nodes": 3, "num_physical_nodes": 2}, "divisible"),
        ({"num_canonical_nodes": 3, "num_physical_nodes": 2, "initial_physical_nodes": 4,
          "batch_size": 1, "ranks_per_node": 1}, "global batch"),
    ],
)
def test_partition_rejects_invalid_arguments(kwargs, match):
    args = {"algo": "relaxed", "num_samples": 100, "num_canonical_nodes": 2,
            "num_physical_nodes": 1, "ranks_per_node": 1, "workers_per_rank": 1,
            "batch_size": 2, "drop_first": 0, "initial_physical_nodes": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        get_partitions(**args)


def test_worker_partition_rejects_coordinates_outside_topology():
    with pytest.raises(ValueError, match="worker"):
        worker_partition("orig", 10, 1, 1, 1, 2, 1, node=0, rank_of_node=0, worker=2)
    with pytest.raises(ValueError, match="node"):
        worker_partition("orig", 10, 1, 1, 1, 2, 1, node=1, rank_of_node=0, worker=0)


def test_worker_partition_of_a_large_epoch_is_only_that_worker():
    n = 10_000_000
    part = worker_partition("relaxed", n, 8, 2, 4, 2, 16, 123_456, 2, node=1, rank_of_node=3,
                            worker=1)
    per_rank = (n - 123_456) // 2 // 4
    assert part.shape == (-(-per_rank // 32) * 16,)
    real = part[part != -1]
    # Worker 1 takes the rank's odd batches of 16.
    full, rest = divmod(per_rank - 16, 32)
    assert real.size == full * 16 + min(rest, 16)
    # Node 1 of 2 reads only the odd canonical nodes (rows of n / 8 samples).
    assert (real // (n // 8) % 2 == 1).all()


def test_large_worker_slices_match_reference(ref_partitions):
    """Big enough that the periodic tiling of regular batches does most of the work."""
    rng = np.random.default_rng(8)
    for _ in range(12):
        num_samples = int(rng.integers(50_000, 200_000))
        ncn, nodes = [(1, 1), (3, 1), (8, 2), (2, 4), (12, 4), (6, 3)][int(rng.integers(0, 6))]
        ranks, workers = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        batch = int(rng.choice([1, 3, 8, 32]))
        drop = int(rng.choice([0, int(rng.integers(0, num_samples))]))
        args = ("orig", num_samples, ncn, nodes, ranks, workers, batch, drop, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = ref_partitions(*args)
        for node, rank, worker in [(0, 0, 0), (nodes - 1, ranks - 1, workers - 1)]:
            got = worker_partition(*args, node=node, rank_of_node=rank, worker=worker)
            np.testing.assert_array_equal(got, expected[node, rank, worker].ravel(),
                                          err_msg=str(args))
