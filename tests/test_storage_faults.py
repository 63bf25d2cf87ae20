"""Storage faults: writes failing stop launches, say why, and the engine resumes when storage returns."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.plugins.core import PhaseInfo
from engine.store.base import StorageChanged, StorageUnavailableError
from helpers import ScriptedPlugin, eventually, shell_spec, task_spec


class _FullDisk:
    """Stands in for the writer's connection while the disk is full."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def execute(self, sql, *args):
        if sql.startswith("BEGIN") or sql.startswith("ROLLBACK"):
            return self.real.execute(sql, *args)
        raise sqlite3.OperationalError("database or disk is full")

    def executemany(self, *args):
        raise sqlite3.OperationalError("database or disk is full")


async def test_a_full_disk_stops_launches_says_why_and_recovers(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=0.1))
    plugin = ScriptedPlugin(lambda tctx, i: PhaseInfo.running() if i < 2 else PhaseInfo.success())
    engine.registry.register(plugin)
    messages = []
    engine.store.subscribe(lambda c: messages.append(c.error) if isinstance(c, StorageChanged) else None)
    await engine.start()
    try:
        run = await engine.runs.create_run(task_spec("scripted"))
        await eventually(lambda: len(plugin.handled) >= 2)
        real = engine.store._write_db
        engine.store._write_db = _FullDisk(real)
        await eventually(lambda: engine.store.storage_error is not None, timeout=10)
        handled = len(plugin.handled)
        for _ in range(5):
            engine.manager.wake(f"{run.run_name}-a0")
            await asyncio.sleep(0.1)
        assert len(plugin.handled) == handled  # nothing is handled (launched) while writes fail
        with pytest.raises(StorageUnavailableError):
            await engine.runs.create_run(task_spec("scripted"))  # refused, not half-written
        assert messages and "disk is full" in messages[0]

        engine.store._write_db = real
        result = await engine.runs.wait_for_run(run.run_name, timeout=15)
        assert result.phase == ActionPhase.SUCCEEDED
        assert messages[-1] is None and engine.store.storage_error is None
    finally:
        await engine.stop()


async def test_a_launch_whose_status_write_fails_is_adopted_not_launched_twice(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=0.2))
    real_update = engine.store.update_status
    failed = []

    async def update_status(obj, *args, **kwargs):
        if obj.status.plugin_phase == "PhaseRunning" and not failed:
            failed.append(obj.name)
            raise StorageUnavailableError("injected: the write after the launch is lost")
        return await real_update(obj, *args, **kwargs)

    engine.store.update_status = update_status
    await engine.start()
    try:
        count = tmp_path / "launches"
        run = await engine.runs.create_run(shell_spec(f"echo launched >> {count}; sleep 0.5"))
        result = await engine.runs.wait_for_run(run.run_name, timeout=15)
        assert failed and result.phase == ActionPhase.SUCCEEDED
        assert count.read_text().splitlines() == ["launched"]  # exactly one process ran
    finally:
        await engine.stop()


async def test_a_truncated_outputs_file_is_not_a_success(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=0.2, max_system_failures=1))
    await engine.start()
    try:
        spec = shell_spec('mkdir -p "{{.outputPrefix}}"; printf "\\377\\377\\377" > "{{.outputPrefix}}/outputs.pb"')
        run = await engine.runs.create_run(spec)
        result = await engine.runs.wait_for_run(run.run_name, timeout=20)
        assert result.phase == ActionPhase.FAILED
        assert result.error["code"] == "MaxSystemFailuresExceeded" and "outputs.pb is unreadable" in result.error["message"]
    finally:
        await engine.stop()


async def test_an_empty_outputs_file_is_a_system_failure_when_outputs_are_declared(tmp_path):
    from flyteidl2.core import types_pb2

    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=0.2, max_system_failures=1))
    await engine.start()
    try:
        int_output = {"o0": types_pb2.LiteralType(simple=types_pb2.SimpleType.INTEGER)}
        empty = shell_spec(': > "{{.outputPrefix}}/outputs.pb"', outputs=int_output)  # what a full disk leaves
        result = await engine.runs.wait_for_run((await engine.runs.create_run(empty)).run_name, timeout=20)
        assert result.phase == ActionPhase.FAILED and result.error["kind"] == "SYSTEM"
        assert result.error["code"] == "MaxSystemFailuresExceeded" and "IncompleteOutputs" in result.error["message"]
        events = await engine.runs.list_events(result.run.key)
        assert not any(ActionPhase(e.phase) == ActionPhase.SUCCEEDED for e in events)
        nothing_declared = await engine.runs.create_run(shell_spec(': > "{{.outputPrefix}}/outputs.pb"'))
        assert (await engine.runs.wait_for_run(nothing_declared.run_name, timeout=20)).phase == ActionPhase.SUCCEEDED
    finally:
        await engine.stop()


