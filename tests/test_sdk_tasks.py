"""Real `flyte` SDK tasks, run through the engine as subprocesses (the SDK's `a0` entrypoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.sdk import inputs_from_strings, load_task, serialize_task
from helpers import run_sdk_task

pytestmark = pytest.mark.sdk

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
TASKDECK = [sys.executable, "-m", "console.cli"]


@pytest.fixture
async def engine(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False, requeue_after=1.0))
    await engine.start()
    yield engine
    await engine.stop()


async def run_example(engine, task_name: str, **inputs):
    return await run_sdk_task(engine, EXAMPLES / "basics.py", task_name, timeout=60, **inputs)


async def test_add_gives_42(engine):
    result = await run_example(engine, "add", x=2, y=40)
    assert result.phase == ActionPhase.SUCCEEDED
    assert result.outputs == {"o0": 42}
    events = await engine.runs.list_events(result.run.key)
    assert [ActionPhase(e.phase).name for e in events][-1] == "SUCCEEDED"
    task_action = await engine.store.get(f"{result.run.run_name}-a0")
    assert task_action.status.plugin_phase == "PhaseSuccess"
    log = (engine.data_dir / "logs" / result.run.run_name / "a0" / "1.log").read_text()
    assert "recorded, not pulled" in log and "Flyte runtime completed" in log


async def test_raising_task_fails_with_kind_user_and_the_message(engine):
    result = await run_example(engine, "boom", x=7)
    assert result.phase == ActionPhase.FAILED
    assert result.error == {"kind": "USER", "code": "ValueError", "message": "boom 7"}
    task_action = await engine.store.get(f"{result.run.run_name}-a0")
    assert task_action.status.error_state.kind == "USER"
    assert task_action.status.attempts == 1


async def test_user_retries_run_every_attempt_with_its_own_log(engine):
    result = await run_example(engine, "always_fails", x=1)
    assert result.phase == ActionPhase.FAILED and result.run.attempts == 3
    logs = sorted(p.name for p in (engine.data_dir / "logs" / result.run.run_name / "a0").iterdir())
    assert logs == ["1.log", "2.log", "3.log"]
    attempts = {e.attempt for e in await engine.runs.list_events(result.run.key)}
    assert attempts == {1, 2, 3}


def _cli(*args, data_dir, timeout=120):
    return subprocess.run([*TASKDECK, "--data-dir", str(data_dir), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_cli_run_json_and_exit_codes(tmp_path):
    ok = _cli("run", "--json", str(EXAMPLES / "basics.py"), "add", "--x", "2", "--y", "40", data_dir=tmp_path)
    assert ok.returncode == 0, ok.stderr
    payload = json.loads(ok.stdout)
    assert payload["phase"] == "SUCCEEDED" and payload["outputs"] == {"o0": 42} and payload["error"] is None

    bad = _cli("run", str(EXAMPLES / "basics.py"), "boom", "--x", "3", "--json", data_dir=tmp_path)
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["error"] == {"kind": "USER", "code": "ValueError", "message": "boom 3"}

    runs = json.loads(_cli("get", "runs", "--json", data_dir=tmp_path).stdout)
    assert {r["phase"] for r in runs} == {"SUCCEEDED", "FAILED"}
    actions = json.loads(_cli("get", "actions", payload["run"], "--json", data_dir=tmp_path).stdout)
    assert len(actions) == 1
    row = actions[0]
    for key in ("name", "parent", "phase", "attempts", "taskType", "cacheStatus", "error"):
        assert key in row
    assert row["name"] == "a0" and row["parent"] is None and row["taskType"] == "python"
    assert row["taskAction"]["metadata"]["name"] == f"{payload['run']}-a0"


def test_cli_rejects_bad_input_clearly(tmp_path):
    missing = _cli("run", str(EXAMPLES / "basics.py"), "add", "--x", "1", data_dir=tmp_path)
    assert missing.returncode == 2 and "Missing required parameter(s): --y (type: INTEGER)" in missing.stderr
    typo = _cli("run", str(EXAMPLES / "basics.py"), "add", "--x", "one", "--y", "2", data_dir=tmp_path)
    assert typo.returncode == 2 and "--x" in typo.stderr
    nothing = _cli("get", "actions", "rnope", data_dir=tmp_path / "misspelt")
    assert nothing.returncode == 2 and "no TaskDeck data" in nothing.stderr  # not an empty table
    assert not (tmp_path / "misspelt").exists()  # and reading made nothing
    ran = _cli("run", str(EXAMPLES / "basics.py"), "add", "--x", "1", "--y", "2", data_dir=tmp_path)
    assert ran.returncode == 0, ran.stderr
    unknown = _cli("get", "actions", "rnope", data_dir=tmp_path)
    assert unknown.returncode == 2 and "not found" in unknown.stderr


def test_headless_engine_serves_run_and_get_and_refuses_a_second_engine(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen([*TASKDECK, "--data-dir", str(tmp_path), "--allow-dir", str(ROOT), "--headless"],
                              cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while not (tmp_path / "engine.json").exists():
            assert time.time() < deadline and server.poll() is None, "headless engine did not start"
            time.sleep(0.05)
        second = _cli("--headless", data_dir=tmp_path)
        assert second.returncode == 2 and "already serving" in second.stderr

        ran = _cli("run", "--json", str(EXAMPLES / "basics.py"), "add", "--x", "20", "--y", "22",
                   data_dir=tmp_path)
        assert ran.returncode == 0, ran.stderr
        run_name = json.loads(ran.stdout)["run"]
        runs = json.loads(_cli("get", "runs", "--json", data_dir=tmp_path).stdout)
        assert [r["run"] for r in runs] == [run_name]
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    # The headless engine printed the run's transitions: it went through that engine, not an embedded one.
    assert f"{run_name}/a0 attempt 1 RUNNING" in output
    assert f"{run_name}/a0 attempt 1 SUCCEEDED" in output
    assert "engine stopped" in output


async def test_missing_inputs_fail_only_that_run_with_a_clear_error(engine):

    task = load_task(EXAMPLES / "basics.py", "add")
    spec = serialize_task(task, project="proj", domain="dev", root_dir=EXAMPLES)
    partial = inputs_from_strings(task, {"x": "1", "y": "2"})
    del partial.literals[1:]  # y is missing
    bad = await engine.runs.create_run(spec, partial, project="proj", domain="dev", code_dir=str(EXAMPLES))
    good = await run_example(engine, "add", x=1, y=2)
    result = await engine.runs.wait_for_run(bad.run_name, timeout=60)
    assert result.phase == ActionPhase.FAILED and "y" in result.error["message"], result.error
    assert good.phase == ActionPhase.SUCCEEDED and good.outputs == {"o0": 3}
