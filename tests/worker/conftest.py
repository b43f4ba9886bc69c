"""Conversion test fixtures: readers for both implementations, a standalone Spark cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, require, wait_for_port

HERE = Path(__file__).resolve().parent


def read_ours(path: str | Path) -> list[dict]:
    """Every sample of a local dataset through our reader, verifying xxh64 digests."""
    from mdsloader.mds.reader import open_local_dataset

    with open_local_dataset(path, validate_hash="xxh64") as dataset:
        return [dataset[i] for i in range(len(dataset))]


def read_reference(reference, *, local: str | Path, remote: str | None = None) -> list[dict]:
    """Every sample through mosaicml-streaming's StreamingDataset, in index order."""
    dataset = reference.StreamingDataset(
        local=str(local), remote=remote, batch_size=1, shuffle=False
    )
    return [dataset[i] for i in range(dataset.num_samples)]


def files_under(root: str | Path) -> list[str]:
    """Relative paths of every file below ``root``, sorted."""
    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python/Spark process: this interpreter, loopback only."""
    env = dict(os.environ)
    root = str(HERE.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.update(
        SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable, **extra,
    )
    return env


def run_script(script: str, *args: str, env: dict[str, str], timeout: float = 240) -> dict:
    """Run a helper script of this directory; it prints one JSON line last."""
    done = subprocess.run(
        [sys.executable, str(HERE / script), *args], env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"{script} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class StandaloneCluster:
    """A Spark standalone master and one 1-core worker on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        import pyspark

        self.home = Path(pyspark.__file__).parent
        self.workdir = workdir
        self.port, self.ui_port = free_port(), free_port()
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = subprocess_env(SPARK_HOME=str(self.home), SPARK_WORKER_DIR=str(self.workdir))
        self._spawn("master", env, "org.apache.spark.deploy.master.Master", "--host",
                    "127.0.0.1", "--port", str(self.port), "--webui-port", str(self.ui_port))
        wait_for_port(self.port, timeout=60)
        self._spawn("worker", env, "org.apache.spark.deploy.worker.Worker", "--host",
                    "127.0.0.1", "--cores", "1", "--memory", "1g", "--webui-port",
                    str(free_port()), "--work-dir", str(self.workdir), self.master_url)
        self._wait_for_worker()

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()

    def _spawn(self, name: str, env: dict[str, str], *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.processes.append(subprocess.Popen(
            [str(self.home / "bin" / "spark-class"), *args], env=env, stdout=log,
            stderr=subprocess.STDOUT,
        ))

    def _wait_for_worker(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/") as r:
                    if json.load(r).get("aliveworkers", 0) >= 1:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError("the standalone worker did not register with the master")


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandaloneCluster]:
    require(shutil.which("java") is not None, "java is not installed (Spark needs it)")
    cluster = StandaloneCluster(tmp_path_factory.mktemp("spark-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def retried_local_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One conversion in a separate local[2,3] driver whose tasks all fail their first attempt;
    it also saves the rows as catalog table ``shop.orders`` in its persistent metastore."""
    root = tmp_path_factory.mktemp("retried")
    out, data_dir = root / "ds", root / "data"
    result = run_script(
        "convert_job.py", "local[2,3]", str(out), "300", "2", str(data_dir), "--fault",
        "--save-table", env=subprocess_env(),
    )
    return {"result": result, "out": out, "data_dir": data_dir}
