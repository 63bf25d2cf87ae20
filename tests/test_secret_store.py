"""The secret store: scoped secrets, encrypted at rest with a key outside the database, given to the tasks
that ask for them, and never shown: a canary value is followed through events, the database file's bytes,
the API, the CLI, the console and the logs as shown."""

from __future__ import annotations

import json
import os
import stat
import textwrap

import pytest

from engine.client.local import LocalClient
from engine.client.remote import RemoteClient
from engine.engine import Engine, EngineConfig
from engine.errors import InvalidRunError
from engine.phases import ActionPhase
from engine.secret_store import MASK, EmbeddedSecretStore, SecretNotFoundError, mask
from engine.store.sqlite import SqliteStore
from helpers import cli, run_sdk_task, start_sdk_task, task_file, until

CANARY = "canary-7f3e9c1d-do-not-leak"

TASKS = textwrap.dedent('''
    import flyte
    import os

    env = flyte.TaskEnvironment(name="vault", secrets=[flyte.Secret(key="api-token", as_env_var="API_TOKEN")])

    @env.task
    async def use_it() -> int:
        token = os.environ["API_TOKEN"]
        print(f"using token {token} now")
        return len(token)

    @env.task
    async def leak_it() -> int:
        raise ValueError(f"bad token {os.environ['API_TOKEN']}")
''')


async def test_scopes_resolve_most_specific_first_and_values_are_encrypted(tmp_path):
    store = SqliteStore(tmp_path / "taskdeck.db")
    await store.start()
    try:
        secrets = EmbeddedSecretStore(store, tmp_path)
        await secrets.put("token", b"global-value")
        await secrets.put("token", b"project-value", project="proj")
        await secrets.put("token", b"domain-value", project="proj", domain="dev")
        assert await secrets.resolve("token", project="proj", domain="dev") == b"domain-value"
        assert await secrets.resolve("token", project="proj", domain="prod") == b"project-value"
        assert await secrets.resolve("token", project="other", domain="dev") == b"global-value"
        with pytest.raises(SecretNotFoundError):
            await secrets.resolve("missing", project="proj", domain="dev")
        listed = [(i.name, i.project, i.domain) for i in await secrets.list(project="proj", domain="dev")]
        assert listed == [("token", "", ""), ("token", "proj", ""), ("token", "proj", "dev")]
        assert [i.project for i in await secrets.list(project="other", domain="dev")] == [""]
        await secrets.delete("token", project="proj", domain="dev")
        assert await secrets.resolve("token", project="proj", domain="dev") == b"project-value"
        with pytest.raises(SecretNotFoundError):
            await secrets.delete("token", project="proj", domain="dev")
        for bad in ("", "-x", "a b", "x" * 300):
            with pytest.raises(InvalidRunError):
                await secrets.put(bad, b"v")
        with pytest.raises(InvalidRunError, match="text"):
            await secrets.put("binary", b"\xff\x00")
    finally:
        await store.close()
    assert stat.S_IMODE(os.stat(tmp_path / "secrets.key").st_mode) == 0o600
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("taskdeck.db*"))
    assert b"domain-value" not in raw and b"global-value" not in raw  # ciphertext only


def test_masking_replaces_every_value_and_each_of_its_lines():
    assert mask("token abcd1234 and abcd1234!", ["abcd1234"]) == f"token {MASK} and {MASK}!"
    assert mask("line two: second-part", ["first-part\nsecond-part"]) == f"line two: {MASK}"
    assert mask("a b c", ["a"]) == "a b c"  # too short to mask without blanking the log


