"""A Spark task that reads a secret mounted as a file (tests/test_task_pods.py)."""

import pathlib

import flyte
from flyteplugins.spark import Spark

env = flyte.TaskEnvironment(name="spark_secret", plugin_config=Spark(spark_conf={"spark.executor.instances": "1"}),
                            secrets=[flyte.Secret(key="spark-file-canary", mount=pathlib.Path("/etc/flyte/secrets"))])


@env.task
async def key_length() -> int:
    with open("/etc/flyte/secrets/spark-file-canary") as f:
        return len(f.read())