async def test_an_unwritable_logs_directory_is_a_storage_fault_the_action_waits_out(tmp_path):
    """Not four system failures in 2 ms: the action waits (with the reason, backing off) and then runs."""
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=0.2, max_system_failures=1))
    changes = []
    engine.health.subscribe(lambda change: changes.append(change.error))
    await engine.start()
    (tmp_path / "logs").write_text("not a directory")  # refuses every log, whoever runs the tests (even root)
    try:
        run = await engine.runs.create_run(shell_spec("echo ran"))
        name = f"{run.run_name}-a0"
        await eventually(lambda: engine.health.error is not None, timeout=10)
        assert "logs" in engine.health.error and changes and changes[0] == engine.health.error
        obj = await eventually(lambda: (o := engine.store.peek(name)) is not None and o.status.conditions and o)
        await eventually(lambda: "storage unavailable" in (engine.store.peek(name).status.condition("Progressing")
                                                           .message or ""), timeout=10)
        await asyncio.sleep(3)  # waits out several backoffs: neither failed nor counted as system failures
        obj = engine.store.peek(name)
        assert obj.status.system_failures == 0 and not obj.status.is_terminal and obj.status.attempts <= 1
        assert engine.reconciler._storage_waits[name] >= 2  # backing off: 1 s, 2 s, ...
        (tmp_path / "logs").unlink()
        result = await engine.runs.wait_for_run(run.run_name, timeout=90)
        assert result.phase == ActionPhase.SUCCEEDED and result.run.attempts == 1
        assert engine.health.error is None and changes[-1] is None
    finally:
        await engine.stop()


def test_headless_reports_a_file_storage_fault_in_its_output_and_health(tmp_path):
    import base64
    import json
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = Path(__file__).parent.parent
    (tmp_path / "logs").write_text("not a directory")
    server = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(tmp_path), "--headless"],
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read_until(text: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while not any(text in line for line in lines):
            assert time.time() < deadline and server.poll() is None, "\n".join(lines)
            lines.append(server.stdout.readline())

    def call(method: str, path: str, body=None):
        token = (tmp_path / "token").read_text().strip()
        request = urllib.request.Request(url + path, data=json.dumps(body).encode() if body is not None else None,
                                         method=method, headers={"authorization": f"Bearer {token}",
                                                                 "content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    try:
        read_until("serving")
        url = next(line for line in lines if "serving" in line).split(" at ", 1)[1].split(" ", 1)[0]
        run = call("POST", "/taskdeck/v1/runs", {"taskSpec": base64.b64encode(
            shell_spec("echo ran").SerializeToString()).decode()})["run"]
        read_until("storage unavailable")
        health = call("GET", "/health")
        assert health["status"] == "degraded" and "logs" in health["storageError"]
        (tmp_path / "logs").unlink()
        read_until("storage available again")
        assert call("POST", f"/taskdeck/v1/runs/{run}/wait?timeout=60", {})["phase"] == "SUCCEEDED"
    finally:
        server.terminate()
        server.wait(timeout=30)


async def test_a_run_whose_inputs_cannot_be_written_is_refused_and_the_fault_clears_by_itself(tmp_path):
    import httpx

    from helpers import owner_headers, sleep_inputs, sleep_spec

    engine = Engine(EngineConfig(data_dir=tmp_path, requeue_after=0.2))
    await engine.start()
    (tmp_path / "data").write_text("not a directory")  # where every run's inputs go
    try:
        import base64
        body = {"taskSpec": base64.b64encode(sleep_spec().SerializeToString()).decode(),
                "inputs": base64.b64encode(sleep_inputs(0).SerializeToString()).decode()}
        async with httpx.AsyncClient(base_url=engine.url, headers=owner_headers(engine)) as client:
            refused = await client.post("/taskdeck/v1/runs", json=body)
            assert refused.status_code == 503 and "cannot write the run's inputs" in refused.json()["error"]
            assert await engine.runs.list_runs() == []  # nothing half-made
            assert (await client.get("/health")).json()["status"] == "degraded"
            (tmp_path / "data").unlink()
            await eventually(lambda: engine.health.error is None, timeout=10)  # noticed without a new request
            assert (await client.get("/health")).json()["status"] == "ok"
            assert (await client.post("/taskdeck/v1/runs", json=body)).status_code == 200
    finally:
        await engine.stop()
