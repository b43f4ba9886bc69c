"""The session builder: a table saved by one process is seen by the next, also after a fork."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

import pytest

from tests.worker.conftest import run_script, subprocess_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _count_in_forked_child(data_dir: str, queue) -> None:
    try:
        from worker.convert import spark as spark_module

        settings = SimpleNamespace(spark_master="local[1]", data_dir=data_dir, spark_conf={})
        session = spark_module.get_spark(settings)
        same = spark_module.get_spark(settings) is session
        conf = session.sparkContext.getConf()
        queue.put({
            "rows": session.table("shop.orders").count(),
            "same": same,
            "host": conf.get("spark.driver.host"),
        })
        session.stop()
    except Exception as exc:  # reported to the parent, which fails the test with it
        queue.put({"error": repr(exc)})


def test_a_table_saved_by_one_process_is_read_by_a_forked_one(spark, scratch) -> None:
    data_dir = str(scratch / "data")
    assert run_script("metastore_job.py", data_dir, env=subprocess_env()) == {"saved": 7}

    # The parent holds a live SparkContext (the session fixture): the child must not reuse it.
    assert spark.range(1).count() == 1
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_count_in_forked_child, args=(data_dir, queue))
    child.start()
    outcome = queue.get(timeout=180)
    child.join(timeout=60)
    assert outcome == {"rows": 7, "same": True, "host": "127.0.0.1"}
    assert spark.range(3).count() == 3  # the parent's session still works
