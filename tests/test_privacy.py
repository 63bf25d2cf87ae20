"""Private by default: the data directory and its files, run specs without secrets, clean task environments."""

from __future__ import annotations

import logging
import os
import stat

import pytest

from engine.engine import Engine, EngineConfig
from engine.errors import DataDirError, InvalidRunError
from engine.phases import ActionPhase
from helpers import shell_spec


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def _run_shell(engine: Engine, script: str, **kwargs):
    run = await engine.runs.create_run(shell_spec(script), **kwargs)
    return await engine.runs.wait_for_run(run.run_name, timeout=30)


async def test_the_data_directory_and_everything_in_it_are_private(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", requeue_after=0.2))
    await engine.start()
    try:
        result = await _run_shell(engine, 'echo hello; echo out > "{{.outputPrefix}}/made-by-the-task"')
        assert result.phase == ActionPhase.SUCCEEDED
    finally:
        await engine.stop()
    data = tmp_path / "data"
    assert _mode(data) == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert any(p.name == "made-by-the-task" for p in files) and any(p.suffix == ".log" for p in files)
    assert any(p.name == "inputs.pb" for p in files) and any(p.name == "taskdeck.db" for p in files)
    assert {str(p.relative_to(data)): oct(_mode(p)) for p in files if _mode(p) & 0o077} == {}
    assert all(_mode(p) & 0o077 == 0 for p in data.rglob("*") if p.is_dir())


async def test_an_existing_open_data_directory_is_tightened_and_says_so(tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "taskdeck.db").touch()
    os.chmod(data / "taskdeck.db", 0o644)
    engine = Engine(EngineConfig(data_dir=data, serve=False))
    with caplog.at_level(logging.WARNING, logger="engine.engine"):
        await engine.start()
    await engine.stop()
    assert _mode(data) == 0o700 and _mode(data / "taskdeck.db") == 0o600
    assert any("tightened the data directory" in r.getMessage() and "755" in r.getMessage() for r in caplog.records)


async def test_task_processes_get_a_clean_environment_and_an_allow_list(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-7f3a")
    monkeypatch.setenv("TEAM_SETTING", "blue")
    script = 'env > "{{.outputPrefix}}/env.txt"'
    for pass_env, expect_setting in (((), False), (("TEAM_SETTING",), True)):
        engine = Engine(EngineConfig(data_dir=tmp_path / f"data{len(pass_env)}", requeue_after=0.2,
                                     pass_env=pass_env))
        await engine.start()
        try:
            result = await _run_shell(engine, script)
            env_file = engine.runs.attempt_prefix_of(result.run, 1) + "/env.txt"
            seen = dict(line.split("=", 1) for line in open(env_file).read().splitlines() if "=" in line)
        finally:
            await engine.stop()
        assert "AWS_SECRET_ACCESS_KEY" not in seen  # the engine's secrets stay the engine's
        assert ("TEAM_SETTING" in seen) is expect_setting
        assert seen["HOME"] == os.environ["HOME"] and "PATH" in seen
        assert seen["FLYTE_INTERNAL_EXECUTION_PROJECT"] == "flytesnacks" and seen["RUN_NAME"] == result.run.run_name
        assert "/c/tdr_" in seen["_U_EP_OVERRIDE"]  # the run's own credential, nothing broader
        assert engine.authority.owner_token not in open(env_file).read()


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "OPENAI_API_KEY",
                                  "my_private_key", "HF_AUTH", "SERVICE_CREDENTIALS"])
async def test_env_vars_that_look_like_secrets_are_refused_with_a_pointer(tmp_path, name):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False))
    await engine.start()
    try:
        with pytest.raises(InvalidRunError) as refused:
            await engine.runs.create_run(shell_spec("true"), env_vars={name: "hunter2"})
        assert refused.value.field == "envVars" and f"--pass-env {name}" in str(refused.value)
        assert await engine.runs.list_runs() == []
        ok = await engine.runs.create_run(shell_spec("true"), env_vars={"LOG_LEVEL": "debug", "AUTHOR": "ada"})
        assert ok.run_name
    finally:
        await engine.stop()


async def test_sharing_with_a_unix_group_opens_the_token_and_the_address_to_that_group_only(tmp_path):
    import grp

    group = grp.getgrgid(os.getgid()).gr_name  # a group this user may give files to
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", share_group=group))
    await engine.start()
    try:
        data = tmp_path / "data"
        assert _mode(data) == 0o710  # the group may open the files it is given, not list the rest
        for shared in ("token", "engine.json", "engine.lock"):
            assert _mode(data / shared) == 0o640 and os.stat(data / shared).st_gid == os.getgid(), shared
        for private in ("signing.key", "taskdeck.db"):
            assert _mode(data / private) == 0o600, private
    finally:
        await engine.stop()
    unshared = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False))
    await unshared.start()  # without the option the same directory is private again
    await unshared.stop()
    assert _mode(tmp_path / "data") == 0o700 and _mode(tmp_path / "data" / "token") == 0o600
    with pytest.raises(DataDirError, match="no Unix group"):
        await Engine(EngineConfig(data_dir=tmp_path / "other", share_group="no-such-group-x")).start()
