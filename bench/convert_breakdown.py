"""Where a conversion's CPU goes: the floor that any exact Spark -> MDS converter pays here.

On the bench/convert.py rows (local[2]) it measures, as JVM and Python-worker CPU seconds read
from /proc (best of ``--repeat``):

* Spark's cached-row -> Arrow transfer into Python workers that do nothing with the batches (the
  cached frame's floor: ``mapInArrow``);
* pyarrow reading the Parquet table's files in Python workers that do nothing with the batches
  (the Parquet table's floor: the direct read path);
* the separate Spark null-count scan that conversions ran before issue 13 (now nulls are counted
  while encoding, so it is no longer paid);
* our whole conversion (``dataframe_to_mds``) of the cached frame and of the Parquet table;

then the CPU of zstd level 3 (multi-threaded mode, as the reference's python-zstd) and xxh64 over
the raw shards that conversion produced. Read plus compression summed is the floor.

    python bench/convert_breakdown.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from convert import build_session, make_frame, write_table  # bench/convert.py


def cpu_by_kind() -> dict[str, float]:
    """CPU seconds so far of this process's JVM and of its other Python descendants (Spark's
    workers); processes outside this bench's process tree (other users' JVMs) are not counted."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent, seconds, commands = {}, {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline") as fh:
                commands[int(entry)] = fh.read().split("\0")[0]
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        seconds[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in mine]
        mine.update(frontier)
    out = {"java": 0.0, "python": 0.0}
    for pid in mine - {os.getpid()}:
        kind = "java" if "java" in commands.get(pid, "") else "python"
        out[kind] += seconds.get(pid, 0.0)
    return out


def measure(fn: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """(wall, JVM CPU, worker CPU) of the run with the least CPU."""
    runs = []
    for _ in range(repeat):
        before, start = cpu_by_kind(), time.perf_counter()
        fn()
        wall, after = time.perf_counter() - start, cpu_by_kind()
        runs.append((wall, after["java"] - before["java"], after["python"] - before["python"]))
    return min(runs, key=lambda r: r[1] + r[2])


def _discard(batches: Iterator) -> Iterator:
    import pyarrow as pa

    rows = sum(batch.num_rows for batch in batches)
    yield pa.RecordBatch.from_pydict({"n": [rows]})


def _read(path: str) -> int:
    import pyarrow.parquet as pq

    return sum(batch.num_rows for batch in pq.ParquetFile(path).iter_batches(batch_size=65536))


def compression_cpu(dataset: Path) -> tuple[int, float, float]:
    """(raw bytes, zstd:3 CPU s, xxh64 CPU s) over the dataset's shards."""
    import xxhash
    import zstandard

    raws = [
        zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
        for path in sorted(dataset.rglob("*.zstd"))
    ]
    compressor = zstandard.ZstdCompressor(level=3, threads=-1)
    start = time.process_time()
    for raw in raws:
        compressor.compress(raw)
    zstd_cpu = time.process_time() - start
    start = time.process_time()
    for raw in raws:
        xxhash.xxh64(raw).digest()
    return sum(map(len, raws)), zstd_cpu, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from worker.convert.nulls import count_nulls
    from worker.convert.pipeline import dataframe_to_mds
    from worker.convert.schema import plan_columns, projection

    spark = build_session("local[2]")
    spark.sparkContext.setLogLevel("ERROR")
    root = Path(tempfile.mkdtemp(prefix="bench-breakdown-"))
    table_path = write_table(root / "table", args.rows)
    df = make_frame(spark, args.rows, table_path)
    table = spark.read.parquet(str(table_path))
    files = sorted(str(p) for p in table_path.glob("*.parquet"))
    plans = plan_columns(df.schema, None)
    projected = df.select(*projection(plans))
    runs = iter(range(1_000_000))

    def convert(source) -> None:
        dataframe_to_mds(source, str(root / f"run{next(runs)}"), compression="zstd:3",
                         hashes=("xxh64",), size_limit=1 << 26)

    try:
        rows = [
            ("Arrow transfer of the cached frame to idle Python workers", measure(
                lambda: projected.mapInArrow(_discard, "n long").collect(), args.repeat)),
            ("pyarrow read of the Parquet files in Python workers", measure(
                lambda: spark.sparkContext.parallelize(files, len(files)).map(_read).collect(),
                args.repeat)),
            ("Spark null-count scan (no longer run)", measure(
                lambda: count_nulls(df, plans), args.repeat)),
            ("whole conversion of the cached frame (ours)", measure(
                lambda: convert(df), args.repeat)),
            ("whole conversion of the Parquet table (ours, direct)", measure(
                lambda: convert(table), args.repeat)),
        ]
        raw, zstd_cpu, hash_cpu = compression_cpu(root / "run0")
    finally:
        shutil.rmtree(root, ignore_errors=True)
        spark.stop()
    print(f"\n{args.rows:,} rows, local[2]; CPU seconds, best of {args.repeat}\n")
    print("| step | wall s | JVM CPU s | Python workers CPU s |")
    print("|---|---:|---:|---:|")
    for name, (wall, java, python) in rows:
        print(f"| {name} | {wall:.2f} | {java:.2f} | {python:.2f} |")
    print(f"\nzstd:3 over {raw / 1e6:.0f} MB of shards: {zstd_cpu:.2f} CPU s; "
          f"xxh64: {hash_cpu:.2f} CPU s")
    (_, (_, t_java, t_py)), (_, (_, r_java, r_py)) = rows[0], rows[1]
    for name, read in (("cached frame", t_java + t_py), ("Parquet table", r_java + r_py)):
        floor = read + zstd_cpu
        print(f"floor of the {name} (read + zstd): {floor:.1f} CPU s = {floor / 2:.2f} s "
              "on 2 cores")

if __name__ == "__main__":
    main()
