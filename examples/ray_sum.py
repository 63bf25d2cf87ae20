"""A Ray task: `taskdeck run examples/ray_sum.py total --n 100` (needs the ray extra). TaskDeck runs it on its
own local Ray node (the head's CPU and a worker group of two, as logical CPUs); ray.init() joins it."""

import time

import flyte
from flyteplugins.ray import HeadNodeConfig, RayJobConfig, WorkerNodeConfig

env = flyte.TaskEnvironment(name="ray_sum", plugin_config=RayJobConfig(
    head_node_config=HeadNodeConfig(ray_start_params={"num-cpus": "1"}),
    worker_node_config=[WorkerNodeConfig(group_name="workers", replicas=2)]))


@env.task
async def total(n: int, started_file: str = "") -> int:
    if started_file:  # bench/plugins.py: when the body started
        with open(started_file, "w") as f:
            f.write(str(time.time()))
    import ray

    if not ray.is_initialized():  # local mode: the SDK's pre() does not run ray.init()
        ray.init()

    @ray.remote
    def square(x: int) -> int:
        return x * x

    try:
        return sum(ray.get([square.remote(i) for i in range(n)]))
    finally:
        if started_file:
            with open(started_file + ".end", "w") as f:
                f.write(str(time.time()))
