"""Tasks for the kill -9 harness: every task body appends its attempt's output path to a ledger first,
so a body that starts twice for one attempt shows up as a repeated line."""

import asyncio

import flyte

env = flyte.TaskEnvironment(name="kill9")


def _mark(ledger: str) -> int:
    """Record this body's start; returns the attempt number (the last part of the output path)."""
    path = flyte.ctx().output_path.rstrip("/")
    with open(ledger, "a") as f:
        f.write(path + "\n")
    return int(path.rsplit("/", 1)[1])


@env.task
async def leaf(x: int, ledger: str) -> int:
    _mark(ledger)
    await asyncio.sleep(0.3)
    return x * x


@env.task(retries=1)
async def flaky(x: int, ledger: str) -> int:
    """Fails its first attempt; the second returns x + 2."""
    attempt = _mark(ledger)
    if attempt == 1:
        raise RuntimeError("the first attempt fails")
    return x + attempt


@env.task
async def parent(n: int, ledger: str) -> int:
    _mark(ledger)
    squares = await asyncio.gather(*(leaf.aio(i, ledger) for i in range(n)))
    return sum(squares) + await flaky.aio(1, ledger)


# The same tree with the children on reusable workers (flyte.ReusePolicy): a kill -9 leaves workers running
# actions, which the next engine adopts; none may run twice.
pool = flyte.TaskEnvironment(name="kill9_pool", reusable=flyte.ReusePolicy(replicas=2, concurrency=4))


@pool.task
async def pooled_leaf(x: int, ledger: str) -> int:
    _mark(ledger)
    await asyncio.sleep(0.3)
    return x * x


@pool.task(retries=1)
async def pooled_flaky(x: int, ledger: str) -> int:
    attempt = _mark(ledger)
    if attempt == 1:
        raise RuntimeError("the first attempt fails")
    return x + attempt


@env.task
async def pooled_parent(n: int, ledger: str) -> int:
    _mark(ledger)
    squares = await asyncio.gather(*(pooled_leaf.aio(i, ledger) for i in range(n)))
    return sum(squares) + await pooled_flaky.aio(1, ledger)