@pytest.mark.sdk
async def test_a_canary_secret_reaches_the_task_and_nothing_shows_it(tmp_path):
    data = tmp_path / "data"
    engine = Engine(EngineConfig(data_dir=data))
    await engine.start()
    try:
        code, out, err = await cli(data, "secret", "create", "api-token", "--project", "proj", "--domain", "dev",
                                    "--value-file", "-", stdin=CANARY + "\n")
        assert code == 0, err
        assert CANARY not in out + err
        code, out, err = await cli(data, "secret", "list", "--json")
        assert json.loads(out)[0]["name"] == "api-token" and CANARY not in out

        tasks = task_file(tmp_path, "vault_tasks.py", TASKS)
        used = await run_sdk_task(engine, tasks, "use_it")
        assert used.phase == ActionPhase.SUCCEEDED, used.error
        assert used.outputs == {"o0": len(CANARY)}  # the task had the value
        leaked = await run_sdk_task(engine, tasks, "leak_it")
        assert leaked.phase == ActionPhase.FAILED
        assert MASK in leaked.error["message"] and CANARY not in leaked.error["message"]

        local = LocalClient(engine.services)
        remote = RemoteClient(engine.url, engine.authority.owner_token)
        try:
            shown = []
            for run in (used.run.run_name, leaked.run.run_name):
                chunk = await remote.read_log(run, "a0", 1)
                shown.append("\n".join(line.text for line in chunk.lines))
                shown.append(json.dumps([e.to_json() for e in await remote.list_events(run, "a0")]))
                shown.append(json.dumps(await remote.result(run)))
                shown.append(json.dumps(await remote.task_action(run, "a0")))
            shown.append(json.dumps(await remote.list_secrets()))
            assert f"using token {MASK} now" in shown[0]  # the line is there, masked
            assert CANARY not in "\n".join(shown)
            assert CANARY not in "\n".join(
                line.text for line in (await local.read_log(used.run.run_name, "a0", 1)).lines)
        finally:
            await remote.close()
        log_file = engine.reconciler.log_path(used.run.run_name, "a0", 1)
        assert stat.S_IMODE(os.stat(log_file).st_mode) & 0o077 == 0  # the raw log is the owner's alone

        from console.app import TaskDeckApp
        from console.screens.run import RunScreen
        from textual.widgets import RichLog

        app = TaskDeckApp(engine)
        async with app.run_test(size=(160, 45)) as pilot:
            app.open_run(used.run.run_name)
            await until(pilot, lambda: isinstance(app.screen, RunScreen))
            await pilot.press("l")
            log = app.screen.query_one("#log", RichLog)
            await until(pilot, lambda: any(MASK in str(line.text) for line in log.lines), timeout=15)
            assert not any(CANARY in str(line.text) for line in log.lines)
    finally:
        await engine.stop()
    raw = b"".join(p.read_bytes() for p in data.glob("taskdeck.db*"))
    assert CANARY.encode() not in raw


@pytest.mark.sdk
async def test_a_secret_that_does_not_exist_is_refused_and_one_deleted_later_fails_before_start(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False))
    await engine.start()
    try:
        tasks = task_file(tmp_path, "vault_tasks.py", TASKS)
        with pytest.raises(InvalidRunError, match="taskdeck secret create api-token --project proj --domain dev"):
            await start_sdk_task(engine, tasks, "use_it")
        await engine.secrets.put("api-token", CANARY.encode(), project="proj")  # project-wide
        record = await start_sdk_task(engine, tasks, "use_it")
        await engine.secrets.delete("api-token", project="proj")
        result = await engine.runs.wait_for_run(record.run_name, timeout=60)
        # either it had launched with the value before the delete, or it fails saying which secret is gone
        assert result.phase == ActionPhase.SUCCEEDED or result.error["code"] == "SecretNotFound", result.error
    finally:
        await engine.stop()


async def test_variables_pods_take_by_reference_are_not_read_at_launch():
    """On the Kubernetes backend a pod takes a secret kept in a Kubernetes Secret by reference: the engine
    reads the values of the other requests only (each Secret read once per launch, not twice)."""
    from flyteidl2.core import security_pb2, tasks_pb2

    from engine.secret_store import secret_env

    class CountingStore:
        resolved: list[str] = []

        async def resolve(self, name, *, project, domain):
            self.resolved.append(name)
            return f"value-of-{name}".encode()

    template = tasks_pb2.TaskTemplate()
    for key, var in (("kept", "KEPT"), ("other", "OTHER")):
        template.security_context.secrets.add(key=key, env_var=var, mount_requirement=security_pb2.Secret.ENV_VAR)
    store = CountingStore()
    assert await secret_env(store, template, "p", "d", by_reference={"KEPT"}) == {"OTHER": "value-of-other"}
    assert store.resolved == ["other"]
    assert await secret_env(store, template, "p", "d") == {"KEPT": "value-of-kept", "OTHER": "value-of-other"}
