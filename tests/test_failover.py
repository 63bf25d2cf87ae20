"""Failover on the Kubernetes backend: two engines on one namespace (the API server emulator), the leader
dies mid-run and the follower finishes its runs. With the runs data in PostgreSQL (a real server the
suite starts) nothing is lost: the follower's `get actions` and events show the whole run with no gap."""

from __future__ import annotations

import asyncio

import pytest

from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.plugins.core import PhaseInfo
from helpers import ScriptedPlugin, eventually, task_spec
from kube_apiserver import EmulatorThread


@pytest.fixture
def emulator():
    with EmulatorThread() as running:
        yield running


def engine(tmp_path, emulator, name: str, plugin: ScriptedPlugin, database: str | None) -> Engine:
    made = Engine(EngineConfig(data_dir=tmp_path / name, serve=False, requeue_after=0.2, backend="kubernetes",
                               kubeconfig=emulator.kubeconfig(tmp_path / f"{name}.kubeconfig", "flyte"),
                               lease_seconds=2.0, database=database))  # renewals survive a loaded machine
    made.registry.register(plugin)
    return made


async def die(leader: Engine) -> None:
    """As a kill -9 looks to the others: no more renewals or reconciles, no release, no goodbye."""
    leader._lease_task.cancel()
    await leader.manager.stop()


async def test_the_follower_finishes_the_dead_leaders_run_and_shows_it_whole_from_postgresql(
        tmp_path, emulator, postgres_url):
    leader = engine(tmp_path, emulator, "a", ScriptedPlugin([PhaseInfo.running()]), postgres_url)
    await leader.start()
    follower = engine(tmp_path, emulator, "b", ScriptedPlugin([PhaseInfo.success()]), postgres_url)
    follower.reconciler.data_roots.append(str((tmp_path / "a").resolve()))  # raw data: shared on a cluster
    following = asyncio.create_task(follower.start())
    try:
        run = await leader.runs.create_run(task_spec("scripted"))
        name = f"{run.run_name}-a0"
        await eventually(lambda: leader.store.peek(name) is not None
                         and leader.store.peek(name).status.plugin_phase == "PhaseRunning")
        before = [(e.attempt, e.phase) for e in await leader.runs.list_events((*run.key[:3], "a0"))]
        assert (1, int(ActionPhase.RUNNING)) in before
        await eventually(lambda: follower.elector.role == "follower")
        await die(leader)
        await asyncio.wait_for(following, 10)
        assert follower.elector.role == "leader"
        done = await follower.runs.wait_for_run(run.run_name, timeout=20)
        assert done.phase == ActionPhase.SUCCEEDED
        # the follower reads the run the leader created, and every event of it, from the shared database
        [action] = await follower.runs.list_actions(run.run_name)
        assert action.name == "a0" and action.phase == ActionPhase.SUCCEEDED and action.duration_ms is not None
        after = [(e.attempt, e.phase) for e in await follower.runs.list_events((*run.key[:3], "a0"))]
        assert after[:len(before)] == before  # the leader's events, then the follower's: no gap
        assert after[-1] == (1, int(ActionPhase.SUCCEEDED))
        phases = [p for _, p in after]
        assert phases == sorted(phases, key=lambda p: list(ActionPhase).index(ActionPhase(p)))
        assert "127.0.0.1" in follower.services.backend()["runsDatabase"]
        assert ":***@" in follower.services.backend()["runsDatabase"]  # never the password
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await follower.stop()
        await leader.stop()


async def test_with_sqlite_the_follower_rebuilds_the_actions_table_and_says_what_it_could_not_recover(
        tmp_path, emulator):
    leader = engine(tmp_path, emulator, "a", ScriptedPlugin([PhaseInfo.running()]), None)
    await leader.start()
    follower = engine(tmp_path, emulator, "b", ScriptedPlugin([PhaseInfo.success()]), None)
    follower.reconciler.data_roots.append(str((tmp_path / "a").resolve()))
    following = asyncio.create_task(follower.start())
    try:
        run = await leader.runs.create_run(task_spec("scripted"))
        child = await leader.runs.create_action(run.run_name, "c1", "a0", task_spec("scripted"), run.input_uri)
        name = f"{run.run_name}-a0"
        await eventually(lambda: leader.store.peek(name) is not None
                         and leader.store.peek(name).status.plugin_phase == "PhaseRunning")
        await eventually(lambda: follower.elector.role == "follower")
        assert await follower.runs.store.find_run(run.run_name) is None  # its own database has never seen it
        await die(leader)
        await asyncio.wait_for(following, 10)
        done = await follower.runs.wait_for_run(run.run_name, timeout=20)
        assert done.phase == ActionPhase.SUCCEEDED
        actions = {a.name: a for a in await follower.runs.list_actions(run.run_name)}
        assert set(actions) == {"a0", child.name}
        assert actions[child.name].parent_action_name == "a0"
        assert actions["a0"].task_name == run.task_name and actions["a0"].input_uri == run.input_uri
        history = leader.store.peek(name).status.phase_history
        events = await follower.runs.list_events((*run.key[:3], "a0"))
        recovered = [e for e in events if e.phase == int(ActionPhase.RUNNING)]
        assert recovered and recovered[0].updated_time == history[0].occurred_at.timestamp()  # from the history
        assert events[-1].phase == int(ActionPhase.SUCCEEDED)
        backend = follower.services.backend()
        assert backend["rebuiltActionCount"] == 2
        said = " ".join(backend["rebuiltActions"])
        assert f"{run.run_name}/a0" in said and "previous leader's database" in said and "events' details" in said
    finally:
        following.cancel()
        await asyncio.gather(following, return_exceptions=True)
        await follower.stop()
        await leader.stop()
