"""The console attached to a headless engine in another process: the same screens, through its API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flyteidl2.common import identifier_pb2
from flyteidl2.core import types_pb2
from flyteidl2.workflow import queue_service_pb2, run_definition_pb2
from flyteidl2.workflow.queue_service_connect import QueueServiceClient
from textual.widgets import DataTable, Static

from console.app import TaskDeckApp
from console.screens.dialogs import ConfirmScreen, InputScreen
from console.screens.run import RunScreen
from console.widgets.action_tree import ActionTree
from engine.auth import endpoint_with_credential
from engine.client import ActionPhase
from engine.client.remote import RemoteClient
from helpers import shell_spec, sleep_inputs, sleep_spec, until

ROOT = Path(__file__).parent.parent


class Headless:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.process = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data_dir),
                                         "--headless"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.time() + 60
        while True:
            try:
                endpoint = json.loads((data_dir / "engine.json").read_text())
                if endpoint["pid"] == self.process.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert time.time() < deadline and self.process.poll() is None, "the engine did not start"
            time.sleep(0.05)
        self.url = endpoint["url"]
        self.token = (data_dir / "token").read_text().strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def headless(tmp_path):
    engine = Headless(tmp_path / "data")
    yield engine
    engine.stop()



def visible_runs(app) -> set[str]:
    table = app.screen.query_one(DataTable)
    return {table.coordinate_to_cell_key((i, 0)).row_key.value for i in range(table.row_count)}


def counters(app) -> str:
    return str(app.screen.query_one("#counters", Static).render())


async def _sleep_run(client: RemoteClient, name: str, seconds: float) -> str:
    run = await client.create_run(sleep_spec().SerializeToString(), sleep_inputs(seconds).SerializeToString(),
                                  project="flytesnacks", domain="development", name=name)
    return run.run_name


async def test_an_attached_console_shows_aborts_retries_and_signals_through_the_api(headless):
    client = RemoteClient(headless.url, headless.token)
    await _sleep_run(client, "rsleepy", 60)
    failing = await client.create_run(shell_spec("echo trying; exit 3", retries=0).SerializeToString(), b"",
                                      project="flytesnacks", domain="development", name="rfailing")
    waiting = await _sleep_run(client, "rwaiting", 60)
    while (await client.get_run(waiting)).phase != ActionPhase.RUNNING:
        await asyncio.sleep(0.05)
    condition = run_definition_pb2.ConditionAction(
        name="approve", prompt="Deploy to production?",
        type=types_pb2.LiteralType(simple=types_pb2.SimpleType.BOOLEAN))
    run_id = identifier_pb2.RunIdentifier(org="local", project="flytesnacks", domain="development", name=waiting)
    task_token = _run_token(headless, waiting)
    await QueueServiceClient(endpoint_with_credential(headless.url, task_token)).enqueue_action(
        queue_service_pb2.EnqueueActionRequest(action_id=identifier_pb2.ActionIdentifier(run=run_id, name="approve"),
                                               parent_action_name="a0", condition=condition))

    app = TaskDeckApp(client=RemoteClient(headless.url, headless.token))
    async with app.run_test(size=(160, 45)) as pilot:
        await until(pilot, lambda: visible_runs(app) == {"rsleepy", "rfailing", "rwaiting"})
        await until(pilot, lambda: "paused 1" in counters(app))  # a run waiting on a condition is PAUSED
        await pilot.press("slash", *"phase:paused", "enter")
        await until(pilot, lambda: visible_runs(app) == {"rwaiting"})
        await pilot.press("escape")
        await until(pilot, lambda: len(visible_runs(app)) == 3)

        app.open_run("rwaiting")
        await until(pilot, lambda: isinstance(app.screen, RunScreen) and "approve" in app.screen.records)
        app.screen.select_action("approve")
        await until(pilot, lambda: app.screen.query_one(ActionTree).cursor_key == "approve")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, InputScreen))
        prompt = str(app.screen.query_one(Static).render())
        assert "approve" in prompt and "boolean" in prompt and "Deploy to production?" in prompt
        await pilot.press(*"true", "enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen))
        deadline = time.time() + 15
        while (await client.get_actions(waiting, ["approve"]))[0].phase != ActionPhase.SUCCEEDED:
            assert time.time() < deadline
            await pilot.pause(0.1)
        await pilot.press("escape")

        await until(pilot, lambda: "rfailing" in visible_runs(app))
        assert (await client.wait(failing.run_name, 30))["phase"] == "FAILED"
        table = app.screen.query_one(DataTable)
        table.move_cursor(row=table.get_row_index("rfailing"), animate=False)
        await pilot.press("r")
        deadline = time.time() + 30
        while (await client.get_run("rfailing")).attempts < 2:
            assert time.time() < deadline
            await pilot.pause(0.1)

        table.move_cursor(row=table.get_row_index("rsleepy"), animate=False)
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        result = await client.wait("rsleepy", 30)
        assert result["phase"] == "ABORTED" and result["error"]["message"] == "aborted from the console"
        await until(pilot, lambda: "aborted 1" in counters(app))
    await client.abort(waiting)
    await client.close()


def _run_token(headless: Headless, run: str) -> str:
    from engine.auth import Authority

    authority = Authority(headless.data_dir)
    authority.load()
    return authority.run_token("flytesnacks", "development", run)


async def test_the_console_says_when_its_engine_is_gone_and_reconnects_by_itself(tmp_path):
    data = tmp_path / "data"
    first = Headless(data)
    client = RemoteClient(first.url, first.token)
    await _sleep_run(client, "rlong", 120)
    app = TaskDeckApp(client=RemoteClient(first.url, first.token))
    try:
        async with app.run_test(size=(160, 45)) as pilot:
            await until(pilot, lambda: visible_runs(app) == {"rlong"})
            first.stop()
            await until(pilot, lambda: "disconnected from the engine at" in counters(app), timeout=30)
            second = Headless(data)  # the same data directory: the same port, the same token
            try:
                assert second.url == first.url
                await until(pilot, lambda: app.connected and "disconnected" not in counters(app), timeout=30)
                assert any("reconnected" in n.message for n in app._notifications)
                await client.abort("rlong")
                await until(pilot, lambda: "aborted 1" in counters(app), timeout=30)  # live again
            finally:
                second.stop()
    finally:
        await client.close()


async def test_two_consoles_and_the_cli_see_the_same_state(headless):
    client = RemoteClient(headless.url, headless.token)
    first = TaskDeckApp(client=RemoteClient(headless.url, headless.token))
    second = TaskDeckApp(client=RemoteClient(headless.url, headless.token), read_only=True)
    try:
        async with first.run_test(size=(160, 45)) as one, second.run_test(size=(120, 30)) as two:
            await _sleep_run(client, "rshared", 60)
            await until(one, lambda: visible_runs(first) == {"rshared"})
            await until(two, lambda: visible_runs(second) == {"rshared"})
            await one.press("ctrl+d", "y")  # the first console aborts it...
            await until(two, lambda: "aborted 1" in counters(second))  # ...and the second sees it
            cli = subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(headless.data_dir), "get",
                                  "runs", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
            assert [r["phase"] for r in json.loads(cli.stdout)] == ["ABORTED"]  # and so does the CLI
            await two.press("ctrl+d")
            await two.pause(0.3)
            assert not isinstance(second.screen, ConfirmScreen)  # the read-only one cannot abort
    finally:
        await client.close()
