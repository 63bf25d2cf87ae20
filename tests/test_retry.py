"""Operator retry: failed, aborted or timed-out actions re-run as new attempts, recorded with who and why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.engine import Engine, EngineConfig
from engine.events import decode_event
from engine.phases import ActionPhase
from engine.plugins.core import PhaseInfo
from engine.runs import InvalidRunError
from helpers import ScriptedPlugin, eventually, task_spec

ROOT = Path(__file__).parent.parent


@pytest.fixture
async def engine(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=1.0))
    engine.test_plugin = ScriptedPlugin()
    engine.registry.register(engine.test_plugin)
    await engine.start()
    yield engine
    await engine.stop()


def by_attempt(tctx, index, outcomes):
    return outcomes[min(tctx.metadata.attempt, len(outcomes)) - 1]


async def test_a_failed_run_is_retried_as_a_new_attempt_with_who_and_why(engine):
    outcomes = [PhaseInfo.failure("ValueError", "bug"), PhaseInfo.success()]
    engine.test_plugin.script = lambda tctx, i: by_attempt(tctx, i, outcomes)
    run = await engine.runs.create_run(task_spec("scripted"))
    assert (await engine.runs.wait_for_run(run.run_name, timeout=10)).phase == ActionPhase.FAILED
    assert await engine.runs.retry_action(run.run_name, who="ada", why="fixed the bug") == ["a0"]
    result = await engine.runs.wait_for_run(run.run_name, timeout=10)
    assert result.phase == ActionPhase.SUCCEEDED and result.run.attempts == 2 and result.error is None
    events = await engine.runs.list_events(run.key)
    assert [(e.attempt, ActionPhase(e.phase).name) for e in events] == [(1, "FAILED"), (2, "QUEUED"),
                                                                        (2, "SUCCEEDED")]
    queued = decode_event(events[1])
    assert [c.message for c in queued.cluster_events] == ["retried by ada: fixed the bug"]


async def test_an_aborted_run_is_retried(engine):
    engine.test_plugin.script = lambda tctx, i: PhaseInfo.running() if tctx.metadata.attempt == 1 else PhaseInfo.success()
    run = await engine.runs.create_run(task_spec("scripted"))
    await eventually(lambda: (engine.store.peek(f"{run.run_name}-a0") or run) and
                     engine.store.peek(f"{run.run_name}-a0").status.plugin_phase == "PhaseRunning")
    await engine.runs.abort_action(run.run_name)
    assert (await engine.runs.wait_for_run(run.run_name, timeout=10)).phase == ActionPhase.ABORTED
    await engine.runs.retry_action(run.run_name)
    result = await engine.runs.wait_for_run(run.run_name, timeout=10)
    assert result.phase == ActionPhase.SUCCEEDED and result.run.attempts == 2


async def test_retrying_a_run_re_runs_failed_children_and_keeps_succeeded_ones(engine):
    outcomes = {"a0": [PhaseInfo.failure("E", "child failed"), PhaseInfo.running()],
                "good": [PhaseInfo.success()], "bad": [PhaseInfo.failure("E", "bad"), PhaseInfo.success()]}
    engine.test_plugin.script = lambda tctx, i: by_attempt(tctx, i, outcomes[tctx.metadata.action_name])
    run = await engine.runs.create_run(task_spec("scripted"))
    root = await eventually(lambda: engine.store.peek(f"{run.run_name}-a0"))
    for name in ("good", "bad"):
        await engine.runs.create_action(run.run_name, name, "a0", task_spec("scripted"),
                                        f"{run.run_output_base}/{name}/inputs.pb")
    await eventually(lambda: _phases(engine, run), timeout=10)
    assert await _phases(engine, run) == {"a0": "FAILED", "good": "SUCCEEDED", "bad": "FAILED"}
    assert root is not None

    assert sorted(await engine.runs.retry_action(run.run_name)) == ["a0", "bad"]
    await eventually(lambda: _phases_are(engine, run, {"a0": "RUNNING", "good": "SUCCEEDED", "bad": "SUCCEEDED"}))
    rows = {a.name: a for a in await engine.runs.list_actions(run.run_name)}
    assert (rows["a0"].attempts, rows["good"].attempts, rows["bad"].attempts) == (2, 1, 2)
    bad = engine.store.peek(f"{run.run_name}-bad")
    assert bad is None or bad.metadata.owner_references[0].uid == engine.store.peek(f"{run.run_name}-a0").metadata.uid
    await engine.runs.abort_action(run.run_name)


async def _phases(engine, run):
    rows = await engine.runs.list_actions(run.run_name)
    if len(rows) < 3 or not all(ActionPhase(r.phase).is_terminal for r in rows):
        return None
    return {r.name: ActionPhase(r.phase).name for r in rows}


async def _phases_are(engine, run, expected):
    rows = await engine.runs.list_actions(run.run_name)
    return {r.name: ActionPhase(r.phase).name for r in rows} == expected


async def test_only_failed_aborted_or_timed_out_actions_can_be_retried(engine):
    engine.test_plugin.script = [PhaseInfo.success()]
    run = await engine.runs.create_run(task_spec("scripted"))
    await engine.runs.wait_for_run(run.run_name, timeout=10)
    with pytest.raises(InvalidRunError, match="SUCCEEDED"):
        await engine.runs.retry_action(run.run_name)
    with pytest.raises(LookupError):
        await engine.runs.retry_action(run.run_name, "nope")


FLAKY = '''
import os
import flyte

env = flyte.TaskEnvironment(name="flaky")


@env.task
def needs_fix(flag: str) -> str:
    if not os.path.exists(flag):
        raise RuntimeError("not fixed yet")
    return "fixed"
'''


@pytest.mark.sdk
def test_cli_retry_after_a_fix(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "flaky.py").write_text(FLAKY)
    flag = tmp_path / "fixed"

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(tmp_path / "data"), *args],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)

    first = cli("run", "--json", str(tmp_path / "code" / "flaky.py"), "needs_fix", "--flag", str(flag))
    assert first.returncode == 1 and json.loads(first.stdout)["error"]["message"] == "not fixed yet"
    run = json.loads(first.stdout)["run"]
    flag.touch()  # the fix
    retried = cli("retry", run, "--reason", "created the flag", "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"run": run, "phase": "SUCCEEDED", "outputs": {"o0": "fixed"}, "error": None}
    actions = json.loads(cli("get", "actions", run, "--json").stdout)
    assert actions[0]["attempts"] == 2
