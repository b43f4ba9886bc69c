"""Source resolution is bounded in time, and a failure names its real cause (real Spark)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker.convert.model import ConversionSpec
from worker.convert.pipeline import convert_table
from worker.convert.source import resolve_source
from worker.errors import PermanentConversionError, SourceTimeoutError

pytestmark = pytest.mark.integration


def spec(source: str, target: Path) -> ConversionSpec:
    return ConversionSpec(source_table=source, target=str(target), run_id="r1")


def test_a_failed_read_names_the_java_cause_not_the_py4j_call(spark, tmp_path: Path) -> None:
    table = tmp_path / "garbage"
    table.mkdir()
    (table / "part-0.parquet").write_bytes(b"this is not a parquet file\n")
    with pytest.raises(PermanentConversionError) as info:
        convert_table(spec(f"parquet.`{table}`", tmp_path / "out"), spark=spark)
    message = info.value.message
    assert "not a Parquet file" in message, message
    assert "An error occurred while calling" not in message
    assert not (tmp_path / "out").exists()


def test_resolving_a_source_is_bounded_in_time(spark, tmp_path: Path) -> None:
    table = tmp_path / "events"
    table.mkdir()
    for part in range(3):
        pq.write_table(pa.table({"id": [part]}), table / f"part-{part}.parquet")
    source = f"parquet.`{table}`"
    with pytest.raises(SourceTimeoutError, match="took longer than"):
        resolve_source(spark, source, timeout=1e-6)
    with pytest.raises(SourceTimeoutError) as info:
        convert_table(spec(source, tmp_path / "out"), spark=spark, source_timeout=1e-6)
    assert info.value.code == "source_timeout" and not info.value.retryable
    # The session is still usable, and a generous bound changes nothing.
    assert resolve_source(spark, source, timeout=120).count() == 3
