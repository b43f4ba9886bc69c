"""Plain value objects of a conversion (no pyspark import): what to convert, progress, result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

NullPolicy = Literal["error", "skip", "fill"]
Mode = Literal["error", "overwrite", "append"]


@dataclass(frozen=True, slots=True)
class ConversionSpec:
    """One conversion: a Spark table to an MDS dataset at ``target``.

    ``columns`` selects columns and optionally overrides encodings (``None`` value = infer);
    ``None`` means every column with inferred encodings. ``fill_values`` is used when
    ``null_policy="fill"``. ``run_id`` names the directory unique to this job run, so a redelivered
    job overwrites its own files (see design.md section 4).
    """

    source_table: str
    target: str
    compression: str | None = "zstd"
    hashes: tuple[str, ...] = ("xxh64",)
    size_limit: int = 1 << 26
    columns: dict[str, str | None] | None = None
    partitions: int | None = None
    mode: Mode = "error"
    null_policy: NullPolicy = "error"
    fill_values: dict[str, object] = field(default_factory=dict)
    run_id: str | None = None
    # Row filter conditions (worker.convert.rowspec.Condition), all of which must hold.
    filter: tuple[Any, ...] = ()
    # worker.convert.rowspec.Splits: one dataset per part under <target>/<part name>/.
    splits: Any = None


@dataclass(frozen=True, slots=True)
class ConversionProgress:
    """A progress snapshot, reported about once a second while Spark runs."""

    rows_written: int = 0
    shards_written: int = 0
    bytes_written: int = 0
    partitions_done: int = 0
    partitions_total: int = 0
    # "starting_spark", "planning", "writing" or "publishing"; None before the conversion began.
    phase: str | None = None
    # "direct" (executors read the table's files with pyarrow) or "spark" (mapInArrow).
    read_path: str | None = None


@dataclass(frozen=True, slots=True)
class ConversionResult:
    """What a finished conversion published."""

    index_url: str
    samples: int
    shards: int
    raw_bytes: int
    zip_bytes: int
    columns: dict[str, str]
    read_path: str | None = None  # "direct" or "spark", see ConversionProgress
    # mode="append": what this run added (samples and shards are the new totals).
    added_samples: int | None = None
    added_shards: int | None = None
    # With splits: each part's own result (index_url, samples, shards, ...); the fields above
    # are then totals and index_url is the target root that holds the parts.
    splits: dict[str, dict[str, Any]] | None = None
    read_path_reason: str | None = None  # why that path (why not the direct one)
