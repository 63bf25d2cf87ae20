import base64
import json
import typing

import flyte

env = flyte.TaskEnvironment(name="shapes")


class Options(typing.TypedDict):
    depth: int
    name: str


class Pair(typing.NamedTuple):
    left: int
    right: str


@env.task
async def typed(opts: Options) -> str:
    return base64.b64encode(json.dumps(dict(opts), sort_keys=True).encode()).decode()


@env.task
async def named(pair: Pair) -> str:
    return base64.b64encode(json.dumps(list(pair)).encode()).decode()
