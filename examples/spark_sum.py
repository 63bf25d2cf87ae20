"""A Spark task: `taskdeck run examples/spark_sum.py total --n 100` (needs the spark extra). TaskDeck runs it in
Spark's local mode with two executor threads and the task's conf."""

import time

import flyte
from flyteplugins.spark import Spark

env = flyte.TaskEnvironment(name="spark_sum", plugin_config=Spark(
    spark_conf={"spark.executor.instances": "2", "spark.sql.shuffle.partitions": "4"}))


@env.task
async def total(n: int, started_file: str = "") -> int:
    if started_file:  # bench/plugins.py: when the body started
        with open(started_file, "w") as f:
            f.write(str(time.time()))
    try:
        spark = flyte.ctx().data["spark_session"]
        return spark.sparkContext.parallelize(range(n), 4).map(lambda x: x * x).sum()
    finally:
        if started_file:
            with open(started_file + ".end", "w") as f:
                f.write(str(time.time()))
