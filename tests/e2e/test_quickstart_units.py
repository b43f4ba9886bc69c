"""The quick start's helpers on their own: the demo table, progress lines, process groups, Redis.

Fast: no Spark, no API. Real processes and a real Redis where processes are the point.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from quickstart_lib import demo
from quickstart_lib.processes import StartupError, Supervisor, wait_until
from quickstart_lib.readback import ReadReport
from quickstart_lib.redis_local import ensure_redis, redis_answers
from quickstart_lib.rest import follow, progress_text

from tests.conftest import free_port, require


def test_demo_table_values_are_functions_of_the_row_id(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(demo, "ROWS_PER_FILE", 400)
    monkeypatch.setattr(demo, "ROW_GROUP_ROWS", 100)
    table, written = demo.seed_demo_table(tmp_path / "events", 1000)
    assert written and table.source_table == f"parquet.`{tmp_path / 'events'}`"
    files = sorted(table.path.glob("*.parquet"))
    # Row groups are what Spark can split a file at: several per file.
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in files] == [
        4,
        4,
        4,
    ]  # 334, 334, 332 rows
    data = pq.read_table(table.path).sort_by("id")
    ids = data["id"].to_numpy()
    np.testing.assert_array_equal(ids, np.arange(1000))
    embeddings = np.stack(data["embedding"].to_numpy(zero_copy_only=False))
    assert embeddings.shape == (1000, demo.EMBEDDING_DIM) and embeddings.dtype == np.float32
    np.testing.assert_array_equal(embeddings, demo.embedding_for(ids))
    np.testing.assert_array_equal(data["label"].to_numpy(), demo.label_for(ids))
    assert set(demo.label_for(ids)) == set(range(10))
    texts = data["text"].to_pylist()
    assert all(t and t == t.strip() and set(t.split()) <= set(demo._WORDS) for t in texts)
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) == 2 and max(lengths) == 40  # varied, within the documented range


def test_demo_table_is_reused_only_when_identical(tmp_path: Path) -> None:
    path = tmp_path / "events"
    demo.seed_demo_table(path, 50)
    stamp = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert demo.seed_demo_table(path, 50)[1] is False
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == stamp
    _, written = demo.seed_demo_table(path, 60)
    assert written and pq.read_table(path).num_rows == 60
    assert not path.with_name("events.seeding").exists()
    with pytest.raises(ValueError, match="at least one row"):
        demo.seed_demo_table(path, 0)


def job(state: str, **progress: int) -> dict[str, Any]:
    return {"state": state, "progress": progress}


def test_progress_text_says_what_is_happening() -> None:
    assert "preparing" in progress_text(job("running", partitions_total=0), 3.0)
    line = progress_text(
        job("running", rows_written=250_000, shards_written=2, bytes_written=52_800_000,
            partitions_done=2, partitions_total=8), 72.6, total_rows=1_000_000,
    )  # fmt: skip
    assert line == ("running    rows 250,000/1,000,000  shards 2  partitions 2/8  52.8 MB  72.6s")
    assert progress_text(job("queued"), 0.0).startswith("queued     rows 0  ")


class ScriptedJobs:
    """A stand-in for the REST client that replays job snapshots (pure logic of ``follow``)."""

    def __init__(self, snapshots: list[dict[str, Any]]) -> None:
        self.snapshots = snapshots

    def get(self, job_id: str) -> dict[str, Any]:
        return self.snapshots.pop(0)


def test_follow_shows_only_state_and_partition_changes_when_piped() -> None:
    snapshots = [
        job("queued"),
        job("running", partitions_total=4),
        job("running", partitions_total=4, rows_written=10),
        job("running", partitions_total=4, partitions_done=1, rows_written=20),
        job("succeeded", partitions_total=4, partitions_done=4, rows_written=40),
    ]
    shown: list[str] = []
    checks: list[int] = []
    client: Any = ScriptedJobs(snapshots)
    final = follow(
        client, "j", show=shown.append, check=lambda: checks.append(1), every_change=False,
        interval=0, quiet_for=60,
    )  # fmt: skip
    assert final["state"] == "succeeded"
    assert [line.split()[0] for line in shown] == ["queued", "running", "running", "succeeded"]
    assert len(checks) == 4  # between polls, never after the final state


def test_follow_stops_when_a_service_dies() -> None:
    def died() -> None:
        raise StartupError("worker exited with status 1")

    with pytest.raises(StartupError, match="worker exited"):
        client: Any = ScriptedJobs([job("queued")] * 3)
        follow(client, "j", show=lambda _: None, check=died, interval=0)


def test_read_report_is_complete_only_with_every_row_once() -> None:
    good = ReadReport(expected=10, samples=10, missing=0, duplicated=0, wrong_values=0,
                      shuffled=True, seconds=2.0)  # fmt: skip
    assert good.complete and good.samples_per_second == 5.0
    for change in ({"samples": 9}, {"missing": 1}, {"duplicated": 1}, {"wrong_values": 1}):
        assert not dataclasses.replace(good, **change).complete


def test_supervisor_stops_whole_process_groups_newest_first(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    # Each child leaves a grandchild behind in its group, as the worker leaves its JVM.
    for name in ("first", "second"):
        supervisor.spawn(
            name,
            # Written to a temporary name and renamed, so a reader never sees an empty pid file.
            ["bash", "-c", "sleep 300 & echo $! > $0.tmp && mv $0.tmp $0; wait",
             str(tmp_path / f"{name}.pid")],
            env=dict(os.environ),
        )
    wait_until(lambda: all((tmp_path / f"{n}.pid").exists() for n in ("first", "second")),
               timeout=10, what="children")  # fmt: skip
    grandchildren = [int((tmp_path / f"{n}.pid").read_text()) for n in ("first", "second")]
    assert supervisor.stop_all(grace=5) == ["second", "first"]
    for pid in grandchildren:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_dead_child_is_reported_with_its_own_log(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    earlier = supervisor.spawn("api", ["bash", "-c", "echo ready. from an earlier run"], env={})
    earlier.process.wait(timeout=10)
    supervisor.children.clear()
    child = supervisor.spawn(
        "api", ["bash", "-c", "echo address already in use; exit 3"], env=dict(os.environ)
    )
    child.process.wait(timeout=10)
    assert child.log_path == earlier.log_path  # one log per service, appended across runs
    assert child.output() == b"address already in use\n"
    with pytest.raises(StartupError, match=r"api exited with status 3[\s\S]*already in use"):
        supervisor.check_alive()
    with pytest.raises(StartupError, match="api exited"):
        wait_until(lambda: b"ready." in child.output(), timeout=5, what="the API", child=child)


@pytest.mark.integration
def test_ensure_redis_uses_a_reachable_server(redis_server, tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / "logs")
    assert ensure_redis(redis_server.url, tmp_path / "redis", supervisor) == (
        redis_server.url,
        False,
    )
    assert supervisor.children == []


@pytest.mark.integration
def test_ensure_redis_starts_a_private_server_with_its_data_in_the_data_dir(tmp_path) -> None:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    supervisor = Supervisor(tmp_path / "logs")
    url, started = ensure_redis(f"redis://127.0.0.1:{free_port()}/0", tmp_path / "redis",
                                supervisor)  # fmt: skip
    try:
        assert started and redis_answers(url)
        assert (tmp_path / "redis" / "appendonlydir").is_dir()
    finally:
        supervisor.stop_all()
    assert not redis_answers(url)


def test_the_wrapper_refuses_to_run_without_an_environment(tmp_path: Path) -> None:
    # A copy of the wrapper in a tree without .venv: it must say so instead of failing obscurely.
    (tmp_path / "scripts").mkdir()
    wrapper = Path(__file__).resolve().parents[2] / "scripts" / "quickstart"
    shutil.copy(wrapper, tmp_path / "scripts" / "quickstart")
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "quickstart"), "--no-install"],
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 2 and "no .venv" in done.stderr
