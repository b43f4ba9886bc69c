"""Benchmark: Spark DataFrame -> MDS, mosaicml-streaming's ``dataframe_to_mds`` against ours.

The same cached DataFrame (int64, int32, a 50-150 character string, array<float> of 64 and
200-1000 random bytes; 8 partitions) is converted by both on one local[2] session, with zstd:3,
xxh64 and 64 MiB shards, to local directories, after both have converted a frame of a fifth of
the size once (a warm session, as in a long-lived worker). Prints a markdown table.

    python bench/convert.py --rows 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

COMPRESSION, HASHES, SIZE_LIMIT = "zstd:3", ["xxh64"], 1 << 26
COLUMNS = {"id": "int64", "small": "int32", "text": "str", "emb": "ndarray:float32",
           "blob": "bytes"}


def build_session(master: str):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master).appName("bench-convert")
        .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false").config("spark.driver.memory", "4g")
        .config("spark.sql.shuffle.partitions", "8").getOrCreate()
    )


def make_frame(spark, rows: int):
    """Generated in Spark (deterministic per id), cached and materialised before timing."""
    df = spark.range(0, rows, numPartitions=8).selectExpr(
        "id",
        "cast(id % 2147483647 as int) as small",
        "substr(repeat(sha2(cast(id as string), 256), 3), 1, 50 + cast(id % 101 as int)) as text",
        # if(...) keeps containsNull=true: the reference refuses non-nullable arrays (issue #870)
        "transform(sequence(1, 64), i -> if(i > 0, cast(id * 0.001 + i as float), null)) as emb",
        "substr(unhex(repeat(sha2(cast(id as string), 512), 16)), 1, 200 + cast(id % 801 as int))"
        " as blob",
    )
    df = df.cache()
    df.count()
    return df


def dir_bytes(path: Path) -> tuple[int, int]:
    """(raw, stored) shard bytes of a dataset, from its index."""
    from mdsloader.mds.index import read_index

    shards = read_index(path).shards
    return sum(s.raw_data.bytes for s in shards), sum(s.file.bytes for s in shards)


def _digests(path: Path) -> list[str]:
    """The sorted raw-shard digests of a dataset: equal lists mean byte-identical shards."""
    from mdsloader.mds.index import read_index

    return sorted(s.raw_data.hashes["xxh64"] for s in read_index(path).shards)


def run_reference(df, out: Path) -> None:
    from streaming.base.converters import dataframe_to_mds

    dataframe_to_mds(df, merge_index=True, mds_kwargs={
        "out": str(out), "columns": COLUMNS, "compression": COMPRESSION, "hashes": HASHES,
        "size_limit": SIZE_LIMIT,
    })


def run_ours(df, out: Path) -> None:
    from worker.convert.pipeline import dataframe_to_mds

    dataframe_to_mds(df, str(out), compression=COMPRESSION, hashes=tuple(HASHES),
                     size_limit=SIZE_LIMIT)


def tree_cpu_seconds() -> float:
    """CPU time of this process and all its descendants (JVM, Python workers), from /proc.

    Unlike wall time it barely depends on what else the machine runs, so its ratio is the
    fairer comparison on a shared machine. Linux only; 0.0 elsewhere.
    """
    if not os.path.isdir("/proc"):
        return 0.0
    parent, ticks = {}, {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    mine, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        children = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in mine]
        mine.update(children)
        frontier = children
    return sum(ticks.get(pid, 0) for pid in mine) / os.sysconf("SC_CLK_TCK")


def timed(name: str, fn, df, rows: int, root: Path) -> dict[str, object]:
    out = root / name
    cpu, start = tree_cpu_seconds(), time.perf_counter()
    fn(df, out)
    seconds, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu
    raw, stored = dir_bytes(out)
    return {"name": name, "seconds": seconds, "rows_s": rows / seconds, "cpu": cpu,
            "raw_mb_s": raw / seconds / 1e6, "stored_mb": stored / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    spark = build_session(args.master)
    spark.sparkContext.setLogLevel("ERROR")
    df = make_frame(spark, args.rows)
    root = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    runners = [("mds-convert", run_ours)]
    if not args.skip_reference:
        runners.insert(0, ("mosaicml-streaming", run_reference))
    try:
        # Warm up both on a smaller frame of the same shape: Python workers start and import
        # their modules once, and the JVM compiles the scan, transfer and aggregation code, as
        # in a long-lived worker process. Without it the first timed run pays ~1 s of that.
        warm = make_frame(spark, max(args.rows // 5, 10_000))
        for name, fn in runners:
            fn(warm, root / f"warm-{name}")
        warm.unpersist()
        results = [timed(name, fn, df, args.rows, root) for name, fn in runners]
        identical = len(runners) == 2 and _digests(root / runners[0][0]) == _digests(
            root / runners[1][0]
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
        spark.stop()
    print(f"\n{args.rows:,} rows, {args.master}, {COMPRESSION}, xxh64, 64 MiB shards\n")
    print("| converter | seconds | rows/s | raw MB/s | stored MB | speed-up | CPU s | "
          "CPU speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base, base_cpu = results[0]["seconds"], results[0]["cpu"]
    for r in results:
        cpu_ratio = f"{base_cpu / r['cpu']:.2f}x" if r["cpu"] else "n/a"
        print(f"| {r['name']} | {r['seconds']:.1f} | {r['rows_s']:,.0f} | {r['raw_mb_s']:.1f} | "
              f"{r['stored_mb']:.1f} | {base / r['seconds']:.2f}x | {r['cpu']:.1f} | {cpu_ratio} |")
    if len(results) == 2:
        print(f"\nshards byte-identical to the reference's: {'yes' if identical else 'no'}")


if __name__ == "__main__":
    main()
