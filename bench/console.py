"""The console with a 10,000-action run changing live: refresh cost and keypress-to-repaint latency.

A run of N actions (a root and N-1 children) is written to a fresh store; while the console shows the run
screen, a writer moves ~2,000 actions per second through their phases. Prints the median and p95 of one
refresh of the run screen (read the changed actions, patch the tree) and of a keypress: from the key
event entering the app (as a terminal would send it) to the first frame the compositor emits with the
tree's cursor moved. (Pilot's ``press`` waits for the whole process to go idle, which never happens while
the engine churns, so it cannot measure this.)

Twice: with the console's own engine (embedded, one process), and attached to an engine in another
process through its API (``remote``: the change feed, batch reads of the changed actions over HTTP).

    python bench/console.py [--actions 10000] [--presses 50] [--mode both|embedded|remote]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from console.app import TaskDeckApp  # noqa: E402
from console.screens.run import RunScreen  # noqa: E402
from console.widgets.action_tree import ActionTree  # noqa: E402
from engine.engine import Engine, EngineConfig  # noqa: E402
from textual import events  # noqa: E402
from engine.phases import ActionPhase  # noqa: E402
from engine.store.base import ActionRecord, ActionStatusUpdate  # noqa: E402
from helpers import process_cpu_seconds  # noqa: E402

RUN = "rbenchconsole0000001"


async def populate(engine: Engine, n: int) -> None:
    now = time.time()
    records = [ActionRecord(project="bench", domain="dev", run_name=RUN, name="a0", task_name="bench.parent",
                            short_name="parent", phase=int(ActionPhase.RUNNING), created_at=now, updated_at=now,
                            attempts=1)]
    records += [ActionRecord(project="bench", domain="dev", run_name=RUN, name=f"n{i}", parent_action_name="a0",
                             task_name="bench.child", short_name="child", created_at=now + i * 1e-6,
                             updated_at=now, attempts=1) for i in range(1, n)]
    for i in range(0, len(records), 500):
        await asyncio.gather(*(engine.store.create_run_action(r, None, None) for r in records[i:i + 500]))


async def churn(engine: Engine, n: int, stop: asyncio.Event) -> int:
    rng, moved = random.Random(1), 0
    phases = [ActionPhase.INITIALIZING, ActionPhase.RUNNING, ActionPhase.SUCCEEDED]
    while not stop.is_set():
        batch = [ActionStatusUpdate(("bench", "dev", RUN, f"n{rng.randrange(1, n)}"), int(rng.choice(phases)), 1)
                 for _ in range(100)]
        await asyncio.gather(*(engine.store.update_action_status(u) for u in batch))
        moved += len(batch)
        await asyncio.sleep(0.05)  # ~2,000 updates/s
    return moved


async def serve(data_dir: Path, n: int) -> None:
    """The engine side of the remote mode: serve, write the run, churn until told to stop."""
    engine = Engine(EngineConfig(data_dir=data_dir, gc_interval_seconds=0))
    await engine.start()
    await populate(engine, n)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # "churn"
    moved = await churn(engine, n, stop)
    print(json.dumps({"moved": moved}), flush=True)
    await engine.stop()


async def measure(n: int, presses: int, remote: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = server = None
        if remote:
            from engine.client.remote import RemoteClient

            server = subprocess.Popen([sys.executable, __file__, "--serve", tmp, "--actions", str(n)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert server.stdout.readline().strip() == "ready"
            endpoint = json.loads((Path(tmp) / "engine.json").read_text())
            app = TaskDeckApp(client=RemoteClient(endpoint["url"], (Path(tmp) / "token").read_text().strip()))
        else:
            engine = Engine(EngineConfig(data_dir=Path(tmp), serve=False, gc_interval_seconds=0))
            app = TaskDeckApp(engine)
        async with app.run_test(size=(160, 45)) as pilot:
            if engine is not None:
                await populate(engine, n)
            refresh_times: list[float] = []
            screen = RunScreen(RUN)
            original = screen.refresh_view

            async def timed_refresh() -> None:
                started = time.perf_counter()
                await original()
                refresh_times.append(time.perf_counter() - started)

            screen.refresh_view = timed_refresh  # type: ignore[method-assign]
            await app.push_screen(screen)
            while screen.model.action_count < n:
                await pilot.pause(0.1)
            stop = asyncio.Event()
            if server is not None:
                server.stdin.write("churn\n")
                server.stdin.flush()
                writer = None
            else:
                writer = asyncio.create_task(churn(engine, n, stop))
            await pilot.pause(1.0)
            refresh_times.clear()
            tree = screen.query_one(ActionTree)
            frame = asyncio.Event()
            target = {"line": -1}
            display = app._display

            def timed_display(shown_screen, renderable) -> None:
                display(shown_screen, renderable)
                if renderable is not None and tree.cursor_line == target["line"]:
                    frame.set()

            app._display = timed_display  # type: ignore[method-assign]
            latencies = []
            rng = random.Random(2)
            cpu_start = (time.process_time(), process_cpu_seconds(server.pid) if server else 0.0, time.perf_counter())
            for _ in range(presses):
                target["line"] = tree.cursor_line + 1
                frame.clear()
                started = time.perf_counter()
                app._driver.send_message(events.Key("down", None))  # what a terminal's key press becomes
                await asyncio.wait_for(frame.wait(), 10)
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(rng.uniform(0.05, 0.3))  # land at random points of the refresh cycle
            elapsed = time.perf_counter() - cpu_start[2]
            cpu = ((time.process_time() - cpu_start[0]) / elapsed,
                   ((process_cpu_seconds(server.pid) if server else 0.0) - cpu_start[1]) / elapsed)
            stop.set()
            if server is not None:
                server.send_signal(signal.SIGTERM)
                moved = json.loads(server.stdout.readline())["moved"]
                server.wait(timeout=60)
            else:
                moved = await writer
        if engine is not None and engine.started:
            await engine.stop()

    def stats(values: list[float]) -> str:
        values = sorted(values)
        return f"median {statistics.median(values) * 1000:.1f} ms, p95 {values[int(len(values) * 0.95)] * 1000:.1f} ms"

    mode = "remote" if remote else "embedded"
    print(f"[{mode}] actions: {n}, live updates during the measurement: {moved}")
    print(f"[{mode}] cpu: console process {cpu[0]:.0%}" + (f", engine process {cpu[1]:.0%}" if remote else
                                                           " (its engine included)"))
    print(f"[{mode}] refresh_cost: {stats(refresh_times)} ({len(refresh_times)} refreshes)")
    print(f"[{mode}] keypress_to_repaint: {stats(latencies)} ({presses} presses)")
    print(f"[{mode}] keypress_to_repaint_median_ms: {statistics.median(latencies) * 1000:.1f}")
    print(f"[{mode}] slowest keypresses: {', '.join(f'{v * 1000:.0f}' for v in sorted(latencies)[-6:])} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--actions", type=int, default=10_000)
    parser.add_argument("--presses", type=int, default=50)
    parser.add_argument("--mode", choices=["both", "embedded", "remote"], default="both")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(Path(args.serve), args.actions))
        return
    for remote in {"both": (False, True), "embedded": (False,), "remote": (True,)}[args.mode]:
        asyncio.run(measure(args.actions, args.presses, remote))


if __name__ == "__main__":
    main()
