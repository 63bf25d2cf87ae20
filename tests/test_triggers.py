"""Triggers: a registered task's schedules (cron and fixed rate, with the kickoff-time input) start runs on
time; each run records the trigger and its scheduled time; activation and deployment are revisions; across
an engine restart no occurrence is missed or started twice, and at most max_catch_up missed ones are fired.
The clock is frozen and advanced by hand."""

from __future__ import annotations

import datetime as dt
import json
import textwrap

import pytest

from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.triggers import ANNOTATION_SCHEDULED, ANNOTATION_TRIGGER, occurrences
from helpers import cli

pytestmark = pytest.mark.sdk

TASKS = textwrap.dedent('''
    from datetime import datetime

    import flyte

    env = flyte.TaskEnvironment(name="scheduled")

    @env.task(triggers=flyte.Trigger("every-minute", flyte.Cron("* * * * *"), inputs={"at": flyte.TriggerTime, "tag": "cron"}))
    async def stamp(at: datetime, tag: str = "none") -> str:
        return f"{tag}@{at.isoformat()}"

    @env.task(triggers=flyte.Trigger("every-five", flyte.FixedRate(5), auto_activate=False))
    async def ping(n: int = 1) -> int:
        return n
''')

T0 = dt.datetime(2026, 12, 2, 9, 0, 30, tzinfo=dt.timezone.utc)


class Clock:
    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def test_cron_and_fixed_rate_occurrences():
    from flyteidl2.task import common_pb2

    cron = common_pb2.Schedule(cron=common_pb2.Cron(expression="*/15 * * * *", timezone="Europe/Paris"))
    got = occurrences(cron, T0, T0 + dt.timedelta(hours=1))
    assert [t.strftime("%H:%M") for t in got] == ["09:15", "09:30", "09:45", "10:00"]
    rate = common_pb2.Schedule(rate=common_pb2.FixedRate(value=20, unit=common_pb2.FixedRateUnit.FIXED_RATE_UNIT_MINUTE))
    assert [t - T0 for t in occurrences(rate, T0, T0 + dt.timedelta(hours=1))] == [
        dt.timedelta(minutes=20), dt.timedelta(minutes=40), dt.timedelta(minutes=60)]
    assert len(occurrences(cron, T0, T0 + dt.timedelta(days=1), limit=10)) == 10  # the most recent ten

    from engine.triggers import due_occurrences

    hourly = common_pb2.Schedule(cron=common_pb2.Cron(expression="0 * * * *"))
    year = T0 + dt.timedelta(days=365)
    kept, older = due_occurrences(hourly, T0, year, keep=10)  # found backwards: no walk through the year
    assert len(kept) == 10 and kept[-1] <= year and kept == sorted(kept) and older == 365 * 24 - 10
    kept, older = due_occurrences(rate, T0, T0 + dt.timedelta(hours=1), keep=2)
    assert [k - T0 for k in kept] == [dt.timedelta(minutes=40), dt.timedelta(minutes=60)] and older == 1


async def _deploy(tmp_path, clock, **config):
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "scheduled.py").write_text(TASKS)
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", allowed_code_dirs=(code,), **config))
    engine.triggers.clock = clock
    await engine.start()
    engine.triggers._task.cancel()  # ticks are driven by the test, with its clock
    return engine, code


async def _fired(engine) -> dict[str, str]:
    """run name → scheduled time, for every triggered run."""
    out = {}
    for record in await engine.runs.list_runs(1000):
        obj = engine.runs.task_action_named(record.run_name, "a0")
        if obj is not None and ANNOTATION_TRIGGER in obj.metadata.annotations:
            out[record.run_name] = obj.metadata.annotations[ANNOTATION_SCHEDULED]
    return out


async def test_schedules_fire_on_time_with_the_kickoff_time_and_survive_a_restart(tmp_path):
    clock = Clock(T0)
    engine, code = await _deploy(tmp_path, clock)
    try:
        rc, out, err = await cli(engine.data_dir, "deploy", str(code / "scheduled.py"), "--json")
        assert rc == 0, err
        assert {r["name"]: r["triggers"] for r in json.loads(out)} == {
            "scheduled.stamp": ["every-minute"], "scheduled.ping": ["every-five"]}
        listed = {t["name"]: t for t in json.loads((await cli(engine.data_dir, "trigger", "list", "--json"))[1])}
        assert listed["every-minute"]["active"] and not listed["every-five"]["active"]  # auto_activate=False

        clock.now = T0 + dt.timedelta(minutes=3, seconds=5)  # 09:01, 09:02, 09:03 are due
        assert await engine.triggers.tick() == 3
        assert await engine.triggers.tick() == 0  # nothing twice
        fired = await _fired(engine)
        assert sorted(fired.values()) == [f"2026-12-02T09:0{m}:00+00:00" for m in (1, 2, 3)]
        run = min(fired, key=fired.get)
        result = await engine.runs.wait_for_run(run, timeout=120)
        assert result.phase == ActionPhase.SUCCEEDED, result.error
        assert result.outputs == {"o0": "cron@2026-12-02T09:01:00+00:00"}  # the kickoff input is the scheduled time
    finally:
        await engine.stop()

    clock.now = T0 + dt.timedelta(minutes=40)  # down for 37 minutes: at most 10 are caught up
    engine, _ = await _deploy(tmp_path, clock)
    try:
        assert await engine.triggers.tick() == 10
        fired = await _fired(engine)
        assert len(fired) == 13 and max(fired.values()) == "2026-12-02T09:40:00+00:00"
        assert min(v for v in fired.values() if v > "2026-12-02T09:03:00+00:00") == "2026-12-02T09:31:00+00:00"
        history = await engine.triggers.history("every-minute", project="flytesnacks", domain="development")
        assert any("skipped 27 missed occurrence(s)" in h["text"] for h in history)

        rc, out, err = await cli(engine.data_dir, "trigger", "deactivate", "every-minute")
        assert rc == 0 and "inactive (revision 2)" in out + err, err
        clock.now += dt.timedelta(minutes=5)
        assert await engine.triggers.tick() == 0
        rc, out, err = await cli(engine.data_dir, "trigger", "activate", "every-minute")
        assert rc == 0, err
        clock.now += dt.timedelta(minutes=1, seconds=1)
        assert await engine.triggers.tick() == 1  # the inactive minutes are not caught up
        rc, out, err = await cli(engine.data_dir, "trigger", "history", "every-minute", "--json")
        revisions = [h["revision"] for h in json.loads(out) if h["revision"]]
        assert revisions == [1, 2, 3]
    finally:
        await engine.stop()


