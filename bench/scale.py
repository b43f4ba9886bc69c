"""Scale benchmark: start and resume at 10^7 to 10^9 samples, ours against mosaicml-streaming.

The dataset is tiny per sample and huge in count: one shard of 100,000 ``int64`` samples is
written once with our MDSWriter, then hard-linked as ``shard.NNNNN.mds`` as many times as needed
(10,000 links for 10^9 samples), with an ``index.json`` listing every link under its own name
(identical bytes, so identical sizes and digests). Only the index and the plan grow, which is
what this benchmark is about.

Every case runs in a fresh child process (its own session, so its whole process tree is known)
over ``StreamingDataset(local=..., shuffle=True, batch_size=256)`` with every other setting at
its default, fed through the loader's ``StreamingDataLoader(num_workers=2)``, one rank:

* ``start``: constructing the dataset -> the first batch out of the DataLoader;
* ``resume``: constructing the dataset, ``load_state_dict`` at 50% of epoch 0 -> the first batch;
* ``resume (plan cache)``: ours only, the resume case run twice in fresh processes on the same
  temporary directory; the second one is reported (a node-local plan cache, where the loader
  keeps one under the temporary directory, is then warm).

Memory, sampled by this (parent) process every 0.1 s over the child's session, so the sampling
costs the measured processes nothing:

* peak RSS per process: ``VmHWM`` of the main process and the largest of the DataLoader
  workers' (the child also reports its own and its workers' final ``VmHWM`` after the first
  batch, so a short case is not missed between two samples);
* node total: the peak over time of ``sum(Pss_Anon) + max(sum(Pss_Shmem), new /dev/shm bytes)``
  over the process tree (``smaps_rollup``), i.e. heap plus shared memory, each page counted once.
  File pages of mapped shards (page cache the kernel can drop) are left out.

Caps: each case gets ``--timeout`` seconds (600); the reference's processes run under
``RLIMIT_AS`` (``--ref-mem-cap``, 20 GiB by default, lowered to 80% of the memory available
when the case starts), so that it fails with the ``MemoryError`` it would hit on a smaller node
rather than swapping the machine. As a guard for a shared machine, any case whose process tree
holds more than that cap in RSS, or that leaves the node under 1 GiB available, is killed and
reported as such. A case that does not finish is reported as what it reached: the phase, the
time and the error.

Cases up to 10^7 samples take well under a second for us and vary by tens of percent between
runs on a small machine: each is run ``--repeat`` times (3) and the median time reported (the
memory figures are the largest of the runs).

Usage: ``python bench/scale.py [--sizes 1e7,1e8,1e9] [--quick] [--repeat N] [--data DIR]``
(``--quick``: 10^7 and 10^8 only, no plan-cache row).
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bytecode import compile_loader  # bench/ is the script directory

ROOT = Path(__file__).resolve().parent.parent
BATCH = 256
WORKERS = 2
PER_SHARD = 100_000
STATE_KEYS = {"num_canonical_nodes": 1, "shuffle_seed": 9176, "initial_physical_nodes": 1}
GIB = 1 << 30
_POLL = 0.1
_MIN_AVAILABLE = 1 * GIB  # kill a case that leaves the node less than this


# ---- data ----------------------------------------------------------------------------------


def write_template(out: Path, per_shard: int) -> dict[str, Any]:
    """Write one shard of ``per_shard`` int64 samples; return its index entry (JSON object)."""
    import numpy as np

    from mdsloader.mds.writer import MDSWriter

    with MDSWriter(columns={"id": "int64"}, out=str(out), hashes=["xxh64"], exist_ok=True) as w:
        w.write_batch({"id": np.arange(per_shard, dtype=np.int64)})
    shards = json.loads((out / "index.json").read_bytes())["shards"]
    if len(shards) != 1:
        raise RuntimeError(f"template wrote {len(shards)} shards, expected 1")
    return dict(shards[0])


def make_dataset(out: Path, num_shards: int, per_shard: int = PER_SHARD) -> Path:
    """A dataset of ``num_shards`` hard links of one shard file, with a matching ``index.json``.

    Reused when its index already exists. Past the filesystem's link limit, the file is copied
    once and the copy linked on. Shard names follow the writer's ``shard.{n:05}.mds``.
    """
    if (out / "index.json").exists():
        return out
    template_dir = out.parent / f"template-{per_shard}"
    if not (template_dir / "index.json").exists():
        write_template(template_dir, per_shard)
    entry = json.loads((template_dir / "index.json").read_bytes())["shards"][0]
    source = template_dir / entry["raw_data"]["basename"]
    staging = out.with_name(out.name + ".part")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shards = []
    for number in range(num_shards):
        name = f"shard.{number:05}.mds"
        try:
            os.link(source, staging / name)
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                raise
            # ext4 allows 65,000 links per inode: start a new one (same bytes).
            shutil.copyfile(source, staging / name)
            source = staging / name
        shards.append({**entry, "raw_data": {**entry["raw_data"], "basename": name}})
    # The writer's exact form: one line, sorted keys (see ../shared/mds-format.md, 1.2).
    (staging / "index.json").write_text(
        json.dumps({"shards": shards, "version": 2}, sort_keys=True)
    )
    os.replace(staging, out)
    return out


# ---- child ---------------------------------------------------------------------------------


def _classes(impl: str) -> tuple[Any, Any]:
    if impl == "ref":
        from streaming import StreamingDataLoader, StreamingDataset
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()
        return StreamingDataset, StreamingDataLoader
    from mdsloader import StreamingDataLoader, StreamingDataset

    return StreamingDataset, StreamingDataLoader


def _status_kib(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _children(parent: int) -> list[int]:
    """Live child processes of ``parent``."""
    return _pids_where(1, parent)


def _pids_where(field: int, value: int) -> list[int]:
    """Processes whose ``/proc/<pid>/stat`` field ``field`` (1 ppid, 3 session) is ``value``."""
    pids = []
    for entry in os.listdir("/proc"):
        fields = _stat_fields(entry) if entry.isdigit() else None
        if fields is not None and int(fields[field]) == value:
            pids.append(int(entry))
    return pids


def _stat_fields(pid: str) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, session, ..."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rindex(")") + 2 :].split()


def _mark(phase: str, t0: float) -> None:
    """Tell the parent how far the case got (read back when it is killed or fails)."""
    print(f"@phase {phase} {time.perf_counter() - t0:.3f}", file=sys.stderr, flush=True)


def run_child(impl: str, scenario: str, data: str, size: int, mem_cap: int) -> dict[str, Any]:
    if mem_cap:
        # Inherited by the forked DataLoader workers: each process is capped on its own.
        resource.setrlimit(resource.RLIMIT_AS, (mem_cap, mem_cap))
    dataset_cls, loader_cls = _classes(impl)  # imports (torch for both) are not measured
    # Importing torch leaves about a million new objects that the first full garbage collection
    # walks (0.1 s here); collect once now so it cannot land inside either loader's timing.
    gc.collect()
    t0 = time.perf_counter()
    ds = dataset_cls(local=data, shuffle=True, batch_size=BATCH)
    _mark("constructed", t0)
    loader = loader_cls(ds, batch_size=BATCH, num_workers=WORKERS)
    if scenario == "resume":
        state = {"epoch": 0, "sample_in_epoch": size // 2, **STATE_KEYS}
        loader.load_state_dict(state)
        _mark("state loaded", t0)
    batches = iter(loader)
    batch = next(batches)
    seconds = time.perf_counter() - t0
    _mark("first batch", t0)
    first = batch["id"] if isinstance(batch, dict) else batch
    # The DataLoader's worker processes: this process's children (the loaders may wrap the
    # torch iterator, so its ``_workers`` list is not always reachable).
    workers = _children(os.getpid())
    result = {
        "seconds": seconds,
        "batch_len": len(first),
        "main_hwm_kib": _status_kib("self", "VmHWM"),
        "worker_hwm_kib": [_status_kib(pid, "VmHWM") for pid in workers],
    }
    del batches  # shuts the workers down
    return result


# ---- parent: spawn, sample memory, cap -----------------------------------------------------


def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (the child and every process it started)."""
    return _pids_where(3, sid)


