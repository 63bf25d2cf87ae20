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
from kube_apiserver import backend_config

ROOT = Path(__file__).parent.parent


@pytest.fixture(params=["embedded", "kubernetes", "kubernetes+postgresql"])
async def engine(tmp_path, request):
    with backend_config(request.param, tmp_path, request) as backend:
        engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False, requeue_after=1.0, **backend))
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


def _with_backoff(spec, base: float, factor: float = 1.0, cap: float | None = None):
    from google.protobuf import duration_pb2

    backoff = spec.task_template.metadata.retries.backoff
    backoff.base.CopyFrom(duration_pb2.Duration(seconds=int(base), nanos=int((base % 1) * 1e9)))
    backoff.factor = factor
    if cap is not None:
        backoff.cap.CopyFrom(duration_pb2.Duration(seconds=int(cap), nanos=int((cap % 1) * 1e9)))
    return spec


def test_the_retry_delay_follows_the_sdks_formula():
    from engine.reconciler import retry_delay

    spec = _with_backoff(task_spec("scripted", retries=6), base=1.0, factor=2.0, cap=3.0)
    assert [retry_delay(spec.task_template, n) for n in range(5)] == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert retry_delay(task_spec("scripted", retries=3).task_template, 0) == 0.0  # no backoff: back to back
    huge = _with_backoff(task_spec("scripted", retries=200), base=10.0, factor=2.0, cap=60.0)
    assert retry_delay(huge.task_template, 150) == 60.0  # overflowing growth stops at the cap


async def test_user_retries_wait_out_their_backoff_and_say_so(engine):
    import time

    started: dict[int, float] = {}

    def script(tctx, _index):
        started.setdefault(tctx.metadata.attempt, time.monotonic())
        return PhaseInfo.retryable_failure("Flaky", "try again") if tctx.metadata.attempt < 4 else PhaseInfo.success()

    engine.test_plugin.script = script
    run = await engine.runs.create_run(_with_backoff(task_spec("scripted", retries=3), base=0.5, factor=2.0, cap=1.0))
    result = await engine.runs.wait_for_run(run.run_name, timeout=20)
    assert result.phase == ActionPhase.SUCCEEDED and result.run.attempts == 4
    gaps = [started[n + 1] - started[n] for n in (1, 2, 3)]
    assert gaps[0] >= 0.5 and gaps[1] >= 1.0 and gaps[2] >= 1.0, gaps  # 0.5 s, then 1 s twice (capped)
    assert gaps[0] < gaps[1]
    events = await engine.runs.list_events(run.key)
    queued = [decode_event(e) for e in events if ActionPhase(e.phase) == ActionPhase.QUEUED and e.attempt > 1]
    reasons = [c.message for e in queued for c in e.cluster_events]
    assert any("retrying in 0.5s" in r for r in reasons) and any("retrying in 1s" in r for r in reasons), reasons


async def test_a_backoff_survives_an_engine_restart(tmp_path):
    import time

    from engine.engine import Engine, EngineConfig

    def failing_first(tctx, _index):
        return PhaseInfo.retryable_failure("Flaky", "again") if tctx.metadata.attempt == 1 else PhaseInfo.success()

    first = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=1.0))
    first.test_plugin = ScriptedPlugin(failing_first)
    first.registry.register(first.test_plugin)
    await first.start()
    run = await first.runs.create_run(_with_backoff(task_spec("scripted", retries=1), base=3.0))
    await eventually(lambda: (first.store.peek(f"{run.run_name}-a0") is not None
                              and first.store.peek(f"{run.run_name}-a0").status.attempts == 2))
    restarted_at = time.monotonic()
    await first.stop()
    second = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=1.0))
    second.test_plugin = ScriptedPlugin(failing_first)
    second.registry.register(second.test_plugin)
    await second.start()
    try:
        result = await second.runs.wait_for_run(run.run_name, timeout=20)
        assert result.phase == ActionPhase.SUCCEEDED
        launched = [a for _, a in second.test_plugin.handled]
        assert launched and launched[0] == 2  # the new engine launched only the retry ...
        assert time.monotonic() - restarted_at >= 2.5  # ... once the backoff the first one began was over
    finally:
        await second.stop()
