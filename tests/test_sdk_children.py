"""Real `flyte` SDK parents launching children, traces and conditions through the engine's Connect services."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest

from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.model import ACTION_TYPE_CONDITION, ACTION_TYPE_TRACE
from helpers import dump_engine_state, eventually, run_sdk_task, start_sdk_task

pytestmark = pytest.mark.sdk

EXAMPLES = Path(__file__).parent.parent / "examples"


async def _engine(tmp_path, **overrides) -> Engine:
    config = EngineConfig(data_dir=tmp_path / "data", requeue_after=2.0, **overrides)
    engine = Engine(config)
    await engine.start()
    return engine


@pytest.fixture(params=["actions-service", "queue-service"])
async def engine(request, tmp_path):
    engine = await _engine(tmp_path, use_actions_service=request.param == "actions-service")
    yield engine
    await engine.stop()


start = start_sdk_task


async def run(engine: Engine, file: Path, task_name: str, timeout: float = 90, **inputs):
    return await run_sdk_task(engine, file, task_name, timeout=timeout, **inputs)


async def test_fan_out_returns_the_sum_and_builds_the_tree(engine):
    result = await run(engine, EXAMPLES / "fanout.py", "sum_of_squares", n=5)
    assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": 0 + 1 + 4 + 9 + 16}
    actions = await engine.runs.list_actions(result.run.run_name)
    children = [a for a in actions if a.name != "a0"]
    assert len(children) == 5
    assert all(a.parent_action_name == "a0" and a.short_name == "square" for a in children)
    assert all(ActionPhase(a.phase) == ActionPhase.SUCCEEDED for a in children)
    child = engine.store.peek(f"{result.run.run_name}-{children[0].name}")
    assert child.metadata.owner_references[0].name == f"{result.run.run_name}-a0"
    assert child.metadata.labels["flyte.org/is-root"] == "false"


async def test_a_child_failure_is_caught_in_the_parent(engine):
    result = await run(engine, EXAMPLES / "fanout.py", "survives_a_child_failure", x=3)
    assert result.phase == ActionPhase.SUCCEEDED
    assert result.outputs["o0"] == "caught RuntimeUserError: cannot handle 3"
    child = next(a for a in await engine.runs.list_actions(result.run.run_name) if a.name != "a0")
    assert ActionPhase(child.phase) == ActionPhase.FAILED
    assert (child.error_kind, child.error_code) == ("USER", "ValueError")


async def test_a_trace_step_is_recorded_as_a_trace_action(engine):
    result = await run(engine, EXAMPLES / "fanout.py", "traced", x=20)
    assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": 1600}
    actions = {a.short_name: a for a in await engine.runs.list_actions(result.run.run_name)}
    trace = actions["double"]
    assert trace.action_type == ACTION_TYPE_TRACE and trace.task_type == "trace"
    assert ActionPhase(trace.phase) == ActionPhase.SUCCEEDED and trace.parent_action_name == "a0"
    assert engine.store.peek(f"{result.run.run_name}-{trace.name}") is None  # traces get no TaskAction
    assert ActionPhase(actions["square"].phase) == ActionPhase.SUCCEEDED


@pytest.mark.parametrize("engine", ["actions-service"], indirect=True)  # the SDK sends conditions only there
async def test_a_condition_waits_paused_until_signalled(engine):
    record = await start(engine, EXAMPLES / "fanout.py", "approval", x=7)

    async def paused():
        actions = await engine.runs.list_actions(record.run_name)
        return [a for a in actions if a.action_type == ACTION_TYPE_CONDITION and a.phase == ActionPhase.PAUSED]

    condition = (await eventually(paused, timeout=60))[0]
    with pytest.raises(ValueError):
        await engine.runs.signal_text(record.run_name, "approve", "perhaps")  # not a bool
    await engine.runs.signal_text(record.run_name, "approve", "false")
    result = await engine.runs.wait_for_run(record.run_name, timeout=60)
    assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": -7}
    obj = engine.store.peek(f"{record.run_name}-{condition.name}")
    assert obj.status.condition("Succeeded").reason == "Signaled"
    assert obj.status.signalled_by == "taskdeck"


async def test_aborting_a_running_parent_aborts_the_whole_subtree(engine):
    record = await start(engine, EXAMPLES / "fanout.py", "slow_children", n=3)

    async def children_running():
        actions = await engine.runs.list_actions(record.run_name)
        kids = [a for a in actions if a.name != "a0" and a.phase == ActionPhase.RUNNING]
        return kids if len(kids) == 3 else None

    await eventually(children_running, timeout=60)
    pids = [engine.store.peek(f"{record.run_name}-{name}").status.plugin_state
            for name in [a.name for a in await engine.runs.list_actions(record.run_name)]]
    await engine.runs.abort_action(record.run_name, reason="stop")
    try:
        result = await engine.runs.wait_for_run(record.run_name, timeout=90)  # once seen over 30 s under load
    except TimeoutError:
        await dump_engine_state(engine, record.run_name)  # a rare hang in full CI runs: leave its trace
        raise
    assert result.phase == ActionPhase.ABORTED
    actions = await eventually(lambda: _all_ended(engine, record.run_name), timeout=60)
    assert {ActionPhase(a.phase) for a in actions} == {ActionPhase.ABORTED}
    import json

    from engine.plugins.process import alive

    for state in pids:  # gone, or its pid now another process's (pid_max can be 32768: pids come round)
        launch = json.loads(state)
        assert not alive(launch["pid"], launch.get("startTicks"))


async def _all_ended(engine, run_name):
    actions = await engine.runs.list_actions(run_name)
    return actions if all(ActionPhase(a.phase).is_terminal for a in actions) else None


async def test_fan_out_of_twenty_children(tmp_path):
    engine = await _engine(tmp_path, max_processes=8)
    try:
        result = await run(engine, EXAMPLES / "fanout.py", "sum_of_squares", timeout=180, n=20)
        assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": sum(i * i for i in range(20))}
        assert len(await engine.runs.list_actions(result.run.run_name)) == 21
    finally:
        await engine.stop()


RETRYING_PARENT = textwrap.dedent('''
    import asyncio, os
    import flyte

    env = flyte.TaskEnvironment(name="retrying")

    @env.task
    def child(x: int) -> int:
        return x + 100

    @env.task(retries=1)
    async def parent(n: int, marker: str) -> int:
        total = sum(await asyncio.gather(*[child.aio(i) for i in range(n)]))
        if not os.path.exists(marker):  # the first attempt fails after its children finished
            open(marker, "w").close()
            raise RuntimeError("first attempt fails on purpose")
        return total
''')


async def test_a_parent_re_attempt_does_not_re_run_finished_children(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "retrying.py").write_text(RETRYING_PARENT)
    engine = await _engine(tmp_path)
    try:
        result = await run(engine, code / "retrying.py", "parent", n=3, marker=str(tmp_path / "marker"))
        assert result.phase == ActionPhase.SUCCEEDED and result.run.attempts == 2
        assert result.outputs == {"o0": 100 + 101 + 102}
        children = [a for a in await engine.runs.list_actions(result.run.run_name) if a.name != "a0"]
        assert len(children) == 3  # the same deterministic names: no duplicates
        for child in children:
            assert child.attempts == 1
            logs = list((engine.data_dir / "logs" / result.run.run_name / child.name).iterdir())
            assert [p.name for p in logs] == ["1.log"]  # each child ran exactly once
    finally:
        await engine.stop()


async def test_stopping_the_engine_ends_live_watch_streams_and_a_new_engine_adopts_the_tasks(tmp_path):
    engine = await _engine(tmp_path)
    record = await start(engine, EXAMPLES / "fanout.py", "slow_children", n=2)

    async def children_running():
        actions = await engine.runs.list_actions(record.run_name)
        return len([a for a in actions if a.name != "a0" and a.phase == ActionPhase.RUNNING]) == 2

    await eventually(children_running, timeout=60)
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(engine.stop(), 15)  # the parent's watch stream is open: it must not block
    assert asyncio.get_running_loop().time() - started < 10

    old_url = engine.url
    engine = await _engine(tmp_path)  # the task processes kept running; the new engine adopts them
    try:
        assert engine.url == old_url  # same address: the running parent can still reach its controller
        await asyncio.sleep(1.0)
        actions = await engine.runs.list_actions(record.run_name)
        assert all(ActionPhase(a.phase) == ActionPhase.RUNNING for a in actions)
        await engine.runs.abort_action(record.run_name)
        actions = await eventually(lambda: _all_ended(engine, record.run_name), timeout=30)
        assert {ActionPhase(a.phase) for a in actions} == {ActionPhase.ABORTED}
    finally:
        await engine.stop()
