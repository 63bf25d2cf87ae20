"""Spark tasks (flyteplugins-spark, task type ``spark``) run in Spark's local mode through the engine, with
the application's conf applied, Java found (or brought by the spark extra), and no JVM left afterwards."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.client.local import LocalClient
from engine.phases import ActionPhase
from helpers import eventually, live_processes, run_sdk_task, task_file

pytestmark = pytest.mark.sdk

TASKS = textwrap.dedent('''
    import flyte
    from flyteplugins.spark import Spark

    env = flyte.TaskEnvironment(name="spark_env", plugin_config=Spark(
        spark_conf={"spark.executor.instances": "2", "spark.sql.shuffle.partitions": "4"},
        hadoop_conf={"fs.taskdeck.probe": "yes"}))

    @env.task
    async def total(n: int) -> str:
        spark = flyte.ctx().data["spark_session"]
        sc = spark.sparkContext
        squares = sc.parallelize(range(n), 4).map(lambda x: x * x).sum()
        hadoop = sc._jsc.hadoopConfiguration().get("fs.taskdeck.probe")
        return f"{squares} {sc.master} {spark.conf.get('spark.sql.shuffle.partitions')} {hadoop}"

    @env.task
    async def broken() -> int:
        spark = flyte.ctx().data["spark_session"]
        spark.sparkContext.parallelize([1]).map(lambda x: 1 // 0).collect()
        return 0
''')


def _drivers(root: Path) -> list[int]:
    """Live JVMs of Spark drivers started in ``root``."""
    return live_processes(lambda cmdline, proc: b"SparkSubmit" in cmdline
                          and str((proc / "cwd").resolve()).startswith(str(root)))


@pytest.fixture
def tasks(tmp_path) -> Path:
    return task_file(tmp_path, "spark_tasks.py", TASKS, "pyspark", "flyteplugins.spark")


async def test_a_spark_task_runs_in_local_mode_with_its_conf_and_leaves_no_jvm(engine, tasks, tmp_path):
    result = await run_sdk_task(engine, tasks, "total", timeout=300, n=10)
    assert result.phase == ActionPhase.SUCCEEDED, result.error
    assert result.outputs == {"o0": "285 local[2] 4 yes"}  # executors as threads; spark and hadoop conf applied
    events = await LocalClient(engine.services).list_events(result.run.run_name, "a0")
    assert dict(link for e in events for link in e.links).get("Spark Driver UI", "").startswith("http://127.0.0.1:")
    await eventually(lambda: not _drivers(tmp_path), timeout=20)


async def test_a_failing_spark_job_fails_the_task_with_its_error(engine, tasks, tmp_path):
    result = await run_sdk_task(engine, tasks, "broken", timeout=300)
    assert result.phase == ActionPhase.FAILED
    assert "ZeroDivisionError" in result.error["message"] or "division" in result.error["message"], result.error
    await eventually(lambda: not _drivers(tmp_path), timeout=20)
