"""Ray tasks (flyteplugins-ray, task type ``ray``) run on a local Ray node through the engine: the task's
``ray.init()`` joins it, the worker groups become its logical CPUs, and nothing of it is left afterwards."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from helpers import eventually, live_processes, run_sdk_task, start_sdk_task, task_file

pytestmark = pytest.mark.sdk

TASKS = textwrap.dedent('''
    import asyncio
    import flyte
    from flyteplugins.ray import HeadNodeConfig, RayJobConfig, WorkerNodeConfig

    env = flyte.TaskEnvironment(name="ray_env", plugin_config=RayJobConfig(
        head_node_config=HeadNodeConfig(ray_start_params={"num-cpus": "1"}),
        worker_node_config=[WorkerNodeConfig(group_name="w", replicas=2)]))

    @env.task
    async def total(n: int) -> str:
        import ray

        @ray.remote
        def square(x):
            print(f"squaring {x} on a ray worker")
            return x * x

        return f"{sum(ray.get([square.remote(i) for i in range(n)]))} {int(ray.cluster_resources()['CPU'])}"

    @env.task
    async def broken(n: int) -> int:
        import ray

        @ray.remote
        def fail(x):
            raise ValueError(f"no square for {x}")

        return ray.get(fail.remote(n))

    @env.task
    async def linger(seconds: float) -> float:
        import ray
        ray.cluster_resources()
        await asyncio.sleep(seconds)
        return seconds
''')


def _ray_processes() -> list[int]:
    """Live processes of a local Ray node TaskDeck started (its session directory is named taskdeck-ray-*)."""
    return live_processes(lambda cmdline, _: b"taskdeck-ray-" in cmdline)


@pytest.fixture
def tasks(tmp_path) -> Path:
    return task_file(tmp_path, "ray_tasks.py", TASKS, "ray", "flyteplugins.ray")


async def test_a_ray_task_runs_on_its_own_local_ray_node_and_leaves_nothing_behind(engine, tasks):
    result = await run_sdk_task(engine, tasks, "total", timeout=240, n=6)
    assert result.phase == ActionPhase.SUCCEEDED, result.error
    assert result.outputs == {"o0": "55 3"}  # the head's CPU and two worker replicas, on one node
    log = engine.reconciler.log_path(result.run.run_name, "a0", 1).read_text()
    assert "local Ray node at 127.0.0.1:" in log and "Connected to Ray cluster" in log
    assert "squaring 5 on a ray worker" in log  # the job's own logs, from its workers, in the action's log
    assert not _ray_processes()  # the run is reported done only once the node is gone


async def test_a_failing_ray_job_fails_the_task_with_its_error_and_tears_down(engine, tasks):
    result = await run_sdk_task(engine, tasks, "broken", timeout=240, n=7)
    assert result.phase == ActionPhase.FAILED
    assert result.error["kind"] == "USER" and "no square for 7" in result.error["message"], result.error
    assert not _ray_processes()


async def test_aborting_a_ray_task_tears_its_node_down(engine, tasks):
    record = await start_sdk_task(engine, tasks, "linger", seconds=120)

    async def running():
        return ActionPhase((await engine.runs.get_run(record.run_name)).phase) == ActionPhase.RUNNING

    await eventually(running, timeout=120)
    assert _ray_processes()
    await engine.runs.abort_action(record.run_name, reason="enough")
    result = await engine.runs.wait_for_run(record.run_name, timeout=60)
    assert result.phase == ActionPhase.ABORTED
    await eventually(lambda: not _ray_processes(), timeout=20)


async def test_a_token_left_by_an_earlier_ray_session_does_not_lock_the_task_out(tmp_path, tasks, monkeypatch):
    """Any local Ray session writes ~/.ray/auth_token, which Ray then applies wherever it finds it: each
    local node has its own token instead (without it, the task's ray.init() was refused)."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("f" * 64)
    monkeypatch.setenv("HOME", str(home))
    engine = Engine(EngineConfig(data_dir=tmp_path / "data2"))
    await engine.start()
    try:
        result = await run_sdk_task(engine, tasks, "total", timeout=240, n=3)
        assert result.phase == ActionPhase.SUCCEEDED, result.error
    finally:
        await engine.stop()
