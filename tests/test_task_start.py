"""How task processes start: forked from a warm fork server, or a fresh ``a0``; either way, isolated.

Each probe runs real flyte SDK tasks through the engine, on both start paths: module state, the
environment, the working directory, exit codes and memory must not carry from one action to the next,
and aborting one of five concurrent actions must leave the other four alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
import time
from pathlib import Path

import pytest

from engine.client.local import LocalClient
from engine.engine import Engine, EngineConfig
from engine.model import task_action_name
from engine.phases import ActionPhase
from helpers import eventually, start_sdk_task

pytestmark = pytest.mark.sdk

PROBES = textwrap.dedent('''
    import asyncio, os, sys, time
    import flyte

    env = flyte.TaskEnvironment(name="probes")
    COUNTER = 0
    KEPT = []

    @env.task
    def bump() -> int:
        global COUNTER
        COUNTER += 1
        return COUNTER

    @env.task
    def set_environ(value: str) -> str:
        before = os.environ.get("TASKDECK_PROBE", "")
        os.environ["TASKDECK_PROBE"] = value
        return before

    @env.task
    def wander(to: str) -> str:
        before = os.getcwd()
        os.chdir(to)
        return before

    @env.task
    def leave(code: int) -> int:
        sys.exit(code)

    @env.task
    def rss_after_keeping(mib: int) -> int:
        KEPT.append(bytearray(mib << 20))
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) // 1024

    @env.task
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @env.task
    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    @env.task
    def speak(last: str) -> str:
        import logging, signal, subprocess
        print("printed line")
        print("stderr line", file=sys.stderr)
        logging.getLogger("flyte.user").warning("user log line")
        subprocess.run(["echo", "subprocess line"], check=True)
        sys.stdout.write("no newline yet")
        if last == "killed":
            os.kill(os.getpid(), signal.SIGKILL)
        return last
''')


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("code") / "probes.py"
    path.write_text(PROBES)
    return path


@pytest.fixture(params=["fork", "exec"])
async def engine(request, tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", task_start=request.param, max_processes=6))
    await engine.start()
    yield engine
    await engine.stop()


async def _run(engine: Engine, file: Path, task_name: str, **inputs):
    return (await _run_with_log(engine, file, task_name, **inputs))[0]


async def _run_with_log(engine: Engine, file: Path, task_name: str, **inputs):
    """The run's result, and the lines of its log."""
    record = await start_sdk_task(engine, file, task_name, **inputs)
    result = await engine.runs.wait_for_run(record.run_name, timeout=120)
    state = json.loads(engine.store.peek(task_action_name(record.run_name, "a0")).status.plugin_state)
    assert state["start"] == engine.config.task_start  # the path under test is the path taken
    return result, (await LocalClient(engine.services).read_log(record.run_name, "a0", 1)).lines


async def test_module_globals_start_fresh(engine, probes):
    for _ in range(2):
        result = await _run(engine, probes, "bump")
        assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": 1}


async def test_environment_changes_stay_in_their_action(engine, probes):
    first = await _run(engine, probes, "set_environ", value="one")
    second = await _run(engine, probes, "set_environ", value="two")
    assert first.outputs == {"o0": ""} and second.outputs == {"o0": ""}


async def test_a_chdir_stays_in_its_action(engine, probes, tmp_path):
    first = await _run(engine, probes, "wander", to=str(tmp_path))
    second = await _run(engine, probes, "wander", to=str(tmp_path))
    assert first.outputs == second.outputs == {"o0": str(probes.parent)}


async def test_a_task_that_exits_fails_with_its_exit_code(engine, probes):
    result = await _run(engine, probes, "leave", code=3)
    assert result.phase == ActionPhase.FAILED
    assert "code 3" in result.error["message"], result.error
    assert (await _run(engine, probes, "bump")).phase == ActionPhase.SUCCEEDED  # nothing else broke


async def test_memory_a_task_keeps_is_freed_with_it(engine, probes):
    first = await _run(engine, probes, "rss_after_keeping", mib=300)
    second = await _run(engine, probes, "rss_after_keeping", mib=1)
    assert first.outputs["o0"] >= 300
    assert second.outputs["o0"] < first.outputs["o0"] - 250