def _rollup_kib(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("Pss_Anon", "Pss_Shmem", "Rss"):
                    values[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return values


def _shm_bytes(baseline: set[str]) -> int:
    """Bytes held by /dev/shm files that appeared since ``baseline`` was taken."""
    total = 0
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:
        return 0
    for name in names:
        if name in baseline:
            continue
        try:
            total += os.stat(f"/dev/shm/{name}").st_blocks * 512
        except FileNotFoundError:
            continue
    return total


def _available() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


class TreeSampler:
    """Samples a child session's memory from outside it, and kills it past the guards."""

    def __init__(self, proc: subprocess.Popen[str], rss_cap: int) -> None:
        self.proc = proc
        self.rss_cap = rss_cap
        self.hwm_kib: dict[int, int] = {}
        self.node_peak = 0
        self.killed: str | None = None
        self._shm_base = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(_POLL):
            self.sample()

    def sample(self) -> None:
        pids = _session_pids(self.proc.pid)
        anon = shmem = rss = 0
        for pid in pids:
            self.hwm_kib[pid] = max(self.hwm_kib.get(pid, 0), _status_kib(pid, "VmHWM"))
            rollup = _rollup_kib(pid)
            anon += rollup.get("Pss_Anon", 0) * 1024
            shmem += rollup.get("Pss_Shmem", 0) * 1024
            rss += rollup.get("Rss", 0) * 1024
        self.node_peak = max(self.node_peak, anon + max(shmem, _shm_bytes(self._shm_base)))
        if self.killed is None and (rss > self.rss_cap or _available() < _MIN_AVAILABLE):
            why = "tree RSS over the cap" if rss > self.rss_cap else "node memory nearly exhausted"
            self.killed = f"killed by the bench: {why} ({rss / GIB:.1f} GiB RSS)"
            kill_session(self.proc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def kill_session(proc: subprocess.Popen[str]) -> None:
    """SIGKILL the child's session (this bench's child and the processes it started, only)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def spawn(
    impl: str, scenario: str, data: Path, size: int, *, timeout: float, mem_cap: int, tmp: Path
) -> dict[str, Any]:
    """Run one case in a fresh child session; the child's result or what it reached."""
    spec = json.dumps([impl, scenario, str(data), size, mem_cap if impl == "ref" else 0])
    env = {**os.environ, "TMPDIR": str(tmp)}  # per-case caches under a fresh temp dir
    cmd = [sys.executable, __file__, "--child", spec]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    sampler = TreeSampler(proc, rss_cap=mem_cap)
    started = time.perf_counter()
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_session(proc)
        out, err = proc.communicate()
        timed_out = True
    elapsed = time.perf_counter() - started
    sampler.stop()
    kill_session(proc)  # stray workers of a child that died, if any
    others = [kib for pid, kib in sampler.hwm_kib.items() if pid != proc.pid]
    result: dict[str, Any] = {
        "main_peak_kib": sampler.hwm_kib.get(proc.pid, 0),
        "worker_peak_kib": max(others, default=0),
        "node_peak": sampler.node_peak,
    }
    lines = [line for line in out.strip().splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        result.update(json.loads(lines[-1]))
        result["main_peak_kib"] = max(result["main_peak_kib"], result["main_hwm_kib"])
        result["worker_peak_kib"] = max(result["worker_peak_kib"], *result["worker_hwm_kib"], 0)
        return result
    phases = [line.split() for line in err.splitlines() if line.startswith("@phase ")]
    reached = (
        f"{' '.join(phases[-1][1:-1])} at {float(phases[-1][-1]):.1f}s"
        if phases
        else "before construction"
    )
    if timed_out:
        error = f"timeout after {timeout:.0f}s"
    elif sampler.killed:
        error = sampler.killed
    else:
        error = _last_error(err) or f"exit status {proc.returncode}"
    result.update(error=error, reached=reached, elapsed=elapsed)
    if impl == "ref":
        _clean_ref_shm(env)
    return result


def _last_error(stderr: str) -> str:
    """The exception line of a traceback (``MemoryError: ...``), shortened."""
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if (
            line
            and not line.startswith(("@phase", "File ", "^", "~"))
            and ("Error" in line or "Exception" in line or "Killed" in line)
        ):
            return line[:160]
    return ""


def _clean_ref_shm(env: dict[str, str]) -> None:
    """Unlink the reference's leftover shared memory after a killed run (its own cleanup)."""
    code = "from streaming.base.util import clean_stale_shared_memory as c; c()"
    subprocess.run([sys.executable, "-c", code], env=env, check=False, capture_output=True)


# ---- report --------------------------------------------------------------------------------


def run_case(
    impl: str, scenario: str, data: Path, size: int, args: argparse.Namespace
) -> dict[str, Any]:
    cap = min(args.ref_mem_cap, int(0.8 * _available()))
    tmp = Path(tempfile.mkdtemp(prefix=f"scale-{impl}-{scenario}-"))
    if impl == "ours":
        # Our node-local plan cache lives beside the dataset (with the lock files), not under
        # TMPDIR: every case starts without it; the plan-cache case fills it in its first run.
        from mdsloader.stream import lock_dir_for

        shutil.rmtree(lock_dir_for(data) / "plans", ignore_errors=True)
    try:
        args.caps_used.append(cap)
        kwargs = {"timeout": args.timeout, "mem_cap": cap, "tmp": tmp}
        if scenario == "resume-cached":
            first = spawn(impl, "resume", data, size, **kwargs)
            if "error" in first:
                first["reached"] = "first (cache-filling) run: " + first["reached"]
                return first
            return spawn(impl, "resume", data, size, **kwargs)
        return spawn(impl, scenario, data, size, **kwargs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_repeated(impl: str, scenario: str, data: Path, size: int, args: argparse.Namespace,
                 runs: int) -> dict[str, Any]:
    """``runs`` fresh runs of a case: the median time, the largest memory figures.

    Sub-second cases on a two-core machine vary by tens of percent from run to run; the median
    of a few is what a user would see typically.
    """
    results = []
    for _ in range(runs):
        result = run_case(impl, scenario, data, size, args)
        if "error" in result:
            return result
        results.append(result)
    results.sort(key=lambda result: result["seconds"])
    median = dict(results[len(results) // 2])
    for key in ("main_peak_kib", "worker_peak_kib", "node_peak"):
        median[key] = max(result[key] for result in results)
    median["all_seconds"] = [round(result["seconds"], 3) for result in results]
    return median


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    if "error" in result:
        return f"not reached ({result['error']}; got to {result['reached']})"
    return f"{result['seconds']:.2f} s"


def _mem(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    main, worker = result["main_peak_kib"] / 1024, result["worker_peak_kib"] / 1024
    return f"{main:,.0f} / {worker:,.0f} / {result['node_peak'] / (1 << 20):,.0f}"


def _ratio(ours: dict[str, Any] | None, ref: dict[str, Any] | None) -> str:
    if not ours or "error" in ours:
        return "-"
    if not ref:
        return "-"
    if "error" in ref:
        return f"> {ref['elapsed'] / ours['seconds']:.0f}x (ref failed)"
    return f"{ref['seconds'] / ours['seconds']:.1f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e7,1e8,1e9", help="comma-separated sample counts")
    parser.add_argument("--quick", action="store_true", help="10^7 and 10^8, no plan-cache row")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "mds-scale")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case")
    parser.add_argument("--ref-mem-cap", type=float, default=20, help="GiB, RLIMIT_AS (reference)")
    parser.add_argument("--impls", default="ours,ref", help="which loaders to run")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per case up to 10^7 samples (median reported)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, scenario, data, size, mem_cap = json.loads(args.child)
        print(json.dumps(run_child(impl, scenario, data, size, mem_cap)), flush=True)
        return
    compile_loader()  # as a wheel install would: time code, not compilation
    args.ref_mem_cap = int(args.ref_mem_cap * GIB)
    args.caps_used = []
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    if args.quick:
        sizes = [s for s in sizes if s <= 10**8]
    impls = args.impls.split(",")
    scenarios = [
        ("start", "construct -> first batch"),
        ("resume", "load_state_dict 50% -> first batch"),
    ]
    if not args.quick:
        scenarios.append(("resume-cached", "resume (plan cache), 2nd fresh process"))
    rows = []
    for size in sizes:
        shards = -(-size // PER_SHARD)
        t0 = time.perf_counter()
        data = make_dataset(args.data / f"n{shards * PER_SHARD}", shards)
        ready = time.perf_counter() - t0
        print(f"<!-- dataset {data} ({shards:,} shards) ready in {ready:.1f}s -->", file=sys.stderr)
        for scenario, label in scenarios:
            results: dict[str, dict[str, Any] | None] = {}
            for impl in ("ours", "ref"):
                # The reference has no plan cache: its second resume is its first one again.
                skip = impl not in impls or (impl == "ref" and scenario == "resume-cached")
                runs = args.repeat if size <= 10**7 else 1
                results[impl] = None if skip else run_repeated(impl, scenario, data, size, args,
                                                               runs)
                print(f"<!-- {size:.0e} {scenario} {impl}: {results[impl]} -->", file=sys.stderr)
            rows.append((size, label, results["ours"], results["ref"]))
    print_table(rows, args)


def print_table(rows: list[tuple[int, str, Any, Any]], args: argparse.Namespace) -> None:
    print(
        f"One node, 1 rank x {WORKERS} workers, shuffle=True (py1e), batch {BATCH}, default "
        f"settings; {PER_SHARD:,} int64 samples per shard; cap {args.timeout:.0f} s per case, "
        f"reference under RLIMIT_AS <= {min(args.caps_used, default=0) / GIB:.1f} GiB (the "
        f"smaller of --ref-mem-cap and 80% of the memory available); any case over that in "
        f"RSS is killed."
    )
    print()
    print(
        "| samples | measure | ours | reference | speed-up | peak RSS main / worker, node "
        "total (MiB), ours | same, reference |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for size, label, ours, ref in rows:
        print(
            f"| {size:.0e} | {label} | {_cell(ours)} | {_cell(ref)} | {_ratio(ours, ref)} "
            f"| {_mem(ours)} | {_mem(ref)} |"
        )


if __name__ == "__main__":
    main()
