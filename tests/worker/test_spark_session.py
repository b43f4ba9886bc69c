"""The session builder: a table saved by one process is seen by the next, also after a fork."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _count_in_forked_child(data_dir: str, queue) -> None:
    try:
        from worker.convert import spark as spark_module

        settings = SimpleNamespace(spark_master="local[1]", spark_data_dir=data_dir, spark_conf={})
        session = spark_module.get_spark(settings)
        same = spark_module.get_spark(settings) is session
        conf = session.sparkContext.getConf()
        queue.put({
            "rows": session.table("shop.orders").count(),
            "warehouse": conf.get("spark.sql.warehouse.dir"),
            "same": same,
            "host": conf.get("spark.driver.host"),
        })
        session.stop()
    except Exception as exc:  # reported to the parent, which fails the test with it
        queue.put({"error": repr(exc)})


def test_a_table_saved_by_one_process_is_read_by_a_forked_one(spark, retried_local_run) -> None:
    data_dir = str(retried_local_run["data_dir"])  # the other process saved shop.orders there

    # The parent holds a live SparkContext (the session fixture): the child must not reuse it.
    assert spark.range(1).count() == 1
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_count_in_forked_child, args=(data_dir, queue))
    child.start()
    outcome = queue.get(timeout=180)
    child.join(timeout=60)
    assert outcome == {
        "rows": 300, "same": True, "host": "127.0.0.1", "warehouse": f"{data_dir}/warehouse",
    }
    assert spark.range(3).count() == 3  # the parent's session still works
