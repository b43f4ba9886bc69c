"""Conversions in a separate driver process: a real standalone cluster writing to the S3 server,
and a task that fails on its first attempt."""

from __future__ import annotations

import boto3
import pytest

from tests.worker.conftest import files_under, read_ours, read_reference, run_script, subprocess_env
from worker.convert.partitions import STRAY_NAME

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def bucket_keys(bucket_url: str, endpoint: str) -> list[str]:
    bucket = bucket_url.removeprefix("s3://")
    pages = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2")
    pages = pages.paginate(Bucket=bucket)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def test_standalone_cluster_writes_to_s3_and_survives_a_failed_first_attempt(
    spark_cluster, s3_bucket, s3_endpoint, scratch, reference
) -> None:
    target = f"{s3_bucket}/events"
    result = run_script(
        "convert_job.py", spark_cluster.master_url, target, "600", "3", str(scratch / "data"),
        "--fault", env=subprocess_env(),
    )

    assert result["samples"] == 600 and result["shards"] > 3
    assert result["retried_partitions"] == 3  # every first attempt failed after writing
    samples = read_reference(reference, local=scratch / "cache", remote=target)
    assert [int(s["id"]) for s in samples] == list(range(600))
    assert samples[7]["text"] == "row-7" and samples[7]["emb"].tolist() == [7.0, 14.0]
    keys = bucket_keys(s3_bucket, s3_endpoint)
    assert not any(STRAY_NAME in key for key in keys), "orphans of the failed attempts remain"
    assert all(k.startswith("events/run-test/0000") or k == "events/index.json" for k in keys)
    assert sum(k.endswith(".mds.zstd") for k in keys) == result["shards"]


def test_local_retries_overwrite_their_own_files_and_leave_no_orphans(
    retried_local_run, reference
) -> None:
    result, out = retried_local_run["result"], retried_local_run["out"]
    assert result["samples"] == 300
    assert result["retried_partitions"] == 2
    assert [int(s["id"]) for s in read_ours(out)] == list(range(300))
    assert [int(s["id"]) for s in read_reference(reference, local=out)] == list(range(300))
    files = files_under(out)
    assert not any(STRAY_NAME in f for f in files)
    assert sum(f.endswith(".mds.zstd") for f in files) == result["shards"]
