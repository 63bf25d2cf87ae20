"""Parents, children, traces, retries, errors and nested outputs: what a Flyte v2 program does beyond one
task. Each entry point returns a base64 JSON summary, so both runners print it the same way."""

import asyncio
import base64
import dataclasses
import datetime
import json
import typing

import flyte
import flyte.errors

env = flyte.TaskEnvironment(name="compat_flows")


def summary(value) -> str:
    return base64.b64encode(json.dumps(value, sort_keys=True, default=str).encode()).decode()


@dataclasses.dataclass
class Point:
    x: float
    y: float
    tags: typing.List[str] = dataclasses.field(default_factory=list)


@env.task
async def square(x: int) -> int:
    return x * x


@env.task
async def make_point(x: float, y: float) -> Point:
    return Point(x=x, y=y, tags=["made"])


@flyte.trace
async def double(x: int) -> int:
    return 2 * x


@env.task
async def fan_out(n: int) -> str:
    squares = await asyncio.gather(*(square(i) for i in range(n)))
    traced = [await double(s) for s in squares]
    point = await make_point(1.5, float(n))
    return summary({"squares": list(squares), "traced": traced, "point": dataclasses.asdict(point)})


@env.task(retries=flyte.RetryStrategy(count=3, backoff=flyte.Backoff(base=datetime.timedelta(seconds=0.2))))
async def flaky(ledger: str, fail_times: int) -> str:
    """Fails until it has been tried ``fail_times`` times (counted in ``ledger``, a directory)."""
    import pathlib
    import uuid

    tries = pathlib.Path(ledger)
    tries.mkdir(parents=True, exist_ok=True)
    (tries / uuid.uuid4().hex).touch()
    count = len(list(tries.iterdir()))
    if count <= fail_times:
        raise RuntimeError(f"flaky on try {count}")
    return summary({"succeeded_on_try": count})


@env.task(retries=3)
async def refuses(x: int) -> int:
    raise flyte.errors.NonRecoverableError(f"no retry for {x}")


@env.task
async def fails(x: int) -> int:
    raise ValueError(f"bad value {x}")


@env.task
async def evens_odds(n: int) -> typing.Dict[str, typing.List[int]]:
    return {"evens": [i for i in range(n) if i % 2 == 0], "odds": [i for i in range(n) if i % 2]}


@env.task
async def maybe(flag: bool = False) -> typing.Optional[str]:
    return "yes" if flag else None


@env.task
async def containers(n: int, flag: bool = False) -> str:
    split = await evens_odds(n)
    return summary({"split": split, "maybe": await maybe(flag)})


@env.task
async def retried(ledger: str, fail_times: int) -> str:
    return await flaky(ledger, fail_times)


@env.task
async def refused_child(x: int) -> int:
    return await refuses(x)
