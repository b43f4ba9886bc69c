"""Sources: catalog tables and path tables resolve; bad and missing ones fail clearly."""

from __future__ import annotations

import pytest

from tests.worker.conftest import read_ours
from worker.convert.identifiers import parse_source, validate_table_identifier
from worker.convert.model import ConversionSpec
from worker.convert.pipeline import convert_table
from worker.convert.source import resolve_source
from worker.errors import InvalidSourceError, TableNotFoundError


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("events", ("events",)),
        ("sales.events", ("sales", "events")),
        ("cat.sales.events_2", ("cat", "sales", "events_2")),
        ("`my db`.`we``ird.name`", ("my db", "we`ird.name")),
        ("  _t  ", ("_t",)),
    ],
)
def test_valid_identifiers_parse_into_parts(text, parts) -> None:
    assert parse_source(text).parts == parts
    assert validate_table_identifier(text) == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "", "a.b.c.d", "1abc", "events; drop table x", "select * from t", "a..b", "`a",
        "events--", "a.`b`c", "parquet.`/x` where 1=1", "t\nx", "a b",
        "parquet.`/a`b`", "x" * 2000,
    ],
)
def test_anything_but_an_identifier_or_path_table_is_refused(text) -> None:
    with pytest.raises(InvalidSourceError):
        validate_table_identifier(text)


def test_path_tables_name_their_format() -> None:
    ref = parse_source("Parquet.`/data/events dir`")
    assert (ref.format, ref.path, ref.is_path) == ("parquet", "/data/events dir", True)


def test_identifier_module_does_not_import_pyspark() -> None:
    import subprocess
    import sys

    code = "import sys, worker.convert.identifiers; print('pyspark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.integration
def test_catalog_and_path_tables_convert(spark, scratch) -> None:
    spark.sql("create database if not exists sales")
    spark.range(5).selectExpr("id", "id * 2 as twice").write.mode("overwrite").saveAsTable(
        "sales.events"
    )
    spec = ConversionSpec(source_table="sales.events", target=str(scratch / "a"), partitions=1)
    assert convert_table(spec, spark=spark).samples == 5
    assert sorted(int(s["twice"]) for s in read_ours(scratch / "a")) == [0, 2, 4, 6, 8]

    spark.range(3).write.parquet(str(scratch / "pq"))
    spec = ConversionSpec(source_table=f"parquet.`{scratch / 'pq'}`", target=str(scratch / "b"))
    assert convert_table(spec, spark=spark).samples == 3


@pytest.mark.integration
@pytest.mark.parametrize(
    "source", ["no_such_table", "nodb.events", "parquet.`/nonexistent/mds-test-path`"]
)
def test_missing_sources_raise_table_not_found(spark, source) -> None:
    with pytest.raises(TableNotFoundError, match="not found"):
        resolve_source(spark, source)


@pytest.mark.integration
def test_convert_table_maps_bad_identifiers_to_invalid_source(spark, scratch) -> None:
    spec = ConversionSpec(source_table="t; drop table x", target=str(scratch / "a"))
    with pytest.raises(InvalidSourceError):
        convert_table(spec, spark=spark)
