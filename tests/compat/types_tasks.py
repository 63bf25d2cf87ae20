"""Task inputs of every kind `flyte run` takes on its command line; each task returns a summary of what it
received (base64 of JSON, so both runners print it the same way)."""

import base64
import dataclasses
import datetime
import enum
import json
import typing

import flyte
import pydantic
from flyte.io import Dir, File

env = flyte.TaskEnvironment(name="compat_types")


def summary(value) -> str:
    return base64.b64encode(json.dumps(value, sort_keys=True, default=str).encode()).decode()


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@dataclasses.dataclass
class Features:
    feature_a: float
    feature_b: int = 3
    tags: typing.List[str] = dataclasses.field(default_factory=list)


class Model(pydantic.BaseModel):
    name: str
    weights: typing.Dict[str, float]
    nested: typing.Optional[Features] = None


@env.task
async def scalars(count: int, ratio: float, name: str, flag: bool = False, loud: bool = True) -> str:
    """Plain scalars and flags.

    :param count: how many
    :param ratio: a float
    """
    return summary({"count": count, "ratio": ratio, "name": name, "flag": flag, "loud": loud,
                    "types": [type(count).__name__, type(ratio).__name__]})


@env.task
async def times(start_time: datetime.datetime, day: datetime.date, duration: datetime.timedelta) -> str:
    return summary({"start": start_time.replace(tzinfo=None).isoformat(), "day": str(day),
                    "seconds": duration.total_seconds()})


@env.task
async def choices(color: Color, maybe: typing.Optional[int] = None, either: typing.Union[int, str] = 0) -> str:
    return summary({"color": color.value, "maybe": maybe, "either": [either, type(either).__name__]})


@env.task
async def structured(features: Features, model: Model, numbers: typing.List[int],
                     table: typing.Dict[str, typing.List[float]]) -> str:
    return summary({"features": dataclasses.asdict(features), "a_type": type(features.feature_a).__name__,
                    "model": model.model_dump(), "numbers": numbers, "table": table})


@env.task
async def files(data: File, folder: Dir) -> str:
    async with data.open("rb") as f:
        content = bytes(await f.read()).decode()
    names = []
    async for item in folder.walk():
        names.append(item.name)
    return summary({"content": content, "names": sorted(names)})
