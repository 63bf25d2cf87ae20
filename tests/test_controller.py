"""The work queue and the controller manager: de-duplication, single flight per key, requeue, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


from engine.controller import ControllerManager, WorkQueue
from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.reconciler import Result
from engine.store.sqlite import SqliteStore
from helpers import eventually, make_task_action, sleep_inputs, sleep_spec


async def test_queue_deduplicates_keys():
    queue = WorkQueue()
    for _ in range(5):
        queue.add("a")
    queue.add("b")
    assert len(queue) == 2
    assert await queue.get() == "a" and await queue.get() == "b"


async def test_a_key_changed_while_processing_is_requeued_after_done_not_handed_out_twice():
    queue = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add("a")  # changed while a worker holds it
    assert len(queue) == 0  # not handed to a second worker
    queue.done(key)
    assert len(queue) == 1 and await queue.get() == "a"


async def test_delayed_requeue_keeps_the_earliest_deadline():
    queue = WorkQueue()
    queue.add_after("a", 5.0)
    queue.add_after("a", 0.02)
    queue.add_after("a", 3.0)
    assert await asyncio.wait_for(queue.get(), 1.0) == "a"


async def test_rate_limited_requeue_backs_off_exponentially_and_forget_resets():
    queue = WorkQueue(base_backoff=0.01, max_backoff=1.0)
    delays = [queue.add_rate_limited("a") for _ in range(4)]
    assert delays == [0.01, 0.02, 0.04, 0.08]
    queue.forget("a")
    assert queue.add_rate_limited("a") == 0.01


async def test_manager_never_reconciles_one_key_twice_at_once(tmp_path):
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.start()
    running: set[str] = set()
    overlaps = []
    calls = []

    async def reconcile(name: str) -> Result:
        if name in running:
            overlaps.append(name)
        running.add(name)
        calls.append(name)
        await asyncio.sleep(0.01)
        running.discard(name)
        return Result()

    manager = ControllerManager(store, reconcile, workers=8)
    await manager.start()
    try:
        obj = await store.create(make_task_action())
        for i in range(20):  # a burst of changes to one object while it is being reconciled
            obj.status.attempts = i + 1
            await store.update_status(obj)
            await asyncio.sleep(0.001)
        await eventually(lambda: len(manager.queue) == 0 and not running)
        assert overlaps == []
        assert 2 <= len(calls) < 21  # changes coalesce while a reconcile is in flight
    finally:
        await manager.stop()
        await store.close()


async def test_a_raising_reconcile_is_retried_with_backoff(tmp_path):
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.start()
    attempts = []

    async def reconcile(name: str) -> Result:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("transient")
        return Result()

    manager = ControllerManager(store, reconcile, workers=2)
    await manager.start()
    try:
        await store.create(make_task_action())
        await eventually(lambda: len(attempts) >= 3, timeout=5)
        assert manager.errors == 2
    finally:
        await manager.stop()
        await store.close()


async def test_engine_restart_resumes_unfinished_actions(tmp_path):
    config = EngineConfig(data_dir=tmp_path, serve=False)
    engine = Engine(config)
    await engine.start()
    run = await engine.runs.create_run(sleep_spec(), sleep_inputs(0.5))
    await eventually(lambda: engine.store.peek(f"{run.run_name}-a0").status.plugin_phase == "PhaseRunning")
    await engine.stop()  # stops mid-sleep

    engine = Engine(config)
    await engine.start()
    try:
        result = await engine.runs.wait_for_run(run.run_name, timeout=10)
        assert result.phase == ActionPhase.SUCCEEDED
        events = await engine.runs.list_events(result.run.key)
        assert [ActionPhase(e.phase).name for e in events] == ["RUNNING", "SUCCEEDED"]
    finally:
        await engine.stop()


def test_sigterm_stops_the_headless_engine_cleanly_with_no_lost_writes(tmp_path):
    """Runs are submitted while the engine works; SIGTERM mid-stream; every acknowledged run is in the DB."""
    root = Path(__file__).parent.parent
    server = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(tmp_path), "--headless"],
                              cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while not (tmp_path / "engine.json").exists():
            assert time.time() < deadline and server.poll() is None
            time.sleep(0.05)
        import base64
        import json
        import urllib.request

        url = json.loads((tmp_path / "engine.json").read_text())["url"] + "/taskdeck/v1/runs"
        body = json.dumps({"taskSpec": base64.b64encode(sleep_spec().SerializeToString()).decode(),
                           "inputs": base64.b64encode(sleep_inputs(0.05).SerializeToString()).decode()}).encode()
        acknowledged = []
        headers = {"authorization": f"Bearer {(tmp_path / 'token').read_text().strip()}",
                   "content-type": "application/json"}
        for _ in range(30):
            request = urllib.request.Request(url, data=body, method="POST", headers=headers)
            with urllib.request.urlopen(request, timeout=10) as response:
                acknowledged.append(json.loads(response.read())["run"])
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, output
    assert "engine stopped" in output and "Traceback" not in output

    async def check():
        engine = Engine(EngineConfig(data_dir=tmp_path, serve=False))
        await engine.start()  # the lock was released: a new engine may start
        try:
            runs = {r.run_name for r in await engine.runs.list_runs(limit=100)}
            assert set(acknowledged) <= runs
            results = [await engine.runs.wait_for_run(name, timeout=20) for name in acknowledged]
            assert all(r.phase == ActionPhase.SUCCEEDED for r in results)
        finally:
            await engine.stop()

    asyncio.run(check())
    assert not os.path.exists(tmp_path / "engine.json")
