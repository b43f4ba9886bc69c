"""The worker's SparkSession: loopback binding, a persistent local metastore, one per process."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DEFAULT_MASTER = "local[*]"
DEFAULT_DATA_DIR = Path(".data") / "spark"

_lock = threading.Lock()
_session: SparkSession | None = None
_session_pid: int | None = None
_inherited = False  # set in a forked child: pyspark's singletons point at the parent's JVM


def build_spark_session(
    master: str = DEFAULT_MASTER,
    conf: Mapping[str, str] | None = None,
    data_dir: str | Path | None = None,
) -> SparkSession:
    """Create (or return the running) SparkSession of this process.

    Binds the driver to 127.0.0.1 unless ``conf`` says otherwise, makes executors use this
    interpreter, and keeps a Derby metastore and the warehouse under ``data_dir`` so that a table
    saved by one process is visible to the next one. Derby is single-process: only one JVM may
    hold the metastore at a time. If this process already runs a session, Spark returns it and
    applies only the runtime SQL settings of ``conf``.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    data = Path(data_dir or DEFAULT_DATA_DIR).resolve()
    data.mkdir(parents=True, exist_ok=True)
    builder = SparkSession.builder.master(master).appName("mds-convert")
    for key, value in {**_default_conf(data), **(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.enableHiveSupport().getOrCreate()


def get_spark(settings: object | None = None) -> SparkSession:
    """The process-wide session, created lazily on first use and rebuilt after a fork.

    ``settings`` is any object with optional ``spark_master``, ``spark_conf`` and
    ``spark_data_dir`` (or ``data_dir``, whose ``spark/`` subdirectory is then used) attributes,
    e.g. the worker settings; missing ones fall back to ``SPARK_MASTER`` and the defaults.
    """
    global _session, _session_pid, _inherited
    with _lock:
        if _session is not None and _session_pid == os.getpid():
            return _session
        forked = _session_pid is not None and _session_pid != os.getpid()
        if _inherited or forked or _has_foreign_jvm():
            _forget_inherited_spark()
            _inherited = False
        _session = build_spark_session(**_settings_kwargs(settings))
        _session_pid = os.getpid()
        return _session


def _default_conf(data: Path) -> dict[str, str]:
    metastore = data / "metastore_db"
    return {
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.host": "127.0.0.1",
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.warehouse.dir": str(data / "warehouse"),
        "spark.sql.catalogImplementation": "hive",
        "spark.hadoop.javax.jdo.option.ConnectionURL": (
            f"jdbc:derby:;databaseName={metastore};create=true"
        ),
        # Keeps derby.log out of the current directory.
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={data}",
        # A retried partition must overwrite its own files; a speculative twin would race it.
        "spark.speculation": "false",
    }


def _settings_kwargs(settings: object | None) -> dict[str, object]:
    master = getattr(settings, "spark_master", None) or os.environ.get("SPARK_MASTER")
    data_dir = getattr(settings, "spark_data_dir", None)
    if data_dir is None and getattr(settings, "data_dir", None) is not None:
        data_dir = Path(settings.data_dir) / "spark"  # type: ignore[attr-defined]
    return {
        "master": master or DEFAULT_MASTER,
        "conf": dict(getattr(settings, "spark_conf", None) or {}),
        "data_dir": data_dir,
    }


def _mark_forked() -> None:
    global _inherited, _lock
    _inherited = True
    _lock = threading.Lock()  # the parent may have held it while forking


os.register_at_fork(after_in_child=_mark_forked)


def _has_foreign_jvm() -> bool:
    """Whether pyspark holds a gateway to a JVM that is not this process's child.

    That is the case in a forked child (even when this module was first imported after the
    fork): ``Popen.poll`` cannot wait for another process's child and reports it as gone.
    """
    from pyspark import SparkContext

    process = getattr(SparkContext._gateway, "proc", None)
    return process is not None and process.poll() is not None


def _forget_inherited_spark() -> None:
    """Drop the parent's py4j gateway and session singletons inherited through ``fork``.

    The JVM belongs to the parent process; talking to it from the child would interleave two
    processes on one socket. The child starts its own JVM instead.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    SparkContext._gateway = None
    SparkContext._jvm = None
    SparkContext._active_spark_context = None
    SparkSession._instantiatedSession = None
    SparkSession._activeSession = None
    SparkSession.builder._options = {}
