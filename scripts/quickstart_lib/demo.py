"""The demo table: a path-based parquet table of synthetic rows, written without Spark.

A path-based table (``parquet.`/dir` ``) needs no metastore, so seeding it never contends with the
worker's single-JVM Derby metastore, and pyarrow writes a million rows in seconds where a second
Spark JVM would take longer just to start. Every value is a pure function of the row id (text
aside), so the read-back can check each sample, not just count them.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

EMBEDDING_DIM = 64
ROWS_PER_FILE = 125_000
# Small row groups (~4 MB) let Spark split the files into as many partitions as it has cores.
ROW_GROUP_ROWS = 16_384
MARKER = "_quickstart.json"  # Spark skips files whose names start with "_"
FORMAT_VERSION = 3
_MASK32 = np.uint64(0xFFFFFFFF)
_VOCABULARY = (
    "spark shard stream tensor batch epoch index column table parquet arrow bucket object "
    "worker queue token train model sample cache node rank seed shuffle block prefix zstd "
    "the a of to and in is on for with as by at from that this it be are was were will "
    "quick brown fox jumps over lazy dog river mountain cloud rain sun moon star ocean "
    "data engineer pipeline metric latency throughput storage network memory disk"
)
_WORDS = _VOCABULARY.split(" ")


@dataclass(frozen=True, slots=True)
class DemoTable:
    """Where the demo table lives and how Spark names it."""

    path: Path
    rows: int

    @property
    def source_table(self) -> str:
        return f"parquet.`{self.path}`"


def embedding_for(ids: np.ndarray) -> np.ndarray:
    """The (n, 64) float32 embedding of each row id, uniform in [-1, 1).

    A 32-bit integer hash of (id, dimension), so that neighbouring rows look unrelated and
    compress like real embeddings (barely), yet any reader can recompute every value.
    """
    x = ids.astype(np.uint64)[:, None] * np.uint64(0x9E3779B1)
    x = (x + np.arange(EMBEDDING_DIM, dtype=np.uint64) * np.uint64(0x85EBCA77)) & _MASK32
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x2C1B3C6D)) & _MASK32
    x ^= x >> np.uint64(12)
    return (x.astype(np.float64) / 2.0**31 - 1.0).astype(np.float32)


def label_for(ids: np.ndarray) -> np.ndarray:
    """An int label in 0..9 per row id (a multiplicative hash, so labels look mixed)."""
    return ((ids.astype(np.int64) * 2654435761) % (1 << 32) % 10).astype(np.int32)


def _texts(rng: np.random.Generator, rows: int) -> pa.Array:
    """``rows`` sentences of 2 to 40 words, built as one Arrow buffer (no Python loop per row)."""
    vocabulary = np.frombuffer("".join(w + " " for w in _WORDS).encode(), dtype=np.uint8)
    word_lengths = np.array([len(w) + 1 for w in _WORDS], dtype=np.int64)
    word_starts = np.concatenate(([0], np.cumsum(word_lengths)[:-1]))
    words_per_row = rng.integers(2, 41, rows)
    picks = rng.integers(0, len(_WORDS), int(words_per_row.sum()))
    lengths = word_lengths[picks]
    ends = np.cumsum(lengths)
    # Byte j of the pool is byte (j - start of its word in the pool) of that word in the vocabulary.
    shift = np.repeat(word_starts[picks] - (ends - lengths), lengths)
    pool = vocabulary[shift + np.arange(int(ends[-1]))]
    # A row ends after its last word's trailing space; offsets cut the pool between rows.
    offsets = np.concatenate(([0], ends[np.cumsum(words_per_row) - 1])).astype(np.int32)
    array = pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(pool))
    return pc.utf8_rtrim_whitespace(array)


def _chunk(first: int, rows: int) -> pa.Table:
    ids = np.arange(first, first + rows, dtype=np.int64)
    rng = np.random.default_rng(first)
    flat = pa.array(embedding_for(ids).ravel())
    offsets = pa.array(np.arange(0, (rows + 1) * EMBEDDING_DIM, EMBEDDING_DIM, dtype=np.int32))
    return pa.table({
        "id": pa.array(ids),
        "text": _texts(rng, rows),
        "embedding": pa.ListArray.from_arrays(offsets, flat),
        "label": pa.array(label_for(ids)),
    })  # fmt: skip


def _is_current(path: Path, rows: int) -> bool:
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"rows": rows, "version": FORMAT_VERSION}


def seed_demo_table(path: Path, rows: int) -> tuple[DemoTable, bool]:
    """Write the demo table under ``path`` unless an identical one is there already.

    Returns the table and whether it was written now. The files are written to a sibling
    directory and renamed into place, so an interrupted seed never leaves a partial table.
    """
    if rows < 1:
        raise ValueError("the demo table needs at least one row")
    table = DemoTable(path.resolve(), rows)
    if _is_current(table.path, rows):
        return table, False
    staging = table.path.with_name(table.path.name + ".seeding")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = max(1, math.ceil(rows / ROWS_PER_FILE))
    per_file = math.ceil(rows / files)
    for number, first in enumerate(range(0, rows, per_file)):
        chunk = _chunk(first, min(per_file, rows - first))
        pq.write_table(chunk, staging / f"part-{number:05d}.parquet", row_group_size=ROW_GROUP_ROWS)
    (staging / MARKER).write_text(json.dumps({"rows": rows, "version": FORMAT_VERSION}))
    shutil.rmtree(table.path, ignore_errors=True)
    staging.rename(table.path)
    return table, True