async def test_a_run_created_before_the_cursor_moved_is_not_started_again(tmp_path):
    clock = Clock(T0)
    engine, code = await _deploy(tmp_path, clock)
    try:
        assert (await cli(engine.data_dir, "deploy", str(code / "scheduled.py")))[0] == 0
        trigger = next(t for t in await engine.triggers.list() if t.name == "every-minute")
        clock.now = T0 + dt.timedelta(minutes=1, seconds=1)
        assert await engine.triggers.tick() == 1
        await engine.store.trigger_advance(trigger.project, trigger.domain, trigger.name, 0)  # as if it had not moved
        await engine.store._submit(lambda batch: batch.sql(
            "UPDATE triggers SET cursor = ? WHERE name = ?", (trigger.cursor, trigger.name)))
        assert await engine.triggers.tick() == 0  # the same occurrence: its run exists already
        assert len(await _fired(engine)) == 1
    finally:
        await engine.stop()


async def test_the_console_lists_triggers_and_a_switches_one(tmp_path):
    from console.app import TaskDeckApp
    from console.screens.triggers import TriggersScreen
    from helpers import until

    clock = Clock(T0)
    engine, code = await _deploy(tmp_path, clock)
    try:
        assert (await cli(engine.data_dir, "deploy", str(code / "scheduled.py")))[0] == 0
        app = TaskDeckApp(engine)
        async with app.run_test(size=(160, 45)) as pilot:
            app.action_triggers()
            await until(pilot, lambda: isinstance(app.screen, TriggersScreen) and len(app.screen.rows) == 2)
            rows = app.screen.rows
            assert rows["flytesnacks/development/every-minute"][3] == "yes"
            assert rows["flytesnacks/development/every-five"][3] == "no"
            table = app.screen.query_one("DataTable")
            index = table.get_row_index("flytesnacks/development/every-minute")
            table.move_cursor(row=index)
            await pilot.press("a")
            await until(pilot, lambda: app.screen.rows["flytesnacks/development/every-minute"][3] == "no")
            trigger = next(t for t in await engine.triggers.list() if t.name == "every-minute")
            assert not trigger.active and trigger.revision == 2
    finally:
        if engine.started:
            await engine.stop()


async def test_an_older_database_read_without_an_engine_has_no_triggers_rather_than_an_error(tmp_path):
    import sqlite3

    from engine.client.local import read_only_client

    engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False))
    await engine.start()
    await engine.stop()
    with sqlite3.connect(tmp_path / "data" / "taskdeck.db") as conn:  # as an engine before these tables made it
        for table in ("triggers", "trigger_history", "tasks", "secrets"):
            conn.execute(f"DROP TABLE {table}")
    async with read_only_client(tmp_path / "data") as client:
        assert await client.list_triggers() == [] and await client.list_tasks() == []
        assert await client.list_secrets() == []


async def test_an_active_trigger_keeps_an_idle_engine_serving(tmp_path, monkeypatch):
    import asyncio

    from engine import headless

    monkeypatch.setattr(headless, "IDLE_CHECK_SECONDS", 0.05)
    clock = Clock(T0)
    engine, code = await _deploy(tmp_path, clock)
    try:
        assert (await cli(engine.data_dir, "deploy", str(code / "scheduled.py")))[0] == 0
        stop = asyncio.Event()
        watch = asyncio.ensure_future(headless._idle_watch(engine, 0.2, stop, lambda text: None))
        await asyncio.sleep(0.6)
        assert not stop.is_set()  # every-minute is active: there are runs to start
        await engine.triggers.set_active("every-minute", False, project="flytesnacks", domain="development")
        await asyncio.wait_for(stop.wait(), 5)  # nothing left to do: idle, it stops
        await watch
    finally:
        await engine.stop()
