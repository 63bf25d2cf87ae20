"""Secrets a task asks for as files (``flyte.Secret(key, mount="/etc/flyte/secrets")``): a local task
process reads them at /etc/flyte/secrets in a mount namespace of its own, on both start paths (forked by
the fork server, a fresh process) and for a reusable task; the host's /etc gets nothing, no value reaches
a disk or the API, and a secret that cannot be given is refused up front, naming it."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from engine.client.local import LocalClient
from engine.engine import Engine, EngineConfig
from engine.errors import InvalidRunError
from engine.phases import ActionPhase
from engine.plugins.container import LocalContainerPlugin
from engine.secret_store import MASK
from helpers import run_sdk_task, start_sdk_task, task_file

pytestmark = pytest.mark.sdk

CERT = "cert-canary-51d0a7-do-not-leak"
KEY = "key-canary-93be44-do-not-leak"

TASKS = textwrap.dedent('''
    import os
    import pathlib
    import flyte

    MOUNT = pathlib.Path("/etc/flyte/secrets")
    env = flyte.TaskEnvironment(name="mounted", secrets=[flyte.Secret(key="tls-cert", mount=MOUNT),
                                                         flyte.Secret(key="tls-key", group="tls", mount=MOUNT)])
    pooled = flyte.TaskEnvironment(name="pooled", secrets=[flyte.Secret(key="tls-cert", mount=MOUNT)],
                                   reusable=flyte.ReusePolicy(replicas=1, idle_ttl=60))
    missing = flyte.TaskEnvironment(name="missing", secrets=[flyte.Secret(key="nowhere", mount=MOUNT)])
    sneaky = flyte.TaskEnvironment(name="sneaky", secrets=[flyte.Secret(key="tls-cert", group="..", mount=MOUNT)])

    @env.task
    async def read_them() -> str:
        cert = open("/etc/flyte/secrets/tls-cert").read()
        key = open("/etc/flyte/secrets/tls/tls-key").read()
        mode = oct(os.stat("/etc/flyte/secrets/tls-cert").st_mode & 0o777)
        with open("/etc/taskdeck-written-by-a-task", "w") as f:  # lands in the task's namespace only
            f.write("x")
        print(f"cert is {cert}")
        return f"{cert}|{key}|{mode}|{os.path.exists('/etc/hostname') == os.path.exists('/etc/hostname')}"

    @env.task
    async def leak_it() -> str:
        raise ValueError("bad certificate " + open("/etc/flyte/secrets/tls-cert").read())

    @pooled.task
    async def pooled_read() -> str:
        return open("/etc/flyte/secrets/tls-cert").read()

    @missing.task
    async def needs_missing() -> str:
        return "never"

    @sneaky.task
    async def escapes() -> str:
        return "never"
''')


async def _engine(tmp_path, **config) -> Engine:
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", **config))
    await engine.start()
    if await engine.container_plugin.why_no_secret_mounts() is not None:
        await engine.stop()
        pytest.skip(f"no mount namespaces here: {await engine.container_plugin.why_no_secret_mounts()}")
    await engine.secrets.put("tls-cert", CERT.encode(), project="proj", domain="dev")
    await engine.secrets.put("tls-key", KEY.encode(), project="proj")
    return engine


@pytest.mark.parametrize("start", ["fork", "exec"])
async def test_a_task_reads_its_secret_files_and_nothing_else_sees_them(tmp_path, start):
    engine = await _engine(tmp_path, task_start=start)
    data = tmp_path / "data"
    try:
        tasks = task_file(tmp_path, "mounted_tasks.py", TASKS)
        result = await run_sdk_task(engine, tasks, "read_them")
        assert result.phase == ActionPhase.SUCCEEDED, result.error
        assert result.outputs == {"o0": f"{CERT}|{KEY}|0o400|True"}
        assert not os.path.exists("/etc/flyte/secrets/tls-cert")  # the host's /etc: untouched
        assert not os.path.exists("/etc/taskdeck-written-by-a-task")
        assert os.listdir(engine.container_plugin.secret_scratch) == []  # the tmpfs was the task's alone
        log = engine.reconciler.log_path(result.run.run_name, "a0", 1)
        header = log.read_text().splitlines()[0]
        assert ("forked" in header) == (start == "fork"), header
        local = LocalClient(engine.services)
        shown = "\n".join(line.text for line in (await local.read_log(result.run.run_name, "a0", 1)).lines)
        assert f"cert is {MASK}" in shown and CERT not in shown
        events = json.dumps([e.to_json() for e in await local.list_events(result.run.run_name, "a0")])
        assert CERT not in events and KEY not in events
    finally:
        await engine.stop()
    on_disk = b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file() and p.name != "outputs.pb")
    assert CERT.encode() not in on_disk.replace(f"cert is {CERT}".encode(), b"")  # the task's own print aside
    assert KEY.encode() not in on_disk


async def test_an_error_that_quotes_a_secret_file_is_masked(tmp_path):
    engine = await _engine(tmp_path)
    try:
        result = await run_sdk_task(engine, task_file(tmp_path, "mounted_tasks.py", TASKS), "leak_it")
        assert result.phase == ActionPhase.FAILED
        assert f"bad certificate {MASK}" in result.error["message"] and CERT not in result.error["message"]
    finally:
        await engine.stop()


async def test_a_reusable_task_with_secret_files_runs_as_its_own_process(tmp_path):
    engine = await _engine(tmp_path)
    try:
        result = await run_sdk_task(engine, task_file(tmp_path, "mounted_tasks.py", TASKS), "pooled_read")
        assert result.phase == ActionPhase.SUCCEEDED, result.error
        assert result.outputs == {"o0": CERT}
        assert all(not pool.workers for pool in engine.reusable_plugin.pools.values())  # no worker ran it
    finally:
        await engine.stop()


async def test_a_secret_file_that_cannot_be_given_is_refused_up_front(tmp_path, monkeypatch):
    engine = await _engine(tmp_path)
    try:
        tasks = task_file(tmp_path, "mounted_tasks.py", TASKS)
        with pytest.raises(InvalidRunError, match=r"secret 'nowhere' mounted as a file, which does not exist.*"
                                                  r"taskdeck secret create nowhere --project proj --domain dev"):
            await start_sdk_task(engine, tasks, "needs_missing")
        with pytest.raises(InvalidRunError, match=r"not a path of plain names"):
            await start_sdk_task(engine, tasks, "escapes")

        async def cannot() -> str:
            return "a task process here cannot have a mount namespace of its own (Operation not permitted)"

        monkeypatch.setattr(engine.container_plugin, "why_no_secret_mounts", cannot)
        with pytest.raises(InvalidRunError, match=r"tls-cert mounted as a file, which cannot be done here: a task "
                                                  r"process here cannot have a mount namespace.*as_env_var"):
            await start_sdk_task(engine, tasks, "read_them")
        assert await engine.runs.list_runs() == []  # nothing was created
    finally:
        await engine.stop()


@pytest.mark.parametrize("start", ["fork", "exec"])
async def test_secret_files_that_cannot_be_mounted_at_launch_fail_the_attempt_saying_why(tmp_path, monkeypatch,
                                                                                        start):
    engine = await _engine(tmp_path, task_start=start)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setattr(LocalContainerPlugin, "secret_scratch", property(lambda self: blocker))
    try:
        result = await run_sdk_task(engine, task_file(tmp_path, "mounted_tasks.py", TASKS), "read_them")
        assert result.phase == ActionPhase.FAILED
        assert result.error["kind"] == "SYSTEM", result.error  # not the task's fault: retried as a system failure
        assert "[SecretMountFailed] the secrets the task asks for as files could not be mounted" in \
            result.error["message"], result.error
        log = engine.reconciler.log_path(result.run.run_name, "a0", 1).read_text()
        assert "cannot mount the task's secret files at /etc/flyte/secrets" in log
        assert CERT not in log and KEY not in log
    finally:
        await engine.stop()


def test_secret_file_names_and_mount_points_are_read_as_the_kernel_writes_them():
    from engine.plugins import secret_mounts

    assert secret_mounts._unescape(r"/etc/my\040dir\011x") == "/etc/my dir\tx"
    for bad in ("../passwd", "tls/../../x", "/etc/shadow", "", "a//b", "./a"):
        with pytest.raises(secret_mounts.MountError):
            secret_mounts._safe_relative(bad)
    assert secret_mounts._safe_relative("tls/tls-key") == "tls/tls-key"
