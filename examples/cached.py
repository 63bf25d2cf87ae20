"""Cached tasks: a cached child is computed once and then served from the cache; ten identical calls of a
serializable cached task at once run it once, the others wait for its result.

    taskdeck run examples/cached.py square_twice --x 7 --ledger /tmp/ledger
    taskdeck run examples/cached.py ten_at_once --x 1 --ledger /tmp/ledger
    taskdeck cache list

Each real execution appends a line to the ledger file, so you can count them.
"""

import asyncio

import flyte

env = flyte.TaskEnvironment(name="cached")


def _record(ledger: str, what: str) -> None:
    with open(ledger, "a") as f:
        f.write(what + "\n")


# "override": the cache version is ours to bump; the note does not count towards the key.
@env.task(cache=flyte.Cache(behavior="override", version_override="v1", ignored_inputs=("note",)))
async def slow_square(x: int, ledger: str, note: str = "") -> int:
    _record(ledger, f"slow_square({x})")
    await asyncio.sleep(0.5)
    return x * x


@env.task
async def square_twice(x: int, ledger: str) -> int:
    """Calls the cached child; a second run of this parent gets the child's result from the cache."""
    return await slow_square.aio(x, ledger, note="first") + 0


@env.task(cache=flyte.Cache(behavior="override", version_override="v1", serialize=True))
async def expensive(x: int, ledger: str) -> int:
    _record(ledger, f"expensive({x})")
    await asyncio.sleep(2)
    return x + 100


@env.task
async def ten_at_once(x: int, ledger: str) -> list[int]:
    return list(await asyncio.gather(*[expensive.aio(x, ledger) for _ in range(10)]))
