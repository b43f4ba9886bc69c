"""Order check at scale: the streamed plan against the reference's own functions (not a timing).

Builds the reference's whole epoch (``streaming.base.shuffle.get_shuffle`` for py1e with default
settings, and ``get_partitions``) for shards of 100,000 samples, then compares every worker's
streamed ids (1 node x 1 rank x 2 workers, batch 256), fresh and resumed at 50%. Every difference
is classified: an adjacent pair of samples whose py1e positions are bitwise equal (an exact tie,
which the reference orders by numpy's unstable ``argsort``, whose tie order depends on numpy's
sort kernel and so on the CPU and build) or anything else (a real mismatch). At 10^8 samples the
reference needs about 40 s and 5 GiB.

Usage: ``python bench/order_check.py [--samples 100000000]``; exits 1 on a real mismatch.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

PER_SHARD = 100_000
BATCH = 256
SEED = 9176
BLOCK = 4_000_000


def positions_of(ids: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The py1e float position of each given sample id (epoch 0, one canonical node)."""
    from mdsloader.ordering.py1e_stream import Py1eNodeWindow, replay_py1e
    from mdsloader.ordering.shuffle import fixed_pieces

    replay = replay_py1e(fixed_pieces(sizes, 1, SEED), SEED, 0, BLOCK)
    window = Py1eNodeWindow(replay, 0)
    begins = np.asarray(window._begins)
    out = np.empty(ids.size)
    for index, sample in enumerate(ids.tolist()):
        span = int(np.flatnonzero((begins <= sample) & (sample < begins + window._sizes))[0])
        size = window._size_list[span]
        values = np.empty(size, np.int64)
        replay.shuffles.restore(span, window._rng)
        np.add(window._counting[:size], window._begins[span], out=values)
        window._rng.shuffle(values)
        out[index] = window._positions(span)[int(np.flatnonzero(values == sample)[0])]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=float, default=1e8)
    args = parser.parse_args()
    total = int(args.samples)
    sizes = np.full(total // PER_SHARD, PER_SHARD, np.int64)

    from streaming.base.partition import get_partitions
    from streaming.base.shuffle import get_shuffle

    from mdsloader.ordering import OrderSettings, StreamSpec, Topology
    from mdsloader.ordering.streamed import plan_worker

    started = time.perf_counter()
    perm = get_shuffle("py1e", sizes, 1, SEED, 0, BLOCK)
    print(f"reference epoch built in {time.perf_counter() - started:.1f} s")
    settings = OrderSettings(shuffle=True, shuffle_algo="py1e", shuffle_seed=SEED,
                             shuffle_block_size=BLOCK, partition_algo="relaxed",
                             num_canonical_nodes=1, batch_size=BATCH, sampling_method="balanced",
                             sampling_granularity=1)
    real = 0
    for resume in (0, total // 2):
        parts = get_partitions("orig", total, 1, 1, 1, 2, BATCH, resume)
        for worker in range(2):
            positions = parts[0, 0, worker].ravel()
            expected = perm[positions[positions != -1]]
            plan = plan_worker([StreamSpec(total, sizes)], [total], settings,
                               Topology(1, 1, 2, 0, 0, worker), epoch=0, sample_in_epoch=resume,
                               initial_physical_nodes=None)
            got = np.concatenate(list(plan.chunks()))
            bad = np.flatnonzero(got != expected) if got.size == expected.size else None
            if bad is None:
                print(f"resume {resume} worker {worker}: {got.size} ids, expected {expected.size}")
                real += 1
                continue
            ties = 0
            for first in bad[::2].tolist():
                pair = got[first:first + 2]
                swapped = np.array_equal(pair[::-1], expected[first:first + 2])
                if swapped and len(set(positions_of(pair, sizes).tolist())) == 1:
                    ties += 1
                else:
                    real += 1
            print(f"resume {resume} worker {worker}: {got.size} ids, {bad.size} differ: {ties} "
                  f"exact-tie pairs, {bad.size - 2 * ties} other")
    sys.exit(1 if real else 0)


if __name__ == "__main__":
    main()
