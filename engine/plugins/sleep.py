"""``core-sleep``: succeeds after its ``duration`` input has elapsed. No process, no outputs.

As Flyte's core sleep plugin: exactly one input named ``duration`` and no outputs, otherwise
PermanentFailure ``BadTaskSpecification``. Unlike Flyte's in-memory map, the start time lives in the
plugin state, so a restarted engine does not start the sleep over.
"""

from __future__ import annotations

import asyncio
import time

from flyteidl2.task import common_pb2

from engine.plugins.core import PhaseInfo, Plugin, TaskExecutionContext, TaskInfo, Transition

STATE_VERSION = 1


def _duration_seconds(tctx: TaskExecutionContext) -> float:
    interface = tctx.task_template.interface
    inputs = [v.key for v in interface.inputs.variables]
    if inputs != ["duration"] or interface.outputs.variables:
        raise ValueError("core-sleep needs exactly one input named 'duration' and no outputs")
    data = common_pb2.Inputs()
    with open(tctx.input_path, "rb") as f:
        data.ParseFromString(f.read())
    for named in data.literals:
        if named.name == "duration":
            primitive = named.value.scalar.primitive
            kind = primitive.WhichOneof("value")
            if kind == "duration":
                return primitive.duration.ToTimedelta().total_seconds()
            if kind in ("integer", "float_value"):
                return float(getattr(primitive, kind))
            raise ValueError(f"duration must be a duration or a number, got {kind}")
    raise ValueError("input 'duration' is missing")


class SleepPlugin(Plugin):
    id = "core-sleep"
    task_types = ("core-sleep", "sleep")

    def __init__(self) -> None:
        self._timers: dict[str, asyncio.TimerHandle] = {}

    async def handle(self, tctx: TaskExecutionContext) -> Transition:
        state = tctx.plugin_state.get()
        if state is None:
            try:
                duration = _duration_seconds(tctx)
            except (OSError, ValueError) as exc:
                return Transition.of(PhaseInfo.failure("BadTaskSpecification", str(exc)))
            if duration <= 0:
                return Transition.of(PhaseInfo.success())
            state = {"startedAt": time.time(), "duration": duration}
            tctx.plugin_state.put(STATE_VERSION, state)
        remaining = state["startedAt"] + state["duration"] - time.time()
        if remaining <= 0:
            return Transition.of(PhaseInfo.success())
        name = tctx.metadata.generated_name
        if name not in self._timers:
            loop = asyncio.get_running_loop()
            self._timers[name] = loop.call_later(remaining, self._wake, name, tctx.enqueue_owner)
        return Transition.of(PhaseInfo.running(info=TaskInfo()))

    def _wake(self, name: str, enqueue_owner) -> None:
        self._timers.pop(name, None)
        enqueue_owner()

    async def abort(self, tctx: TaskExecutionContext) -> None:
        timer = self._timers.pop(tctx.metadata.generated_name, None)
        if timer is not None:
            timer.cancel()

    async def finalize(self, tctx: TaskExecutionContext) -> None:
        await self.abort(tctx)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
