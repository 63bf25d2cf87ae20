"""Reusable tasks (flyte.ReusePolicy) run on pools of long-lived workers, with the SDK's semantics.

Every test runs real flyte SDK tasks through the engine: workers are real processes running the SDK's
reusable-container entrypoint.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path

import pytest

from engine.client.local import LocalClient
from engine.client.remote import RemoteClient
from engine.engine import Engine, EngineConfig
from engine.model import task_action_name
from engine.phases import ActionPhase
from helpers import eventually, run_sdk_task, start_sdk_task

pytestmark = pytest.mark.sdk

PROBES = textwrap.dedent('''
    import asyncio, os, sys, time
    import flyte

    serial = flyte.TaskEnvironment(name="serial", reusable=flyte.ReusePolicy(replicas=2, concurrency=1))
    shared = flyte.TaskEnvironment(name="shared", reusable=flyte.ReusePolicy(replicas=1, concurrency=5))
    plain = flyte.TaskEnvironment(name="plain")
    broken = flyte.TaskEnvironment(name="broken", env_vars={"PYTHONHOME": "/nonexistent"},
                                   reusable=flyte.ReusePolicy(replicas=1))
    COUNTER = 0

    @serial.task
    def bump() -> int:
        global COUNTER
        COUNTER += 1
        print(f"bump number {COUNTER}")
        return COUNTER

    @serial.task
    def wander(to: str) -> str:
        before = os.getcwd() + "|" + os.environ.get("TASKDECK_PROBE", "")
        os.chdir(to)
        os.environ["TASKDECK_PROBE"] = to
        return before

    @serial.task
    def leave(code: int) -> int:
        sys.exit(code)

    @serial.task
    def crash() -> int:
        os._exit(9)

    @serial.task
    def block(seconds: float) -> float:
        print("blocking now", flush=True)
        time.sleep(seconds)
        return seconds

    @serial.task
    def pid() -> int:
        return os.getpid()

    @shared.task
    async def nap(seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @shared.task
    async def once(path: str, seconds: float) -> int:
        with open(path, "a") as f:
            f.write("ran\\n")
        await asyncio.sleep(seconds)
        return os.getpid()

    @plain.task
    async def fan(n: int) -> int:
        return sum(await asyncio.gather(*(square.aio(i) for i in range(n))))

    @shared.task
    async def square(i: int) -> int:
        return i * i

    @broken.task
    def unreachable() -> int:
        return 1
''')


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("code") / "reusable_probes.py"
    path.write_text(PROBES)
    return path


@pytest.fixture
async def engine(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", max_system_failures=0))
    await engine.start()
    yield engine
    await engine.stop()


def _state(engine: Engine, run: str, action: str = "a0") -> dict:
    return json.loads(engine.store.peek(task_action_name(run, action)).status.plugin_state)


def _pool(engine: Engine, name: str) -> dict:
    return next(p for p in engine.reusable_plugin.snapshot() if p["environment"] == name)


async def test_module_state_persists_and_each_action_gets_its_own_log(engine, probes):
    results = [await run_sdk_task(engine, probes, "bump") for _ in range(3)]
    assert all(r.phase == ActionPhase.SUCCEEDED for r in results)
    workers = {_state(engine, r.run.run_name)["worker"] for r in results}
    counts = sorted(r.outputs["o0"] for r in results)
    assert sum(counts) == 6 if len(workers) == 1 else counts[-1] <= 3  # the counter carries on per worker
    assert any(r.outputs["o0"] > 1 for r in results)
    for r in results:
        log_file = engine.reconciler.log_path(r.run.run_name, "a0", 1)
        assert log_file.stat().st_mode & 0o077 == 0  # owner-only, as a task process's log
        log = log_file.read_text()
        assert f"bump number {r.outputs['o0']}" in log and "running in reusable worker" in log
        assert log.count("bump number") == 1  # its own line only, stamped as a task process's are
    events = await LocalClient(engine.services).list_events(results[0].run.run_name, "a0")
    assert _state(engine, results[0].run.run_name)["worker"] in {e.worker for e in events}  # which worker ran it


async def test_environment_and_working_directory_are_restored_between_actions(engine, probes, tmp_path):
    pool_before = None
    for _ in range(3):
        result = await run_sdk_task(engine, probes, "wander", to=str(tmp_path))
        assert result.outputs == {"o0": f"{probes.parent}|"}  # neither the last chdir nor the last env var
        pool_before = pool_before or _state(engine, result.run.run_name)["pool"]
    assert sum(w["served"] for w in _pool(engine, "serial")["workers"]) == 3  # the same pool served all


async def test_sys_exit_fails_that_action_and_the_worker_carries_on(engine, probes):
    first = await run_sdk_task(engine, probes, "pid")
    failed = await run_sdk_task(engine, probes, "leave", code=3)
    assert failed.phase == ActionPhase.FAILED
    assert failed.error["code"] == "SystemExit" and "sys.exit(3)" in failed.error["message"], failed.error
    assert failed.error["kind"] == "USER"
    pids = {w["pid"] for w in _pool(engine, "serial")["workers"]}
    assert first.outputs["o0"] in pids  # no worker was lost to it
    again = await run_sdk_task(engine, probes, "pid")
    assert again.phase == ActionPhase.SUCCEEDED and again.outputs["o0"] in pids


async def test_a_crash_fails_its_action_as_a_system_failure_and_the_worker_is_replaced(engine, probes):
    await run_sdk_task(engine, probes, "pid")
    before = {w["pid"] for w in _pool(engine, "serial")["workers"]}
    crashed = await run_sdk_task(engine, probes, "crash")
    assert crashed.phase == ActionPhase.FAILED
    assert crashed.error["kind"] == "SYSTEM" and "WorkerLost" in crashed.error["message"], crashed.error

    def replaced():
        workers = _pool(engine, "serial")["workers"]
        return len([w for w in workers if w["state"] == "ready"]) == 2 and {w["pid"] for w in workers} != before

    await eventually(replaced, timeout=60)
    after = await run_sdk_task(engine, probes, "pid")
    assert after.phase == ActionPhase.SUCCEEDED


async def test_concurrent_actions_share_a_worker_and_abort_cancels_only_one(engine, probes):
    records = [await start_sdk_task(engine, probes, "nap", seconds=4) for _ in range(5)]

    async def all_running():
        phases = [(await engine.runs.get_run(r.run_name)).phase for r in records]
        return all(ActionPhase(p) == ActionPhase.RUNNING for p in phases) or None

    await eventually(all_running, timeout=60)
    assert len({_state(engine, r.run_name)["worker"] for r in records}) == 1  # replicas=1, concurrency=5
    victim = records[2]
    await engine.runs.abort_action(victim.run_name, reason="only this one")
    results = await asyncio.gather(*(engine.runs.wait_for_run(r.run_name, timeout=120) for r in records))
    assert [ActionPhase(r.phase) for r in results] == [ActionPhase.SUCCEEDED] * 2 + [ActionPhase.ABORTED] + \
        [ActionPhase.SUCCEEDED] * 2
    assert len({r.outputs["o0"] for r in results if r.outputs}) == 1  # one process ran the four
    log = engine.reconciler.log_path(victim.run_name, "a0", 1).read_text()
    assert "action cancelled" in log


async def test_aborting_a_sync_body_that_will_not_stop_recycles_its_worker(engine, probes):
    record = await start_sdk_task(engine, probes, "block", seconds=60)

    async def running():
        return ActionPhase((await engine.runs.get_run(record.run_name)).phase) == ActionPhase.RUNNING

    await eventually(running, timeout=60)
    log = engine.reconciler.log_path(record.run_name, "a0", 1)
    # RUNNING is reported once the worker has the action: wait until the sync body itself runs (aborted
    # earlier, the action is cancelled before its thread starts, and no worker needs recycling)
    await eventually(lambda: log.exists() and "blocking now" in log.read_text(), timeout=60)
    pid = _state(engine, record.run_name)["pid"]
    await engine.runs.abort_action(record.run_name, reason="stop")
    result = await engine.runs.wait_for_run(record.run_name, timeout=30)
    assert result.phase == ActionPhase.ABORTED
    await eventually(lambda: pid not in {w["pid"] for w in _pool(engine, "serial")["workers"]}, timeout=15)
    assert (await run_sdk_task(engine, probes, "pid")).phase == ActionPhase.SUCCEEDED


async def test_children_of_a_plain_parent_run_on_a_reusable_pool(engine, probes):
    result = await run_sdk_task(engine, probes, "fan", n=12)
    assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": sum(i * i for i in range(12))}
    pool = _pool(engine, "shared")
    assert sum(w["served"] for w in pool["workers"]) == 12 and len(pool["workers"]) == 1
    assert "worker" not in _state(engine, result.run.run_name)  # the parent ran as its own process


async def test_a_worker_that_cannot_start_fails_its_action_as_a_system_failure(engine, probes):
    result = await run_sdk_task(engine, probes, "unreachable", timeout=90)
    assert result.phase == ActionPhase.FAILED
    assert result.error["kind"] == "SYSTEM" and "WorkerStartFailed" in result.error["message"], result.error
    assert "exited while starting" in _pool(engine, "broken")["lastError"]


async def test_reuse_off_runs_each_action_in_a_fresh_process(tmp_path, probes):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", reuse=False))
    await engine.start()
    try:
        results = [await run_sdk_task(engine, probes, "bump") for _ in range(2)]
        assert [r.outputs for r in results] == [{"o0": 1}, {"o0": 1}]
        assert engine.reusable_plugin.snapshot() == []
    finally:
        await engine.stop()


async def test_workers_are_listed_through_the_client_interface_the_api_and_the_cli(engine, probes):
    await run_sdk_task(engine, probes, "pid")
    await eventually(lambda: all(w["state"] == "ready" for w in _pool(engine, "serial")["workers"]), timeout=60)
    listing = await LocalClient(engine.services).list_workers()
    pool = next(p for p in listing["pools"] if p["environment"] == "serial")
    assert (pool["minReplicas"], pool["maxReplicas"], pool["concurrency"]) == (2, 2, 1)
    assert sum(w["served"] for w in pool["workers"]) == 1 and all(w["pid"] for w in pool["workers"])

    remote = RemoteClient(engine.url, engine.authority.owner_token)
    try:
        served = await remote.list_workers()
    finally:
        await remote.close()
    ids = lambda data: sorted((w["worker"], w["pid"], w["served"]) for p in data["pools"] for w in p["workers"])  # noqa: E731
    assert ids(served) == ids(listing)

    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "console.cli", "--data-dir", str(engine.data_dir), "get", "workers",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, err.decode()
    table = out.decode()
    assert "serial" in table and all(w["worker"] in table and str(w["pid"]) in table for w in pool["workers"])
