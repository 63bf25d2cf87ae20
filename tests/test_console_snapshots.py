"""Snapshots of each console screen, with fixed data, a fixed timezone and no engine activity."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from console.app import TaskDeckApp
from console.screens.run import RunScreen
from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.store.base import ActionRecord, EventRecord
from engine.store.sqlite import SqliteStore

T0 = 1_795_000_000.0  # a fixed instant

ROWS = [
    # run, action, parent, task, phase, attempts, offset, duration ms, error
    ("rpipeline000000000001", "a0", None, "showcase.pipeline", ActionPhase.SUCCEEDED, 1, 0, 4400, None),
    ("rpipeline000000000001", "n1", "a0", "showcase.square", ActionPhase.SUCCEEDED, 1, 1, 1400, None),
    ("rpipeline000000000001", "n4", "a0", "showcase.square", ActionPhase.SUCCEEDED, 1, 1.5, 1300, None),
    ("rpipeline000000000001", "n2", "a0", "showcase.flaky", ActionPhase.SUCCEEDED, 2, 2, 1200, None),
    ("rpipeline000000000001", "n3", "a0", "showcase.validate", ActionPhase.FAILED, 1, 3, 500,
     ("USER", "ValueError", "total 14 is even: validation rejects it")),
    ("rbroken0000000000002", "a0", None, "basics.boom", ActionPhase.FAILED, 3, 10, 1700,
     ("USER", "RuntimeError", "attempt failed for 1")),
    ("raborted000000000003", "a0", None, "fanout.slow_children", ActionPhase.ABORTED, 1, 20, 5400, None),
    ("rtimedout00000000004", "a0", None, "basics.add", ActionPhase.TIMED_OUT, 2, 30, 600,
     ("USER", "TaskTimeout", "the attempt ran longer than its timeout of 0.3s")),
]
GROUPS = {"n1": "squares", "n4": "squares"}  # the pipeline's fan-out, in one group


def _events(record: ActionRecord, final: ActionPhase, attempts: int) -> list[EventRecord]:
    """Queued, running and the outcome of each attempt; earlier attempts failed, spread over the duration."""
    span = (record.ended_at - record.created_at) / attempts
    events = []
    for attempt in range(1, attempts + 1):
        start = record.created_at + (attempt - 1) * span
        outcome = final if attempt == attempts else ActionPhase.FAILED
        for phase, at in ((ActionPhase.QUEUED, start), (ActionPhase.RUNNING, start + span * 0.2),
                          (outcome, start + span)):
            events.append(EventRecord(record.project, record.domain, record.run_name, record.name, attempt,
                                      int(phase), 0, b"", "", at, at))
    return events


def _fixture_db(path: Path) -> None:
    async def write():
        store = SqliteStore(path / "taskdeck.db")
        await store.start()
        for run, action, parent, task, phase, attempts, offset, duration, error in ROWS:
            record = ActionRecord(project="demo", domain="development", run_name=run, name=action,
                                  parent_action_name=parent, phase=int(phase), task_name=task,
                                  short_name=task.split(".")[-1], task_type="python", created_at=T0 + offset,
                                  updated_at=T0 + offset, ended_at=T0 + offset + duration / 1000,
                                  duration_ms=duration, attempts=attempts,
                                  action_group=GROUPS.get(action, "") if parent else "")
            if error:
                record.error_kind, record.error_code, record.error_message = error
            await store.create_run_action(record, None, None)
            await store.record_events(_events(record, phase, attempts))
        await store.close()

    asyncio.run(write())


@pytest.fixture
def fixed_app(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    _fixture_db(tmp_path)
    yield lambda **kw: TaskDeckApp(Engine(EngineConfig(data_dir=tmp_path, serve=False, gc_interval_seconds=0)), **kw)
    monkeypatch.delenv("TZ")
    time.tzset()


async def _settle(pilot) -> None:
    await pilot.pause(0.6)  # two refresh ticks


def test_runs_screen(snap_compare, fixed_app):
    assert snap_compare(fixed_app(), terminal_size=(140, 20), run_before=_settle)


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
def test_runs_screen_at_the_smallest_and_a_large_terminal(snap_compare, fixed_app, size):
    """At 80x24 RUN, PHASE, DURATION and ERROR stay and the footer fits; at 160x45 every column shows."""
    assert snap_compare(fixed_app(), terminal_size=size, run_before=_settle)


@pytest.mark.parametrize("size", [(80, 24), (160, 45)])
def test_run_screen_at_the_smallest_and_a_large_terminal(snap_compare, fixed_app, size):
    async def before(pilot):
        await _settle(pilot)
        pilot.app.push_screen(RunScreen("rpipeline000000000001"))
        await _settle(pilot)

    assert snap_compare(fixed_app(), terminal_size=size, run_before=before)


def test_runs_screen_failed_only_ascii(snap_compare, fixed_app):
    async def before(pilot):
        await _settle(pilot)
        await pilot.press("f")
        await _settle(pilot)

    assert snap_compare(fixed_app(ascii_only=True), terminal_size=(140, 20), run_before=before)


def test_run_screen(snap_compare, fixed_app):
    async def before(pilot):
        await _settle(pilot)
        pilot.app.push_screen(RunScreen("rpipeline000000000001"))
        await _settle(pilot)
        await pilot.press("down", "down")
        await _settle(pilot)

    assert snap_compare(fixed_app(), terminal_size=(150, 24), run_before=before)


def test_help_overlay(snap_compare, fixed_app):
    async def before(pilot):
        await _settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause(0.2)

    assert snap_compare(fixed_app(), terminal_size=(120, 24), run_before=before)


def test_run_screen_open_group_and_timeline(snap_compare, fixed_app):
    async def before(pilot):
        await _settle(pilot)
        pilot.app.push_screen(RunScreen("rpipeline000000000001"))
        await _settle(pilot)
        await pilot.press("down", "space")  # open the folded group: its members and its rolled-up details
        await _settle(pilot)
        await pilot.press("g")
        await pilot.pause(1.2)  # the timeline redraws once a second

    assert snap_compare(fixed_app(), terminal_size=(150, 24), run_before=before)


def test_abort_confirmation_names_its_target(snap_compare, fixed_app):
    async def before(pilot):
        await _settle(pilot)
        await pilot.press("down", "ctrl+d")
        await pilot.pause(0.2)

    assert snap_compare(fixed_app(), terminal_size=(120, 20), run_before=before)


LISTING = {
    "pools": [{"pool": "56d1a708eab582d8", "environment": "pooled", "version": "7ff19cceabcc529", "minReplicas": 1,
               "maxReplicas": 3, "concurrency": 8, "idleTtlSeconds": 30.0, "scaledownTtlSeconds": 60.0,
               "scope": "global", "waiting": 2, "lastError": "",
               "workers": [{"worker": "w1db62e8e", "pid": 6821, "state": "ready", "running": 8, "claims": 8,
                            "served": 412, "cpuSeconds": 3.25, "startedAt": T0, "startSeconds": 0.51,
                            "idleSeconds": 0.0},
                           {"worker": "w72c50aa9", "pid": 6823, "state": "starting", "running": 0, "claims": 0,
                            "served": 0, "cpuSeconds": 0.2, "startedAt": T0, "startSeconds": None,
                            "idleSeconds": 0.0}]},
              {"pool": "9b5234fcb324c9e0", "environment": "broken", "version": "1", "minReplicas": 2,
               "maxReplicas": 2, "concurrency": 1, "idleTtlSeconds": 30.0, "scaledownTtlSeconds": 30.0,
               "scope": "run", "waiting": 1, "lastError": "the worker exited while starting; see work/workers/x.log",
               "workers": []}],
    "forkServers": [{"key": "0f3c2a9e11b04d77", "pid": 6400, "alive": True, "forks": 37}],
}


def test_workers_screen_shows_pools_and_their_workers(snap_compare, fixed_app):
    async def before(pilot):
        await _settle(pilot)

        async def listing():
            return LISTING

        pilot.app.client.list_workers = listing
        await pilot.press("W")
        await _settle(pilot)

    assert snap_compare(fixed_app(), terminal_size=(150, 16), run_before=before)