async def test_aborting_one_of_five_concurrent_actions_leaves_the_others(engine, probes):
    records = [await start_sdk_task(engine, probes, "nap", seconds=4) for _ in range(5)]

    async def all_running():
        phases = [(await engine.runs.get_run(r.run_name)).phase for r in records]
        return all(ActionPhase(p) == ActionPhase.RUNNING for p in phases) or None

    await eventually(all_running, timeout=60)
    victim = records[2]
    pid = json.loads(engine.store.peek(task_action_name(victim.run_name, "a0")).status.plugin_state)["pid"]
    await engine.runs.abort_action(victim.run_name, reason="only this one")
    results = await asyncio.gather(*(engine.runs.wait_for_run(r.run_name, timeout=120) for r in records))
    assert [ActionPhase(r.phase) for r in results] == [ActionPhase.SUCCEEDED] * 2 + [ActionPhase.ABORTED] + \
        [ActionPhase.SUCCEEDED] * 2
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_task_log_keeps_every_line_with_the_time_it_was_written(engine, probes):
    """What the task prints, writes to stderr, logs, and what its subprocess writes, all reach its log;
    the task's own lines carry their time (a subprocess's too, on the exec path, where a reader stamps)."""
    before = time.time()
    result, lines = await _run_with_log(engine, probes, "speak", last="ok")
    assert result.phase == ActionPhase.SUCCEEDED
    texts = [line.text for line in lines]
    for expected in ("printed line", "stderr line", "subprocess line"):
        assert expected in texts, "\n".join(texts)
    assert any(text.endswith("user log line") for text in texts), texts
    assert any(text.startswith("no newline yet") for text in texts), texts  # the last, unfinished line
    timed = {line.text: line.time for line in lines if line.time is not None}
    for own in ("printed line", "stderr line"):
        assert before - 1 <= timed[own] <= time.time() + 1
    assert texts.index("printed line") < texts.index("stderr line") < texts.index("subprocess line")
    if engine.config.task_start == "exec":
        assert "subprocess line" in timed


async def test_a_task_killed_by_a_signal_keeps_the_lines_it_wrote(engine, probes):
    """A task's lines reach its log as it prints them (no buffer it loses): killed by SIGKILL, every
    whole line it printed is there, and it fails with the signal."""
    record = await start_sdk_task(engine, probes, "speak", last="killed")
    result = await engine.runs.wait_for_run(record.run_name, timeout=120)
    assert result.phase == ActionPhase.FAILED and "killed (exit 137)" in result.error["message"], result.error
    texts = [line.text for line in (await LocalClient(engine.services).read_log(record.run_name, "a0", 1)).lines]
    assert "printed line" in texts and "stderr line" in texts and "subprocess line" in texts, texts
    assert "no newline yet" in texts  # a line it never finished, ended when the log is next written


@pytest.mark.parametrize("engine", ["fork"], indirect=True)
async def test_the_fork_server_is_fork_safe(engine, probes):
    result = await _run(engine, probes, "threads")
    assert result.phase == ActionPhase.SUCCEEDED
    (zygote,) = engine.container_plugin.zygotes.snapshot()
    assert zygote["alive"] and zygote["forks"] == 1
    # Before each fork the server checks it has one thread and no running event loop; it says so when ready.
    assert zygote["threads"] == 1 and zygote["loops"] == 0
    with open(f"/proc/{zygote['pid']}/status") as f:
        assert next(line for line in f if line.startswith("Threads")).split()[1] == "1"


@pytest.mark.parametrize("engine", ["fork"], indirect=True)
async def test_a_task_can_opt_out_of_the_fork_server(engine, tmp_path):
    path = tmp_path / "fresh.py"
    path.write_text(textwrap.dedent('''
        import flyte

        env = flyte.TaskEnvironment(name="fresh", env_vars={"TASKDECK_START": "exec"})

        @env.task
        def hello() -> str:
            return "hi"
    '''))
    record = await start_sdk_task(engine, path, "hello")
    result = await engine.runs.wait_for_run(record.run_name, timeout=120)
    assert result.outputs == {"o0": "hi"}
    state = json.loads(engine.store.peek(task_action_name(record.run_name, "a0")).status.plugin_state)
    assert state["start"] == "exec" and engine.container_plugin.zygotes.snapshot() == []


@pytest.mark.parametrize("engine", ["fork"], indirect=True)
async def test_an_unknown_start_option_fails_the_task_and_says_why(engine, tmp_path):
    path = tmp_path / "typo.py"
    path.write_text(textwrap.dedent('''
        import flyte

        env = flyte.TaskEnvironment(name="typo", env_vars={"TASKDECK_START": "frok"})

        @env.task
        def hello() -> str:
            return "hi"
    '''))
    record = await start_sdk_task(engine, path, "hello")
    result = await engine.runs.wait_for_run(record.run_name, timeout=60)
    assert result.phase == ActionPhase.FAILED
    assert result.error["code"] == "BadTaskSpecification"
    assert "TASKDECK_START must be one of fork, exec, not 'frok'" in result.error["message"]
