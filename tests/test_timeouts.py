"""Timeouts: per-attempt runtime (retryable), queueing limit and overall deadline; they survive a restart."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.plugins.core import PhaseInfo
from helpers import ScriptedPlugin, eventually, sleep_inputs, sleep_spec, task_spec


def _spec(*, timeout=None, queued=None, deadline=None, retries=0, base=None):
    spec = base or sleep_spec()
    md = spec.task_template.metadata
    md.retries.retries = retries
    if timeout is not None:
        md.timeout.FromTimedelta(dt.timedelta(seconds=timeout))
    if queued is not None:
        md.timeouts.queued_timeout.FromTimedelta(dt.timedelta(seconds=queued))
    if deadline is not None:
        md.timeouts.deadline.FromTimedelta(dt.timedelta(seconds=deadline))
    return spec


@pytest.fixture
async def engine(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=5.0))
    engine.registry.register(ScriptedPlugin([PhaseInfo.queued()]))
    await engine.start()
    yield engine
    await engine.stop()


async def _events(engine, run):
    return [(e.attempt, ActionPhase(e.phase).name) for e in await engine.runs.list_events(run.key)]


async def test_runtime_timeout_retries_then_ends_timed_out(engine):
    run = await engine.runs.create_run(_spec(timeout=0.3, retries=1), sleep_inputs(30))
    result = await engine.runs.wait_for_run(run.run_name, timeout=10)
    assert result.phase == ActionPhase.TIMED_OUT and result.run.attempts == 2
    assert result.error["code"] == "TaskTimeout" and "0.3s" in result.error["message"]
    assert await _events(engine, run) == [(1, "RUNNING"), (1, "FAILED"), (2, "QUEUED"), (2, "RUNNING"),
                                          (2, "TIMED_OUT")]
    assert result.run.duration_ms < 5000  # enforced on time, not at the 5 s poll


async def test_deadline_ends_the_action_whatever_its_retries(engine):
    run = await engine.runs.create_run(_spec(deadline=0.4, retries=5), sleep_inputs(30))
    result = await engine.runs.wait_for_run(run.run_name, timeout=10)
    assert result.phase == ActionPhase.TIMED_OUT and result.run.attempts == 1
    assert result.error["code"] == "DeadlineExceeded"


async def test_queueing_limit(engine):
    run = await engine.runs.create_run(_spec(queued=0.3, base=task_spec("scripted")))
    result = await engine.runs.wait_for_run(run.run_name, timeout=10)
    assert result.phase == ActionPhase.TIMED_OUT and result.error["code"] == "QueuedTimeout"


async def test_a_runtime_timeout_survives_an_engine_restart(tmp_path):
    config = EngineConfig(data_dir=tmp_path, serve=False, requeue_after=30.0)
    engine = Engine(config)
    await engine.start()
    run = await engine.runs.create_run(_spec(timeout=1.0), sleep_inputs(30))
    await eventually(lambda: engine.store.peek(f"{run.run_name}-a0").status.plugin_phase == "PhaseRunning")
    await engine.stop()
    await asyncio.sleep(1.2)  # the bound passes while no engine runs

    engine = Engine(config)
    await engine.start()
    try:
        started = asyncio.get_running_loop().time()
        result = await engine.runs.wait_for_run(run.run_name, timeout=10)
        assert result.phase == ActionPhase.TIMED_OUT and result.error["code"] == "TaskTimeout"
        assert asyncio.get_running_loop().time() - started < 3  # anchored at the persisted start time
    finally:
        await engine.stop()
