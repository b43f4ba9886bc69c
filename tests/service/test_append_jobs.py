"""Two appends to one target through real workers: serialised by the target lease, so neither
loses the other's shards (real Redis, Spark, Celery worker with two processes)."""

from __future__ import annotations

import pytest

from tests.service.fleet import PoolWorker, wait_final
from tests.service.test_target_lease import race_api, race_env  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_concurrent_appends_to_one_target_keep_both(race_env, race_api) -> None:  # noqa: F811
    from tests.service.test_end_to_end import read_dataset, write_source

    base = write_source(race_env.base / "base", 1000)
    first = write_source(race_env.base / "first", 800)
    second = write_source(race_env.base / "second", 600)
    target = f"{race_env.bucket}/grow"
    env = race_env.worker_env("appenders", WORKER_TARGET_WAIT_INTERVAL="0.3")
    worker = PoolWorker(env, race_env.base / "appenders.log", "appenders", pool="prefork",
                        concurrency=2)  # fmt: skip
    worker.start()
    try:
        seed = race_api.post("/v1/jobs", json={"source_table": base, "target": target}).json()
        assert wait_final(race_api, [seed["id"]], timeout=240)[seed["id"]]["state"] == "succeeded"
        jobs = [
            race_api.post(
                "/v1/jobs", json={"source_table": src, "target": target, "mode": "append"}
            ).json()
            for src in (first, second)
        ]
        done = wait_final(race_api, [j["id"] for j in jobs], timeout=240)
    finally:
        worker.stop()
    assert [j["state"] for j in done.values()] == ["succeeded", "succeeded"], worker.log_tail()
    added = sorted(j["result"]["added_samples"] for j in done.values())
    assert added == [600, 800]
    assert max(j["result"]["samples"] for j in done.values()) == 2400
    samples = read_dataset(target, race_env.base / "read")
    assert len(samples) == 2400
    # The seed's rows first, with their ids, then each append's rows: nothing lost or repeated.
    assert sorted(int(s["id"]) for s in samples[:1000]) == list(range(1000))
    assert sorted(int(s["id"]) for s in samples[1000:]) == sorted(
        [*range(800), *range(600)]
    )
