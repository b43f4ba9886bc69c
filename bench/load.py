"""Streaming benchmark: our loader against mosaicml-streaming, in the same run, same data.

Measures (each in a fresh child process, so peak memory and caches are isolated):

* warm local cache, shuffled full epoch: in-process and through a DataLoader with 2 workers, with
  the default collate and with a user ``collate_fn`` that returns the list of sample dicts;
* cold from an S3 server on loopback (moto's ThreadedMotoServer, started here);
* random access ``ds[i]`` (median of three fresh processes);
* time from construction to the first sample, and from ``load_state_dict`` at mid-epoch to the
  first batch, at ``--samples`` and at 10,000,000 samples (a tiny int-only dataset); median of
  five fresh processes each;
* peak resident memory of each child (``VmHWM``).

The dataset matches bench/write.py: columns int64, int32, str (50-150 chars), ndarray:float32 of
64, bytes (200-1000); zstd:3; xxh64; 64 MiB shards, written with our MDSWriter.

Usage: ``python bench/load.py [--samples 1000000] [--data DIR] [--big 10000000]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bytecode import compile_loader  # bench/ is the script directory

ROOT = Path(__file__).resolve().parent.parent
BATCH = 256
# Fresh processes per row for the short, noisy measures (the median is reported); the epoch-long
# throughput rows run once.
REPEAT = {"random": 3, "start": 5, "resume": 5}
STATE_KEYS = {"num_canonical_nodes": 1, "shuffle_seed": 9176, "initial_physical_nodes": 1}


# ---- data ----------------------------------------------------------------------------------


def write_full(out: Path, samples: int) -> None:
    """The bench/write.py dataset: five columns, zstd:3, xxh64, 64 MiB shards."""
    import numpy as np

    from mdsloader.mds.writer import MDSWriter

    columns = {"a": "int64", "b": "int32", "text": "str", "vec": "ndarray:float32", "blob": "bytes"}
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", np.uint8)
    with MDSWriter(
        columns=columns, out=str(out), compression="zstd:3", hashes=["xxh64"],
        size_limit="64mb", exist_ok=True,
    ) as writer:  # fmt: skip
        for begin in range(0, samples, 10_000):
            n = min(10_000, samples - begin)
            text_len = rng.integers(50, 151, n)
            blob_len = rng.integers(200, 1001, n)
            chars = letters[rng.integers(0, len(letters), int(text_len.sum()))].tobytes()
            blobs = rng.bytes(int(blob_len.sum()))
            t_ends, b_ends = np.cumsum(text_len), np.cumsum(blob_len)
            writer.write_batch({
                "a": np.arange(begin, begin + n, dtype=np.int64),
                "b": rng.integers(-(2**31), 2**31 - 1, n, dtype=np.int32),
                "text": [chars[e - k : e].decode() for e, k in zip(t_ends, text_len)],
                "vec": rng.standard_normal((n, 64), dtype=np.float32),
                "blob": [blobs[e - k : e] for e, k in zip(b_ends, blob_len)],
            })  # fmt: skip


def write_tiny(out: Path, samples: int) -> None:
    """An int-only dataset (for start/resume timing at 10M samples)."""
    import numpy as np

    from mdsloader.mds.writer import MDSWriter

    with MDSWriter(columns={"id": "int64"}, out=str(out), size_limit="64mb", exist_ok=True) as w:
        for begin in range(0, samples, 1_000_000):
            w.write_batch({"id": np.arange(begin, min(samples, begin + 1_000_000), dtype=np.int64)})


def ensure_data(root: Path, samples: int, big: int) -> tuple[Path, Path]:
    full, tiny = root / f"full-{samples}", root / f"tiny-{big}"
    for path, make, n in ((full, write_full, samples), (tiny, write_tiny, big)):
        if not (path / "index.json").exists():
            t0 = time.perf_counter()
            make(path, n)
            print(f"<!-- wrote {path} in {time.perf_counter() - t0:.1f}s -->", file=sys.stderr)
    warm_up(full)
    return full, tiny


def warm_up(path: Path) -> None:
    """Decompress every shard next to its zip, so "warm" runs of both loaders start equal."""
    from mdsloader.mds.reader import DatasetReader

    reader = DatasetReader(path)
    for number in range(len(reader.index.shards)):
        reader.shard(number)
    reader.close()


# ---- child scenarios -----------------------------------------------------------------------


def _classes(impl: str) -> tuple[Any, Any]:
    if impl == "ref":
        from streaming import StreamingDataLoader, StreamingDataset
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
        return StreamingDataset, StreamingDataLoader
    from mdsloader.dataloader import StreamingDataLoader
    from mdsloader.dataset import StreamingDataset

    return StreamingDataset, StreamingDataLoader


def _identity(batch: list[Any]) -> list[Any]:
    return batch


def _dataset(impl: str, spec: dict[str, Any]) -> Any:
    dataset_cls, _ = _classes(impl)
    kwargs: dict[str, Any] = {"batch_size": BATCH, "shuffle": True}
    if spec.get("remote"):
        kwargs.update(remote=spec["remote"], local=tempfile.mkdtemp(prefix=f"bench-{impl}-"))
    else:
        kwargs["local"] = spec["data"]
    return dataset_cls(**kwargs)


def run_child(impl: str, scenario: str, spec: dict[str, Any]) -> dict[str, Any]:
    _classes(impl)  # imports (torch for both) are not part of any measurement
    # Importing torch leaves about a million new objects that the first full garbage collection
    # walks (0.1 s here); collect once now so it cannot land inside either loader's timing.
    gc.collect()
    sampler = AnonSampler()
    t0 = time.perf_counter()
    ds = _dataset(impl, spec)
    built = time.perf_counter()
    result: dict[str, Any] = {}
    if scenario in ("warm", "cold"):
        n = sum(1 for _ in ds)
        result["rate"] = n / (time.perf_counter() - built)
    elif scenario == "loader2":
        _, loader_cls = _classes(impl)
        # The default collate (what training code uses) turns columns into tensors in the
        # workers, which is far cheaper to send to the main process than sample dicts.
        loader = loader_cls(ds, batch_size=BATCH, num_workers=2)
        cpu, start = _tree_cpu(), time.perf_counter()
        n = sum(len(b["a"]) for b in loader)
        result["rate"] = n / (time.perf_counter() - start)
        result["cpu_us"] = (_tree_cpu() - cpu) / n * 1e6
    elif scenario == "loader2_user":
        _, loader_cls = _classes(impl)
        # A user's own collate_fn returning the samples themselves (``lambda batch: batch``):
        # lists of sample dicts cross the workers' queue.
        loader = loader_cls(ds, batch_size=BATCH, num_workers=2, collate_fn=_identity)
        cpu, start = _tree_cpu(), time.perf_counter()
        n = sum(len(b) for b in loader)
        result["rate"] = n / (time.perf_counter() - start)
        result["cpu_us"] = (_tree_cpu() - cpu) / n * 1e6
    elif scenario == "random":
        import numpy as np

        ids = np.random.default_rng(1).integers(0, ds.size, spec["random"]).tolist()
        ds[ids[0]]
        start = time.perf_counter()
        for i in ids:
            ds[i]
        result["rate"] = len(ids) / (time.perf_counter() - start)
    elif scenario == "start":
        next(iter(ds))
        result["seconds"] = time.perf_counter() - t0
    elif scenario == "resume":
        _, loader_cls = _classes(impl)
        start = time.perf_counter()
        loader = loader_cls(ds, batch_size=BATCH, num_workers=0, collate_fn=_identity)
        loader.load_state_dict({"epoch": 0, "sample_in_epoch": ds.size // 2, **STATE_KEYS})
        next(iter(loader))
        result["seconds"] = time.perf_counter() - start
    result["peak_mib"] = _status_mib("VmHWM")
    result["anon_mib"] = sampler.stop()
    if spec.get("remote"):
        shutil.rmtree(ds.streams[0].local, ignore_errors=True)  # the cold run's cache
    return result


def _tree_cpu() -> float:
    """CPU seconds of this process and its reaped children (the epoch's DataLoader workers).

    On a machine shared with other work a short run's rate swings with the others' load; the
    CPU each sample costs swings far less, so the DataLoader rows report it as well.
    """
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class AnonSampler:
    """Peak anonymous (heap) memory, sampled every 10 ms.

    VmHWM also counts file pages of mmapped shards, i.e. page cache the kernel can drop at any
    time; our loader maps shards while the reference read()s them, so only anonymous memory
    compares like with like.
    """

    def __init__(self) -> None:
        import threading

        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _status_mib("RssAnon"))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _status_mib("RssAnon"))


def spawn(impl: str, scenario: str, spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps([impl, scenario, spec])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=os.environ.copy())
    if out.returncode:
        raise RuntimeError(f"{impl}/{scenario} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spawn_median(impl: str, scenario: str, spec: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Run a scenario ``repeat`` times in fresh processes: the median result, the highest peaks.

    A first-sample latency of tens of milliseconds in a fresh process swings by 2x from run to
    run here (page faults, CPU frequency), and 100,000 random reads by 20%, so one run says little.
    """
    runs = [spawn(impl, scenario, spec) for _ in range(repeat)]
    result = dict(runs[0])
    for key in ("seconds", "rate"):
        if key in result:
            result[key] = statistics.median(r[key] for r in runs)
    for key in ("peak_mib", "anon_mib"):
        result[key] = max(r[key] for r in runs)
    return result


# ---- S3 ------------------------------------------------------------------------------------


def start_s3(data: Path) -> tuple[Any, str]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
        S3_ENDPOINT_URL=endpoint,
    )  # fmt: skip
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="bench")
    for path in sorted(data.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), "bench", f"ds/{path.relative_to(data)}")
    return server, "s3://bench/ds"


