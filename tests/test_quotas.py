"""Quotas: per project/domain and per queue limits on running actions; the others wait as
WaitingForResources saying which quota, start as capacity frees, fairly across runs, and a parent awaiting
its children lends them its grant."""

from __future__ import annotations

import time

import pytest

from engine.engine import Engine, EngineConfig
from engine.events import decode_event
from engine.phases import ActionPhase
from engine.plugins.core import PhaseInfo
from engine.quotas import FairQuota, QuotaConfigError, ResourceManager, parse_limits
from helpers import ScriptedPlugin, eventually, task_spec


def test_freed_capacity_goes_to_the_run_holding_least():
    quota = FairQuota("project p/d", 2)
    woken: list[str] = []
    assert quota.acquire("a1", "ra", None, lambda: woken.append("a1"))
    assert quota.acquire("a2", "ra", None, lambda: woken.append("a2"))
    for name in ("a3", "a4", "a5"):
        assert not quota.acquire(name, "ra", None, lambda n=name: woken.append(n))
    assert not quota.acquire("b1", "rb", None, lambda: woken.append("b1"))  # arrived last
    quota.release("a1")
    assert woken == ["b1"]  # run b holds none, run a holds one: b goes first
    assert not quota.acquire("a3", "ra", None, lambda: None)  # a's earlier waiter may not take b's place
    assert quota.acquire("b1", "rb", None, lambda: None)
    quota.release("a2")
    assert woken == ["b1", "a3"]  # now a and b hold one each: the earliest waiter


def test_a_parent_lends_its_grant_to_its_children():
    quota = FairQuota("project p/d", 1)
    assert quota.acquire("parent", "r", None, lambda: None)
    assert quota.acquire("child1", "r", "parent", lambda: None)  # the parent's grant, lent
    assert not quota.acquire("child2", "r", "parent", lambda: None)  # lent once
    assert not quota.acquire("other", "r2", None, lambda: None)


def test_limits_parse_and_refuse_bad_entries():
    assert parse_limits(["p/d=3"], "--quota") == {"p/d": 3}
    assert parse_limits(["gpu=1"], "--queue-limit") == {"gpu": 1}
    for bad in ("p/d", "p=3", "p/d=0", "p/d=x"):
        with pytest.raises(QuotaConfigError):
            parse_limits([bad], "--quota")
    assert not ResourceManager()


@pytest.fixture
async def engine(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=0.5,
                                 project_quotas={"flytesnacks/development": 2}, queue_quotas={"gpu": 1}))
    started: dict[str, float] = {}

    def script(tctx, _index):
        name = tctx.metadata.owner_name
        started.setdefault(name, time.monotonic())
        if tctx.metadata.action_name == "a0" and tctx.metadata.run_name.startswith("rhold"):
            return PhaseInfo.running()
        return PhaseInfo.success() if time.monotonic() - started[name] > 0.4 else PhaseInfo.running()

    engine.test_plugin = ScriptedPlugin(script)
    engine.test_plugin.started = started
    engine.registry.register(engine.test_plugin)
    await engine.start()
    yield engine
    await engine.stop()


async def test_over_quota_actions_wait_saying_which_quota_and_start_as_capacity_frees(engine):
    runs = [await engine.runs.create_run(task_spec("scripted"), name=f"rq{i}") for i in range(3)]
    results = [await engine.runs.wait_for_run(r.run_name, timeout=20) for r in runs]
    assert all(r.phase == ActionPhase.SUCCEEDED for r in results)
    events = [decode_event(e) for e in await engine.runs.list_events(runs[2].key)]
    reasons = [c.message for e in events for c in e.cluster_events]
    assert any("waiting for quota project flytesnacks/development: 2 of 2 running" in r for r in reasons), reasons
    starts = sorted(engine.test_plugin.started[f"rq{i}-a0"] for i in range(3))
    assert starts[2] - starts[0] >= 0.3  # the third began only once one of the first two had ended


async def test_two_runs_competing_share_the_quota_fairly(engine):
    holder = await engine.runs.create_run(task_spec("scripted"), name="rholda")
    await eventually(lambda: "rholda-a0" in engine.test_plugin.started)
    for i in range(5):  # run a's root waits on five children
        await engine.runs.create_action("rholda", f"c{i}", "a0", task_spec("scripted"), holder.input_uri)
    await eventually(lambda: "rholda-c0" in engine.test_plugin.started)
    late = await engine.runs.create_run(task_spec("scripted"), name="rlate")
    assert (await engine.runs.wait_for_run(late.run_name, timeout=20)).phase == ActionPhase.SUCCEEDED
    started = engine.test_plugin.started
    children_before = [n for n in (f"rholda-c{i}" for i in range(5)) if n in started and started[n] < started["rlate-a0"]]
    assert len(children_before) <= 3, children_before  # the late run did not wait for all of a's children
    await engine.runs.abort_action("rholda")


async def test_a_queue_limit_holds_its_queue_only(engine):
    first = await engine.runs.create_run(task_spec("scripted"), name="rgpu1", queue="gpu")
    second = await engine.runs.create_run(task_spec("scripted"), name="rgpu2", queue="gpu")
    results = [await engine.runs.wait_for_run(r.run_name, timeout=20) for r in (first, second)]
    assert all(r.phase == ActionPhase.SUCCEEDED for r in results)
    started = engine.test_plugin.started
    assert abs(started["rgpu2-a0"] - started["rgpu1-a0"]) >= 0.35  # one at a time on queue gpu
    snapshot = {q["name"]: q for q in engine.reconciler.quotas.snapshot()}
    assert snapshot["queue gpu"]["inUse"] == 0 and snapshot["project flytesnacks/development"]["limit"] == 2


async def test_the_workers_screen_lists_the_quotas(engine):
    from console.screens.workers import pool_summary

    await engine.runs.create_run(task_spec("scripted"), name="rholdb")
    await eventually(lambda: "rholdb-a0" in engine.test_plugin.started)
    text = pool_summary(engine.services.workers())
    assert "quota [b]project flytesnacks/development[/]  1 of 2 running, 0 waiting  (rholdb 1)" in text
    assert "quota [b]queue gpu[/]  0 of 1 running" in text
    await engine.runs.abort_action("rholdb")


QUEUED_TASKS = '''
import asyncio
import time

import flyte

env = flyte.TaskEnvironment(name="queued")
gpu = flyte.TaskEnvironment(name="gpu_env", queue="gpu")


@gpu.task
async def on_gpu(i: int) -> float:
    start = time.time()
    await asyncio.sleep(0.5)
    return start


@env.task
async def fan(n: int) -> float:
    starts = sorted(await asyncio.gather(*(on_gpu(i) for i in range(n))))
    return min(b - a for a, b in zip(starts, starts[1:]))
'''


@pytest.mark.sdk
async def test_real_children_on_a_limited_queue_run_one_at_a_time(tmp_path):
    from helpers import run_sdk_task, task_file

    engine = Engine(EngineConfig(data_dir=tmp_path / "data", queue_quotas={"gpu": 1}))
    await engine.start()
    try:
        result = await run_sdk_task(engine, task_file(tmp_path, "queued.py", QUEUED_TASKS), "fan", timeout=180, n=3)
        assert result.phase == ActionPhase.SUCCEEDED, result.error
        assert result.outputs["o0"] >= 0.45  # each child on queue gpu started after the one before had ended
    finally:
        await engine.stop()
