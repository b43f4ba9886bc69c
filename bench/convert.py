"""Benchmark: Spark -> MDS, mosaicml-streaming's ``dataframe_to_mds`` against ours.

The rows are as incompressible as real training data: an int64 id, a random int32, text of
8-30 words (about 140 characters) from a Zipf-distributed vocabulary (the entropy of prose),
64 random float32 (an embedding) and 200-1000 random bytes (an encoded image). They are written
once as a Parquet table of 8 files (pyarrow, row groups of 65,536 rows), then converted on one
``local[2]`` session, with zstd:3, xxh64 and 64 MiB shards, to local directories:

* the Parquet table, ``spark.read.parquet(...)``: the reference, ours (pyarrow on the executors,
  the direct read path) and ours forced through ``mapInArrow`` (the path of every other source);
* the same rows cached in memory (``.cache()``), as before: the reference and ours.

Every converter first converts a table of a fifth of the size once (a warm session, as in a
long-lived worker). Prints a markdown table, the compression ratio of the shards and whether
every output is byte-identical.

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
FILES, ROW_GROUP = 8, 65_536
_VOCABULARY_SIZE = 20_000


def build_session(master: str):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master).appName("bench-convert")
        .config("spark.driver.bindAddress", "127.0.0.1").config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false").config("spark.driver.memory", "4g")
        .config("spark.sql.shuffle.partitions", "8").getOrCreate()
    )


def write_table(path: Path, rows: int, seed: int = 0) -> Path:
    """The bench rows as a Parquet table of ``FILES`` files (deterministic per seed)."""
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    bounds = [rows * i // FILES for i in range(FILES + 1)]
    for i in range(FILES):
        chunk = _chunk(bounds[i], bounds[i + 1] - bounds[i], seed * 1000 + i)
        pq.write_table(chunk, path / f"part-{i:05d}.parquet", row_group_size=ROW_GROUP)
    return path


def make_frame(spark, rows: int, table: Path | None = None):
    """The bench rows cached in memory, 8 partitions: ``table`` (written if None) cached."""
    if table is None:
        table = write_table(Path(tempfile.mkdtemp(prefix="bench-frame-")) / "t", rows)
    df = spark.read.parquet(str(table)).cache()
    df.count()
    return df


def _read_table(spark, rows: int, table: Path):
    return spark.read.parquet(str(table))


def _chunk(first: int, rows: int, seed: int):
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    emb = rng.random(rows * 64, dtype=np.float32)
    blob_lengths = rng.integers(200, 1001, rows)
    blobs = rng.integers(0, 256, int(blob_lengths.sum()), dtype=np.uint8)
    return pa.table({
        "id": pa.array(np.arange(first, first + rows, dtype=np.int64)),
        "small": pa.array(rng.integers(-(2**31), 2**31, rows, dtype=np.int64).astype(np.int32)),
        "text": _texts(rng, rows),
        "emb": pa.ListArray.from_arrays(pa.array(np.arange(rows + 1, dtype=np.int32) * 64),
                                        pa.array(emb)),
        "blob": pa.Array.from_buffers(pa.binary(), rows, [None, pa.py_buffer(
            np.concatenate([[0], np.cumsum(blob_lengths)]).astype(np.int32)
        ), pa.py_buffer(blobs)]),
    })


def _texts(rng, rows: int):
    """Sentences of 8-30 words from a Zipf-distributed vocabulary of random lowercase words."""
    import numpy as np
    import pyarrow as pa

    vocab_rng = np.random.default_rng(12345)  # the same vocabulary in every chunk
    word_lengths = vocab_rng.integers(2, 11, _VOCABULARY_SIZE) + 1  # + the space after it
    pool = vocab_rng.integers(97, 123, int(word_lengths.sum()), dtype=np.uint8)
    pool[np.cumsum(word_lengths) - 1] = 32
    starts = np.concatenate([[0], np.cumsum(word_lengths)[:-1]])
    counts = rng.integers(8, 31, rows)
    picks = np.minimum(rng.zipf(1.3, int(counts.sum())) - 1, _VOCABULARY_SIZE - 1)
    lengths = word_lengths[picks]
    ends = np.cumsum(lengths)
    index = np.repeat(starts[picks] - (ends - lengths), lengths) + np.arange(int(ends[-1]))
    row_ends = ends[np.cumsum(counts) - 1]
    offsets = np.concatenate([[0], row_ends]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), rows, [None, pa.py_buffer(offsets),
                                                     pa.py_buffer(pool[index])])


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


def run_ours(df, out: Path, read_path: str = "auto") -> str:
    from worker.convert.pipeline import dataframe_to_mds

    result = dataframe_to_mds(df, str(out), compression=COMPRESSION, hashes=tuple(HASHES),
                              size_limit=SIZE_LIMIT, read_path=read_path)  # type: ignore[arg-type]
    return f"{result.read_path}: {result.read_path_reason}"


def run_ours_spark_path(df, out: Path) -> str:
    return run_ours(df, out, read_path="spark")


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


def timed(case: str, name: str, fn, df, rows: int, out: Path) -> dict[str, object]:
    cpu, start = tree_cpu_seconds(), time.perf_counter()
    path = fn(df, out)
    seconds, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu
    raw, stored = dir_bytes(out)
    return {"case": case, "name": name, "path": path or "", "seconds": seconds,
            "rows_s": rows / seconds, "cpu": cpu, "raw": raw, "stored": stored, "out": out}


def _runners(skip_reference: bool) -> list[tuple[str, str, object]]:
    runners = [
        ("parquet", "mosaicml-streaming", run_reference),
        ("parquet", "mds-convert", run_ours),
        ("parquet", "mds-convert, mapInArrow", run_ours_spark_path),
        ("cached", "mosaicml-streaming", run_reference),
        ("cached", "mds-convert", run_ours),
    ]
    return [r for r in runners if not (skip_reference and r[1] == "mosaicml-streaming")]


def _print(results: list[dict], rows: int, master: str) -> None:
    print(f"\n{rows:,} rows, {master}, {COMPRESSION}, xxh64, 64 MiB shards\n")
    print("| source | converter | read path | seconds | rows/s | CPU s | speed-up | "
          "CPU speed-up |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        base = next((b for b in results if b["case"] == r["case"]
                     and b["name"] == "mosaicml-streaming"), None)
        speed = f"{base['seconds'] / r['seconds']:.2f}x" if base else "n/a"
        cpu = f"{base['cpu'] / r['cpu']:.2f}x" if base and r["cpu"] else "n/a"
        path = str(r["path"]).split(":")[0] or "-"
        print(f"| {r['case']} | {r['name']} | {path} | {r['seconds']:.1f} | "
              f"{r['rows_s']:,.0f} | {r['cpu']:.1f} | {speed} | {cpu} |")
    for r in results:
        if r["path"]:
            print(f"\n{r['case']}, {r['name']}: {r['path']}", end="")
    print()
    raw, stored = results[-1]["raw"], results[-1]["stored"]
    print(f"\nshards: {raw / 1e6:.0f} MB raw, {stored / 1e6:.0f} MB stored "
          f"(compression ratio {raw / stored:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--skip-reference", action="store_true")
    args = parser.parse_args()
    spark = build_session(args.master)
    spark.sparkContext.setLogLevel("ERROR")
    root = Path(tempfile.mkdtemp(prefix="bench-convert-"))
    runners = _runners(args.skip_reference)
    try:
        warm_rows = max(args.rows // 5, 10_000)
        tables = {"warm": write_table(root / "warm", warm_rows, seed=1),
                  "timed": write_table(root / "table", args.rows)}
        results = []
        # The Parquet case runs before anything is cached: a cached copy of the same table
        # would replace the file scan in Spark's plan (Spark's cache manager matches plans).
        for case in ("parquet", "cached"):
            load = make_frame if case == "cached" else _read_table
            warm = load(spark, warm_rows, tables["warm"])
            for _, name, fn in (r for r in runners if r[0] == case):
                fn(warm, root / f"warm-{case}-{name}")
            df = load(spark, args.rows, tables["timed"])
            results += [timed(case, name, fn, df, args.rows, root / f"{case}-{name}")
                        for c, name, fn in runners if c == case]
        digests = {tuple(_digests(r["out"])) for r in results}
    finally:
        shutil.rmtree(root, ignore_errors=True)
        spark.stop()
    _print(results, args.rows, args.master)
    print(f"every output byte-identical: {'yes' if len(digests) == 1 else 'no'}")


if __name__ == "__main__":
    main()
