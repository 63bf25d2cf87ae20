"""Garbage collection of terminated TaskActions: the resources go, the history stays."""

from __future__ import annotations

import datetime as dt

from engine.engine import Engine, EngineConfig
from engine.gc import GarbageCollector
from engine.phases import ActionPhase
from helpers import eventually, sleep_inputs, sleep_spec


async def test_terminated_task_actions_are_removed_after_the_ttl_and_rows_stay(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, gc_interval_seconds=0))
    await engine.start()
    try:
        done = await engine.runs.create_run(sleep_spec(), sleep_inputs(0))
        running = await engine.runs.create_run(sleep_spec(), sleep_inputs(60))
        await engine.runs.wait_for_run(done.run_name, timeout=10)
        await eventually(lambda: "flyte.org/completed-time" in engine.store.peek(f"{done.run_name}-a0").metadata.labels)

        keep = GarbageCollector(engine.store, ttl_seconds=3600)
        assert await keep.sweep() == 0  # completed within the TTL

        later = GarbageCollector(engine.store, ttl_seconds=3600,
                                 clock=lambda: dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
        assert await later.sweep() == 1
        await eventually(lambda: engine.store.peek(f"{done.run_name}-a0") is None)
        assert engine.store.peek(f"{running.run_name}-a0") is not None  # not terminated: kept

        row = await engine.store.find_run(done.run_name)
        assert ActionPhase(row.phase) == ActionPhase.SUCCEEDED  # the history stays
        events = [ActionPhase(e.phase).name for e in await engine.runs.list_events(row.key)]
        assert events == ["SUCCEEDED"]  # and deleting a finished action adds no ABORTED event
        await engine.runs.abort_action(running.run_name)
    finally:
        await engine.stop()


async def test_a_zero_ttl_collects_on_the_next_sweep(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, gc_interval_seconds=0))
    await engine.start()
    try:
        run = await engine.runs.create_run(sleep_spec(), sleep_inputs(0))
        await engine.runs.wait_for_run(run.run_name, timeout=10)
        await eventually(lambda: "flyte.org/completed-time" in engine.store.peek(f"{run.run_name}-a0").metadata.labels)
        assert await GarbageCollector(engine.store, ttl_seconds=0).sweep() == 1
    finally:
        await engine.stop()
