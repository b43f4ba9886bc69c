"""The loader distribution stands alone.

Its wheel, installed in a clean virtual environment with only its own dependencies (and its s3 +
torch extras), reads and streams datasets without fastapi, celery, pyspark or redis, and its base
import pulls neither torch nor boto3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def clean_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) holding only the loader wheel and its own deps."""
    work = tmp_path_factory.mktemp("wheel")
    wheels = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
         str(ROOT / "loader")],
        check=True,
    )
    (wheel,) = wheels.glob("mds_loader-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-c", str(ROOT / "requirements/constraints.txt"), f"{wheel}[s3,torch]"],
        capture_output=True, text=True,
    )
    require(result.returncode == 0, f"cannot install the loader wheel: {result.stderr[-2000:]}")
    return python


def _run(python: Path, code: str, **env: str) -> dict:
    out = subprocess.run(
        [str(python), "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env={**os.environ, **env}, cwd="/", timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_dataset(out: str | Path, n: int) -> None:
    from mdsloader.mds.writer import MDSWriter

    columns = {"id": "int64", "text": "str", "emb": "ndarray:float32:4"}
    with MDSWriter(out=str(out), columns=columns, compression="zstd", hashes=["xxh64"],
                   size_limit=4096) as writer:
        for i in range(n):
            writer.write({"id": i, "text": f"row {i}", "emb": np.full(4, i, np.float32)})


def test_wheel_reads_a_local_dataset_without_service_packages(
    clean_venv: Path, tmp_path: Path
) -> None:
    _write_dataset(tmp_path / "ds", 300)
    report = _run(clean_venv, f"""
        import importlib.util, json, sys
        import mdsloader
        from mdsloader.mds.reader import DatasetReader
        from mdsloader.ordering import shuffle_draws
        ds = DatasetReader({str(tmp_path / "ds")!r})
        rows = [ds[i] for i in range(len(ds))]
        print(json.dumps({{
            "n": len(rows),
            "ids": [int(r["id"]) for r in rows],
            "text_ok": all(r["text"] == f"row {{i}}" for i, r in enumerate(rows)),
            "emb_ok": all(float(r["emb"][0]) == i for i, r in enumerate(rows)),
            "heavy_loaded": [m for m in ("torch", "boto3") if m in sys.modules],
            "service_installed": [m for m in ("fastapi", "celery", "pyspark", "redis")
                                  if importlib.util.find_spec(m) is not None],
            "compiled": shuffle_draws.compiled_available(),
        }}))
    """)
    assert report["n"] == 300 and report["ids"] == list(range(300))
    assert report["text_ok"] and report["emb_ok"]
    assert report["heavy_loaded"] == [], "the base import must not pull torch or boto3"
    assert report["service_installed"] == [], "the loader must not depend on service packages"
    # Built where a C compiler exists (here): the wheel carries the compiled shuffle replay.
    assert report["compiled"], "the wheel lacks mdsloader.ordering._shuffle_draws"


def test_wheel_streams_a_dataset_from_s3(clean_venv: Path, s3_bucket: str, tmp_path: Path) -> None:
    remote = f"{s3_bucket}/ds"
    _write_dataset(remote, 500)
    report = _run(clean_venv, f"""
        import json
        from mdsloader import StreamingDataset, StreamingDataLoader
        ds = StreamingDataset(remote={remote!r}, local={str(tmp_path / "cache")!r}, batch_size=50,
                              shuffle=True)
        loader = StreamingDataLoader(ds, batch_size=50, num_workers=2)
        ids = sorted(int(i) for batch in loader for i in batch["id"])
        print(json.dumps({{"ids": ids}}))
    """)
    assert report["ids"] == list(range(500))
