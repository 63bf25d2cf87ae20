"""A fan-out whose children run on reusable workers (flyte.ReusePolicy): Python, flyte and this module stay
loaded between actions. `taskdeck run examples/reusable_fanout.py sum_of_squares --n 100`."""

import asyncio

import flyte

pooled = flyte.TaskEnvironment(name="pooled", reusable=flyte.ReusePolicy(replicas=2, concurrency=64))
env = flyte.TaskEnvironment(name="reusable_fanout", depends_on=[pooled])


@pooled.task
async def square(x: int) -> int:
    return x * x


@env.task
async def sum_of_squares(n: int) -> int:
    return sum(await asyncio.gather(*[square.aio(i) for i in range(n)]))
