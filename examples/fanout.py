"""Flyte v2 parents that launch child actions at run time: `taskdeck run examples/fanout.py sum_of_squares --n 5`."""

import asyncio

import flyte

env = flyte.TaskEnvironment(name="fanout")


@env.task
def square(x: int) -> int:
    return x * x


@env.task
async def sum_of_squares(n: int) -> int:
    return sum(await asyncio.gather(*[square.aio(i) for i in range(n)]))


@env.task
def fragile(x: int) -> int:
    if x == 3:
        raise ValueError(f"cannot handle {x}")
    return x


@env.task
async def survives_a_child_failure(x: int) -> str:
    try:
        await fragile.aio(x)
        return "no error"
    except Exception as exc:  # the child's failure arrives as an exception in the parent
        return f"caught {type(exc).__name__}: {exc}"


@flyte.trace
async def double(x: int) -> int:
    return 2 * x


@env.task
async def traced(x: int) -> int:
    doubled = await double(x)
    return await square.aio(doubled)


@env.task
async def approval(x: int) -> int:
    condition = await flyte.new_condition.aio("approve", prompt=f"Approve {x}?", data_type=bool)
    approved = await condition.wait.aio()
    return x if approved else -x


@env.task
async def slow_children(n: int) -> int:
    return sum(await asyncio.gather(*[nap.aio(i) for i in range(n)]))


@env.task
async def nap(x: int) -> int:
    await asyncio.sleep(300)
    return x
