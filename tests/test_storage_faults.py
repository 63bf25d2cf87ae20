"""Storage faults: writes failing stop launches, say why, and the engine resumes when storage returns."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from flyteidl2.core import tasks_pb2

from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.plugins.core import PhaseInfo
from engine.store.base import StorageChanged, StorageUnavailableError
from helpers import ScriptedPlugin, eventually, task_spec


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
            engine.manager.queue.add(f"{run.run_name}-a0")
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


def _shell_spec(script: str):
    spec = task_spec("container")
    spec.task_template.container.CopyFrom(tasks_pb2.Container(image="local", args=["sh", "-c", script]))
    return spec


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
        run = await engine.runs.create_run(_shell_spec(f"echo launched >> {count}; sleep 0.5"))
        result = await engine.runs.wait_for_run(run.run_name, timeout=15)
        assert failed and result.phase == ActionPhase.SUCCEEDED
        assert count.read_text().splitlines() == ["launched"]  # exactly one process ran
    finally:
        await engine.stop()


async def test_a_truncated_outputs_file_is_not_a_success(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=0.2, max_system_failures=1))
    await engine.start()
    try:
        spec = _shell_spec('mkdir -p "{{.outputPrefix}}"; printf "\\377\\377\\377" > "{{.outputPrefix}}/outputs.pb"')
        run = await engine.runs.create_run(spec)
        result = await engine.runs.wait_for_run(run.run_name, timeout=20)
        assert result.phase == ActionPhase.FAILED
        assert result.error["code"] == "MaxSystemFailuresExceeded" and "outputs.pb is unreadable" in result.error["message"]
    finally:
        await engine.stop()
