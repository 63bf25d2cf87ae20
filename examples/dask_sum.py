"""A Dask task: `taskdeck run examples/dask_sum.py total --n 100` (needs the dask extra). TaskDeck runs it on
its own local Dask cluster (a scheduler and two workers); the task's Client() joins it."""

import time

import flyte
from flyteplugins.dask import Dask, WorkerGroup

env = flyte.TaskEnvironment(name="dask_sum", plugin_config=Dask(workers=WorkerGroup(number_of_workers=2)))


@env.task
async def total(n: int, started_file: str = "") -> int:
    if started_file:  # bench/plugins.py: when the body started
        with open(started_file, "w") as f:
            f.write(str(time.time()))
    from distributed import Client

    client = Client()
    try:
        return sum(client.gather(client.map(lambda x: x * x, range(n))))
    finally:
        client.close()
        if started_file:
            with open(started_file + ".end", "w") as f:
                f.write(str(time.time()))