# ---- report --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--big", type=int, default=10_000_000, help="samples of the tiny dataset")
    parser.add_argument("--random", type=int, default=100_000, help="random ds[i] reads")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "mds-bench")
    parser.add_argument("--skip", default="", help="comma-separated scenarios to skip")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, scenario, spec = json.loads(args.child)
        print(json.dumps(run_child(impl, scenario, spec)))
        return
    compile_loader()  # as a wheel install would: time code, not compilation
    full, tiny = ensure_data(args.data, args.samples, args.big)
    skip = set(filter(None, args.skip.split(",")))
    rows: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
    plan = [
        ("warm", "warm cache, in-process (samples/s)", {"data": str(full)}),
        ("loader2", "warm cache, DataLoader 2 workers; collate: ours mdsloader's fast_collate "
         "(batches identical to default_collate), tensors <= 512 KiB sent by value, not as "
         "shared memory; reference torch's default_collate (samples/s)",
         {"data": str(full)}),
        ("loader2_user", "warm cache, DataLoader 2 workers, user collate_fn returning the list "
         "of sample dicts (samples/s)", {"data": str(full)}),
        ("random", "random ds[i] (samples/s)", {"data": str(full), "random": args.random}),
        ("start", f"construct -> first sample, {args.samples:,} (s)", {"data": str(full)}),
        ("resume", f"load_state_dict mid-epoch -> first batch, {args.samples:,} (s)",
         {"data": str(full)}),
        ("start", f"construct -> first sample, {args.big:,} (s)", {"data": str(tiny)}),
        ("resume", f"load_state_dict mid-epoch -> first batch, {args.big:,} (s)",
         {"data": str(tiny)}),
    ]  # fmt: skip
    server = None
    if "cold" not in skip:
        server, remote = start_s3(full)
        plan.insert(2, ("cold", "cold from S3 on loopback, in-process (samples/s)",
                        {"remote": remote}))  # fmt: skip
    for scenario, label, spec in plan:
        if scenario in skip:
            continue
        repeat = REPEAT.get(scenario, 1)
        ours, ref = spawn_median("ours", scenario, spec, repeat), spawn_median(
            "ref", scenario, spec, repeat
        )
        rows.append((scenario, label, ours, ref))
    if server is not None:
        server.stop()
    print_table(rows, args.samples)


