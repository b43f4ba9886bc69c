"""Micro-benchmark: building one worker's epoch order, ours against the reference's functions.

Ours is :func:`mdsloader.ordering.worker_sample_ids` for one worker. The reference is what its node
leader runs at the start (or resumption) of every epoch: ``StreamingDataset.resample_streams`` and
``generate_work`` (``get_partitions`` + ``get_shuffle`` + the id mapping) for the whole node, then
the worker's slice (without the shared-memory copy, which only adds to its time). Setting: one
stream, uneven shards, py1e, shuffle on, batch 32; topology 1 node x 1 rank x 2 workers unless
``--world`` says otherwise.

Every measurement runs in a fresh child process. Times come from one child that alternates the two
implementations (``--repeat`` runs each, median, wall and CPU), so that load from other processes
hits both alike; peak traced memory (``tracemalloc``, which numpy reports its buffers to) comes from
one more child per implementation. Both implementations' outputs are compared by digest.

Usage: ``python bench/epoch.py [--sizes 1000000 10000000] [--ncn 1 8] [--shard-samples 10000]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEED, BATCH = 9176, 32


def shard_sizes(num_samples: int, per_shard: int) -> np.ndarray:
    """Uneven shard sizes (within +-50% of ``per_shard``) that sum to ``num_samples``."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(per_shard // 2, per_shard * 3 // 2 + 1, num_samples // per_shard + 2)
    ends = np.minimum(np.cumsum(sizes), num_samples)
    sizes = np.diff(np.concatenate([[0], ends]))
    sizes[-1] += num_samples - ends[-1]
    return sizes[sizes > 0].astype(np.int64)


def run_ours(sizes: np.ndarray, ncn: int, drop: int, world: tuple[int, int, int]) -> np.ndarray:
    from mdsloader.ordering import (
        OrderSettings,
        StreamSpec,
        Topology,
        default_shuffle_block_size,
        worker_sample_ids,
    )

    spec = StreamSpec(int(sizes.sum()), sizes)
    settings = OrderSettings(True, "py1e", SEED, default_shuffle_block_size(ncn), "relaxed", ncn,
                             BATCH, "balanced", 1)
    return worker_sample_ids([spec], [int(sizes.sum())], settings,
                             Topology(*world, 0, 0, 0), epoch=0, sample_in_epoch=drop,
                             initial_physical_nodes=None)


def run_reference(sizes: np.ndarray, ncn: int, drop: int, world: tuple[int, int, int]
                  ) -> np.ndarray:
    from streaming import StreamingDataset
    from streaming.base.batching import generate_work
    from streaming.base.world import World

    # The dataset attributes that resample_streams and generate_work read, for one stream.
    ds = SimpleNamespace(
        shuffle=True, shuffle_algo="py1e", shuffle_seed=SEED, num_canonical_nodes=ncn,
        shuffle_block_size=max(4_000_000 // ncn, 1 << 18), partition_algo="relaxed",
        batch_size=BATCH, initial_physical_nodes=None, sampling_method="balanced",
        sampling_granularity=1, epoch_seed_change=True, num_streams=1,
        shard_offset_per_stream=np.array([0]), shards_per_stream=np.array([len(sizes)]),
        samples_per_shard=sizes, sample_offset_per_shard=np.cumsum(sizes) - sizes,
        streams=[SimpleNamespace(choose=np.int64(sizes.sum()))], epoch_size=int(sizes.sum()),
    )
    ds.resample_streams = lambda epoch: StreamingDataset.resample_streams(ds, epoch)
    work = generate_work("random", ds, World(*world, 0), 0, drop)
    ids = work[0, 0, 0].flatten()
    return ids[ids != -1]


def digest(ids: np.ndarray) -> str:
    data = np.ascontiguousarray(ids, np.int64).tobytes()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def child(args: argparse.Namespace) -> None:
    sizes = shard_sizes(args.n, args.shard_samples)
    ncn = args.ncn[0]
    import streaming  # noqa: F401  (the reference's import cost is not part of the measurement)

    runs = {"ours": run_ours, "reference": run_reference}
    if args.child != "both":
        tracemalloc.start()
        runs[args.child](sizes, ncn, args.drop, tuple(args.world))
        print(json.dumps({"peak_bytes": tracemalloc.get_traced_memory()[1]}))
        return
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in runs}
    result = {}
    for _ in range(args.repeat):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            ids = run(sizes, ncn, args.drop, tuple(args.world))
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
            result[name] = {"digest": digest(ids), "count": int(ids.size)}
            del ids
    for name, series in times.items():
        result[name].update({k: statistics.median(v) for k, v in series.items()})
    print(json.dumps(result))


def measure(n: int, ncn: int, drop: int, opts: argparse.Namespace) -> dict:
    base = [sys.executable, __file__, "--n", str(n), "--ncn", str(ncn), "--drop", str(drop),
            "--shard-samples", str(opts.shard_samples), "--repeat", str(opts.repeat),
            "--world", *map(str, opts.world), "--child"]

    def run(which: str) -> dict:
        out = subprocess.run([*base, which], check=True, capture_output=True, text=True, cwd=ROOT)
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = run("both")
    for name in ("ours", "reference"):
        result[name].update(run(name))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--ncn", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--shard-samples", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--world", type=int, nargs=3, default=[1, 1, 2],
                        metavar=("NODES", "RANKS", "WORKERS"), help="topology (worker 0 is timed)")
    parser.add_argument("--child", choices=["ours", "reference", "both"])
    parser.add_argument("--n", type=int)
    parser.add_argument("--drop", type=int, default=0)
    opts = parser.parse_args()
    if opts.child:
        child(opts)
        return
    nodes, ranks, workers = opts.world
    print(f"One worker's epoch (py1e, shuffle, {nodes} nodes x {ranks} ranks x {workers} workers,"
          f" batch {BATCH},"
          f" ~{opts.shard_samples} samples/shard); time = median of {opts.repeat}, wall (cpu);"
          " speed-up from wall time.\n")
    print("| samples | NCN | start | reference s | ours s | speed-up | reference peak MiB "
          "| ours peak MiB | memory ratio | same ids |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for n in opts.sizes:
        for ncn in opts.ncn:
            for label, drop in (("fresh", 0), ("resume 50%", n // 2)):
                both = measure(n, ncn, drop, opts)
                ref, ours = both["reference"], both["ours"]
                mib = 1 << 20
                print(f"| {n:,} | {ncn} | {label} | {ref['wall']:.3f} ({ref['cpu']:.3f}) "
                      f"| {ours['wall']:.3f} ({ours['cpu']:.3f}) "
                      f"| {ref['wall'] / ours['wall']:.1f}x "
                      f"| {ref['peak_bytes'] / mib:.0f} | {ours['peak_bytes'] / mib:.0f} "
                      f"| {ref['peak_bytes'] / ours['peak_bytes']:.1f}x "
                      f"| {'yes' if ref['digest'] == ours['digest'] else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
