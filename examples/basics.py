"""Small Flyte v2 tasks for trying TaskDeck: `taskdeck run examples/basics.py add --x 2 --y 40`."""

import flyte

env = flyte.TaskEnvironment(name="basics")


@env.task
def add(x: int, y: int) -> int:
    return x + y


@env.task
def greet(name: str = "world", excited: bool = False) -> str:
    return f"hello {name}" + ("!" if excited else "")


@env.task
def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


@env.task(retries=2)
def always_fails(x: int) -> int:
    raise RuntimeError(f"attempt failed for {x}")
