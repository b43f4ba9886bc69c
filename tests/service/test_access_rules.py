"""Pure rules of the access model: catalog patterns, path roots, the principals file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from worker.access.principals import (
    AccessConfigError,
    PrincipalsFile,
    Scope,
    build_registry,
    load_principals_file,
    token_digest,
)
from worker.access.sources import (
    CatalogDefaults,
    CatalogPattern,
    SourceGrant,
    SourceNotAllowedError,
    normalise_catalog_name,
)
from worker.errors import InvalidSourceError
from worker.settings import WorkerSettings

SALES = SourceGrant.parse(["sales.*", "main.hr.public_*"], [])


@pytest.mark.parametrize(
    "source",
    [
        "sales.events",
        "SALES.Events",
        "`sales`.`events`",
        "`SaLeS`.events",
        "spark_catalog.sales.events",
        "`spark_catalog`.`sales`.`events`",
        "Spark_Catalog.SALES.`EVENTS`",
        "main.hr.public_holidays",
    ],
)
def test_spellings_of_an_allowed_table_are_allowed(source: str) -> None:
    assert SALES.authorise(source) == source


@pytest.mark.parametrize(
    "source",
    [
        "hr.salaries",
        "`hr`.salaries",
        "HR.SALARIES",
        "spark_catalog.hr.salaries",
        "main.hr.salaries",  # the pattern names main.hr.public_* only
        "other.sales.events",  # another catalog's "sales" database
        "events",  # default.events
        "`sales.events`",  # ONE part named "sales.events", in the default database
        "sales",
        "main.sales.events",  # sales.* means the default catalog's sales database
    ],
)
def test_no_spelling_gets_around_a_pattern(source: str) -> None:
    with pytest.raises(SourceNotAllowedError, match="not in the allowed sources"):
        SALES.authorise(source)


def test_names_are_completed_with_the_configured_defaults() -> None:
    assert normalise_catalog_name(["T"]) == ("spark_catalog", "default", "t")
    assert normalise_catalog_name(["Db", "T"]) == ("spark_catalog", "db", "t")
    other = CatalogDefaults("main", "lake")
    assert normalise_catalog_name(["t"], other) == ("main", "lake", "t")
    grant = SourceGrant.parse(["main.lake.*"], [], other)
    assert grant.authorise("events") == "events"
    with pytest.raises(SourceNotAllowedError):
        grant.authorise("spark_catalog.lake.events")


def test_star_allows_every_catalog_table_but_no_path() -> None:
    grant = SourceGrant.parse(["*"], [])
    assert grant.authorise("a.b.c") == "a.b.c"
    with pytest.raises(SourceNotAllowedError, match="none is configured"):
        grant.authorise("csv.`/etc/passwd`")


@pytest.mark.parametrize("bad", ["", "a..b", "a.b.c.d", "a. b", "."])
def test_malformed_patterns_are_configuration_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid source pattern"):
        CatalogPattern.parse(bad)


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    (root / "sales" / "events").mkdir(parents=True)
    (tmp_path / "hr").mkdir()
    (root / "sales" / "escape").symlink_to(tmp_path / "hr")
    (root / "sales" / "inner").symlink_to(root / "sales" / "events")
    return root


def test_path_sources_under_a_root(lake: Path) -> None:
    grant = SourceGrant.parse([], [str(lake / "sales")])
    events = lake / "sales" / "events"
    assert grant.authorise(f"parquet.`{events}`") == f"parquet.`{events}`"
    assert grant.authorise(f"orc.`file://{events}`") == f"orc.`{events}`"
    assert grant.authorise(f"csv.`file:{events}/`") == f"csv.`{events}`"
    # A link inside the root is followed, and the worker reads where it leads.
    assert grant.authorise(f"json.`{lake}/sales/inner`") == f"json.`{events}`"
    assert grant.authorise(f"parquet.`{lake}/sales`") == f"parquet.`{lake / 'sales'}`"


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "/",
        "{lake}/sales/../../hr",
        "{lake}/sales/escape",  # a symlink out of the root
        "{lake}/sales/escape/x.parquet",
        "{lake}/sales-other",  # a sibling sharing the root's prefix
        "file://{lake}/sales/../../hr",
        "file:///etc",
        "hdfs://namenode/data",
    ],
)
def test_paths_outside_the_root_are_refused(lake: Path, path: str) -> None:
    grant = SourceGrant.parse([], [str(lake / "sales")])
    with pytest.raises(SourceNotAllowedError, match="not under an allowed source root"):
        grant.authorise(f"csv.`{path.format(lake=lake)}`")


@pytest.mark.parametrize(
    "path",
    [
        "{lake}/sales/*",
        "{lake}/sales/{{events,../../hr}}",
        "{lake}/sales/ev?nts",
        "{lake}/sales/[e]vents",
        "relative/path",
        "file://otherhost/{lake}",
    ],
)
def test_globs_relative_paths_and_remote_file_uris_are_invalid(lake: Path, path: str) -> None:
    grant = SourceGrant.parse([], [str(lake)])
    with pytest.raises(InvalidSourceError):
        grant.authorise(f"parquet.`{path.format(lake=lake)}`")


def test_remote_roots_match_by_segment() -> None:
    grant = SourceGrant.parse([], ["s3a://Lake/sales/"])
    assert grant.authorise("parquet.`s3a://lake/sales/events`")
    for refused in ("s3a://lake/salesx", "s3a://lake/hr", "s3://lake/sales/x", "s3a://other/sales"):
        with pytest.raises(SourceNotAllowedError):
            grant.authorise(f"parquet.`{refused}`")
    with pytest.raises(InvalidSourceError, match=r"'\.\.'"):
        grant.authorise("parquet.`s3a://lake/sales/../hr`")


def write_principals(path: Path, principals: list[dict]) -> Path:
    path.write_text(json.dumps({"principals": principals}))
    return path


def entry(name: str, token: str, **extra: object) -> dict:
    return {"name": name, "tokens": [token_digest(token)], "scopes": ["jobs:read"], **extra}


def test_file_errors_name_the_entry(tmp_path: Path) -> None:
    defaults = CatalogDefaults()
    cases = {
        "unknown field": [{**entry("a", "t"), "scope": ["admin"]}],
        "bad scope": [{**entry("a", "t"), "scopes": ["jobs:write"]}],
        "raw token": [{**entry("a", "t"), "tokens": ["not-a-digest"]}],
        "bad pattern": [entry("a", "t", sources=["a..b"])],
        "bad target": [entry("a", "t", targets=["ftp://x"])],
        "duplicate name": [entry("a", "t"), entry("a", "u")],
        "shared token": [entry("a", "t"), entry("b", "t")],
        "reserved": [entry("anonymous", "t")],
        "colon in name": [entry("token:abc", "t")],
    }
    for case, principals in cases.items():
        path = write_principals(tmp_path / "p.json", principals)
        with pytest.raises(AccessConfigError, match=r"p\.json") as info:
            load_principals_file(path, defaults)
        assert "Traceback" not in str(info.value), case
    (tmp_path / "p.yaml").write_text("principals: [unclosed")
    with pytest.raises(AccessConfigError, match="invalid principals file"):
        load_principals_file(tmp_path / "p.yaml", defaults)


def test_yaml_file_and_digest_forms(tmp_path: Path) -> None:
    bare = token_digest("t2").removeprefix("sha256:").upper()
    (tmp_path / "p.yaml").write_text(
        "principals:\n"
        f"  - name: etl\n    tokens: ['{token_digest('t1')}', '{bare}']\n"
        "    scopes: [jobs:submit, admin]\n    sources: ['sales.*']\n"
        "    targets: ['s3://datasets/etl/']\n    max_active_jobs: 2\n"
    )
    settings = WorkerSettings(principals_file=tmp_path / "p.yaml")
    registry = build_registry(settings)
    one, two = registry.authenticate("t1"), registry.authenticate("t2")
    assert one is two and one is not None and one.name == "etl" and one.max_active_jobs == 2
    assert one.has(Scope.CANCEL)  # admin holds every scope
    assert registry.authenticate("t3") is None
    assert registry.get("etl") is one and registry.get("anonymous") is None


def test_a_changed_file_is_read_again_and_a_broken_one_fails_closed(tmp_path: Path) -> None:
    path = write_principals(tmp_path / "p.json", [entry("a", "t")])
    source = PrincipalsFile(path, CatalogDefaults(), check_interval=0)
    assert [p.name for p in source.current()] == ["a"]
    write_principals(path, [entry("b", "t")])
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert [p.name for p in source.current()] == ["b"]
    path.write_text("{")
    with pytest.raises(AccessConfigError):
        source.current()  # never the last good version: it may be wider than intended
    path.unlink()
    with pytest.raises(AccessConfigError, match="cannot read"):
        source.current()


def test_legacy_tokens_are_all_powerful_with_the_global_lists(tmp_path: Path) -> None:
    settings = WorkerSettings(
        api_tokens=["legacy"],
        allowed_targets=["s3://datasets/"],
        allowed_source_paths=[str(tmp_path)],
        data_dir=tmp_path,
    )
    principal = build_registry(settings).authenticate("legacy")
    assert principal is not None and principal.name.startswith("token:")
    assert all(principal.has(scope) for scope in Scope)
    assert principal.sources.authorise("any.table") == "any.table"
    assert principal.sources.authorise(f"csv.`{tmp_path}`")
    assert str(principal.authorise_target("s3://datasets/x")) == "s3://datasets/x"


def test_mint_token_prints_a_token_and_an_entry_that_loads(tmp_path: Path, capsys) -> None:
    import yaml

    from app.cli import main

    argv = ["mint-token", "--name", "etl", "--source", "sales.*", "--target", "s3://data/etl/"]
    assert main(argv) == 0
    token, *entry = capsys.readouterr().out.splitlines()
    document = {"principals": yaml.safe_load("\n".join(entry))}
    assert token not in "\n".join(entry)  # only its digest is written down
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(document))
    registry = build_registry(WorkerSettings(principals_file=tmp_path / "p.yaml"))
    principal = registry.authenticate(token)
    assert principal is not None and principal.name == "etl" and not principal.is_admin
    assert principal.has(Scope.SUBMIT) and principal.sources.authorise("sales.x")
    # hash-token gives the digest of an existing token, for migrating APP_API_TOKENS.
    import io
    import sys

    sys.stdin, stdin = io.StringIO(token + "\n"), sys.stdin
    try:
        assert main(["hash-token"]) == 0
    finally:
        sys.stdin = stdin
    assert capsys.readouterr().out.strip() == token_digest(token)
    for bad in (["--name", "bad:name"], ["--name", "ok", "--target", "s3://d/x"]):
        assert main(["mint-token", *bad]) == 2
        assert "mint-token:" in capsys.readouterr().err