def print_table(rows: list[tuple[str, str, dict[str, Any], dict[str, Any]]], samples: int) -> None:
    print(f"Dataset: {samples:,} samples (5 columns, zstd:3, xxh64, 64 MiB shards), batch {BATCH}.")
    print()
    print(
        "| measure | ours | reference | ratio (higher is better for us) "
        "| peak anon MiB ours / ref | peak RSS incl. mapped files, ours / ref |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for _, label, ours, ref in rows:
        if "rate" in ours:
            value, base, ratio = ours["rate"], ref["rate"], ours["rate"] / ref["rate"]
            cells = f"{value:,.0f} | {base:,.0f} | {ratio:.1f}x"
        else:
            value, base = ours["seconds"], ref["seconds"]
            cells = f"{value:.3f} | {base:.3f} | {base / value:.1f}x"
        anon = f"{ours['anon_mib']:.0f} / {ref['anon_mib']:.0f}"
        print(f"| {label} | {cells} | {anon} | {ours['peak_mib']:.0f} / {ref['peak_mib']:.0f} |")
    cpu_rows = [(label, ours, ref) for _, label, ours, ref in rows if "cpu_us" in ours]
    if cpu_rows:
        print()
        print("CPU per sample of the whole process tree (main process and workers), the steadier")
        print("figure on a shared machine:")
        print()
        for label, ours, ref in cpu_rows:
            mine, theirs = ours["cpu_us"], ref["cpu_us"]
            name = label.removesuffix(" (samples/s)")
            print(f"- {name}: ours {mine:.1f} us, reference {theirs:.1f} us, {theirs / mine:.1f}x")


if __name__ == "__main__":
    main()
