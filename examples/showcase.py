"""A run that shows off the console: a grouped fan-out, a flaky child that retries, and a child that fails.

    taskdeck run --tui examples/showcase.py pipeline --n 4
"""

import asyncio
import os
import tempfile

import flyte

env = flyte.TaskEnvironment(name="showcase")


@env.task
async def square(x: int) -> int:
    await asyncio.sleep(0.5 + x * 0.2)
    return x * x


@env.task(retries=2)
def flaky(run_key: str) -> str:
    """Fails on its first attempt, succeeds on the next (the retry shows as [x2])."""
    marker = os.path.join(tempfile.gettempdir(), f"taskdeck-flaky-{run_key}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ConnectionError("upstream service unavailable (first attempt fails on purpose)")
    return "recovered"


@env.task
def validate(total: int) -> int:
    if total % 2 == 0:
        raise ValueError(f"total {total} is even: validation rejects it")
    return total


@env.task
async def pipeline(n: int) -> str:
    with flyte.group("squares"):  # one folder in the tree, its status rolled up from its members
        squares = await asyncio.gather(*[square.aio(i) for i in range(n)])
    status = await flaky.aio(flyte.ctx().action.run_name)
    try:
        await validate.aio(sum(squares))
        verdict = "valid"
    except Exception as exc:
        verdict = f"invalid ({exc})"
    return f"sum={sum(squares)} flaky={status} validation={verdict}"
