"""Resolve a validated source name to a Spark DataFrame (catalog table or path-based table)."""

from __future__ import annotations

import threading
import uuid

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from worker.convert.identifiers import SourceRef, parse_source
from worker.errors import InvalidSourceError, SourceTimeoutError, TableNotFoundError

# Readers of path tables get options that make sense for a conversion (CSV without a header row
# would name columns _c0, _c1, ...).
_READ_OPTIONS = {"csv": {"header": "true", "inferSchema": "true"}}
_NOT_FOUND = ("TABLE_OR_VIEW_NOT_FOUND", "PATH_NOT_FOUND", "SCHEMA_NOT_FOUND")


def resolve_source(spark: SparkSession, source: str, *, timeout: float | None = None) -> DataFrame:
    """Return the DataFrame of ``source`` (see ``worker.convert.identifiers``).

    Args:
        timeout: seconds that resolving may take (a path source lists every file under its
            path, and ``parquet.`/` `` would walk the whole filesystem); None for no bound.

    Raises:
        InvalidSourceError: ``source`` is not a valid identifier or path table.
        TableNotFoundError: the table, schema or path does not exist.
        SourceTimeoutError: resolving took longer than ``timeout``.
    """
    ref = parse_source(source)
    if timeout is None:
        return _resolve(spark, ref)
    return _bounded(spark, ref, timeout)


def _bounded(spark: SparkSession, ref: SourceRef, timeout: float) -> DataFrame:
    """``_resolve`` on a helper thread, given up after ``timeout`` seconds.

    The listing jobs Spark starts for a large path are cancelled through their job group. A
    listing the driver does itself cannot be interrupted: it finishes in the background and its
    result is dropped, while the job fails at once with a clear error.
    """
    group = f"mds-source-{uuid.uuid4().hex[:12]}"
    outcome: list[DataFrame | BaseException] = []

    def run() -> None:
        try:
            spark.sparkContext.setJobGroup(group, f"resolve {ref.text}", interruptOnCancel=True)
            outcome.append(_resolve(spark, ref))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name=group, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        spark.sparkContext.cancelJobGroup(group)
        raise SourceTimeoutError(
            f"resolving source {ref.text!r} took longer than {timeout:g} s (a path source lists "
            "every file below its path: name the table's own directory)"
        )
    result = outcome[0]
    if isinstance(result, BaseException):
        raise result
    return result


def _resolve(spark: SparkSession, ref: SourceRef) -> DataFrame:
    try:
        return _read_path(spark, ref) if ref.is_path else spark.table(_quoted(ref.parts))
    except AnalysisException as exc:
        condition = exc.getCondition() or ""
        if condition in _NOT_FOUND or "not found" in str(exc).lower():
            raise TableNotFoundError(f"source {ref.text!r} not found") from exc
        raise InvalidSourceError(f"cannot read source {ref.text!r}: {_first_line(exc)}") from exc


def _read_path(spark: SparkSession, ref: SourceRef) -> DataFrame:
    fmt, path = ref.format or "", ref.path or ""
    reader = spark.read.format(fmt)
    for key, value in _READ_OPTIONS.get(fmt, {}).items():
        reader = reader.option(key, value)
    return reader.load(path)


def _quoted(parts: tuple[str, ...]) -> str:
    """Backquote every part so that Spark parses it as an identifier, never as an expression."""
    return ".".join("`" + part.replace("`", "``") + "`" for part in parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
