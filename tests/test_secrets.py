"""Secrets a task asks for: from the secret store (test_secret_store.py), or from the engine's own
environment when the engine passes that variable on (--pass-env), as `flyte run --local` takes it from the
shell; otherwise the run is refused up front, naming the secret and how to provide it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from engine.engine import Engine, EngineConfig
from engine.errors import InvalidRunError
from engine.phases import ActionPhase
from helpers import run_sdk_task, start_sdk_task, task_file

pytestmark = pytest.mark.sdk

TASKS = textwrap.dedent('''
    import os
    import flyte

    env = flyte.TaskEnvironment(name="secretive", secrets=[flyte.Secret(key="token", group="aws")])
    files = flyte.TaskEnvironment(name="mounted", secrets=[flyte.Secret(key="cert", mount="/etc/flyte/secrets")])

    @env.task
    async def peek() -> int:
        return len(os.environ["AWS_TOKEN"])

    @files.task
    async def mounted() -> str:
        return "never"
''')


async def test_a_secret_passed_on_by_the_engine_reaches_the_task(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_TOKEN", "s3cr3t-value")
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", pass_env=("AWS_TOKEN",)))
    await engine.start()
    try:
        result = await run_sdk_task(engine, task_file(tmp_path, "secret_tasks.py", TASKS), "peek")
        assert result.phase == ActionPhase.SUCCEEDED, result.error
        assert result.outputs == {"o0": len("s3cr3t-value")}
    finally:
        await engine.stop()


async def test_a_secret_the_engine_cannot_give_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_TOKEN", "set-but-not-passed")
    engine = Engine(EngineConfig(data_dir=tmp_path / "data"))
    await engine.start()
    try:
        tasks = task_file(tmp_path, "secret_tasks.py", TASKS)
        with pytest.raises(InvalidRunError, match=r"secret 'token' \(as \$AWS_TOKEN\).*taskdeck secret create token "
                                                  r"--project proj --domain dev.*--pass-env AWS_TOKEN"):
            await start_sdk_task(engine, tasks, "peek")
        with pytest.raises(InvalidRunError, match="mounted as a file"):
            await start_sdk_task(engine, tasks, "mounted")
        assert await engine.runs.list_runs() == []  # nothing was created
    finally:
        await engine.stop()


def test_the_cli_refuses_it_in_one_line(tmp_path):
    tasks = task_file(tmp_path, "secret_tasks.py", TASKS)
    done = subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(tmp_path / "data"), "run",
                           str(tasks), "peek"], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("started an engine")]
    assert done.returncode == 2 and len(lines) == 1 and "--pass-env AWS_TOKEN" in lines[0], done.stderr


async def test_a_task_no_plugin_here_can_run_is_refused_up_front(tmp_path):
    from helpers import task_spec

    engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False))
    await engine.start()
    try:
        sql = task_spec("snowflake")
        sql.task_template.sql.statement = "select 1"
        with pytest.raises(InvalidRunError, match="SQL task"):
            await engine.runs.create_run(sql)
        with pytest.raises(InvalidRunError, match="no plugin here runs task type 'mystery'"):
            await engine.runs.create_run(task_spec("mystery"))
        assert await engine.runs.list_runs() == []
    finally:
        await engine.stop()
