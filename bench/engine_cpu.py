"""Where the engine's CPU per child goes in bench/fanout.py's fan-out, by stage.

Each stage is the engine's thread CPU spent inside one coroutine or function (a coroutine's time is summed
over the steps it runs, so waiting costs nothing); nested stages are part of their enclosing one
(``launch`` is inside ``reconcile``, ``enqueue`` and ``watch`` inside ``connect requests``, ``SQLite`` inside
``commits``; ``database reads`` are inside whichever stage made them). ``other`` is what no stage covers:
the event loop, HTTP parsing, pipe reads. Each stage also prints its calls per child. The wrappers add a
little CPU of their own, so the total here is a bit above bench/fanout.py's figure. ``--max-processes``
above the fan-out's size lets every child start at once (none waits for a process slot).

    python bench/engine_cpu.py [--paths fork reusable] [--size 100] [--rounds 3] [--max-processes N]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import TaskDeck  # noqa: E402

from engine import connect, http_gate, reconciler  # noqa: E402
from engine.plugins import container, reusable, zygotes  # noqa: E402
from engine.store import sqlite  # noqa: E402

spent: collections.Counter[str] = collections.Counter()
calls: collections.Counter[str] = collections.Counter()


class _Timed:
    """Awaits a coroutine, adding the thread CPU of each of its steps to ``spent[label]``."""

    def __init__(self, coro, label: str):
        self.coro, self.label = coro, label

    def __await__(self):
        value, error = None, None
        while True:
            started = time.thread_time()
            try:
                step = self.coro.throw(error) if error is not None else self.coro.send(value)
            except StopIteration as stop:
                return stop.value
            finally:
                spent[self.label] += time.thread_time() - started
            error = None
            try:
                value = yield step
            except BaseException as exc:  # noqa: BLE001 - handed to the coroutine, as await does
                error = exc


def _time_coroutine(cls, name: str, label: str) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    async def timed(*args, **kwargs):
        calls[label] += 1
        return await _Timed(original(*args, **kwargs), label)

    setattr(cls, name, timed)


def _time_function(cls, name: str, label: str) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        calls[label] += 1
        started = time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] += time.thread_time() - started

    setattr(cls, name, timed)


def _time_generator(cls, name: str, label: str) -> None:
    original = getattr(cls, name)

    @functools.wraps(original)
    async def timed(*args, **kwargs):
        calls[label] += 1
        stream = original(*args, **kwargs)
        try:
            while True:
                try:
                    item = await _Timed(stream.__anext__(), label)
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await stream.aclose()

    setattr(cls, name, timed)


STAGES = {  # label: how it is timed, and where
    "connect requests": (_time_coroutine, http_gate.Gate, "__call__"),
    "  enqueue": (_time_coroutine, connect.ControllerServices, "enqueue"),
    "  watch": (_time_generator, connect.ControllerServices, "watch"),
    "reconciles": (_time_coroutine, reconciler.TaskActionReconciler, "reconcile"),
    "  launch (fork/exec)": (_time_coroutine, container.LocalContainerPlugin, "_launch"),
    "  launch (reusable)": (_time_coroutine, reusable.ReusableTaskPlugin, "_launch"),
    "  outcome (fork/exec)": (_time_function, container.LocalContainerPlugin, "_observe"),
    "  outcome (reusable)": (_time_function, reusable.ReusableTaskPlugin, "_observe"),
    "  status writes": (_time_coroutine, reconciler.TaskActionReconciler, "update_task_action_status"),
    "commits": (_time_coroutine, sqlite.SqliteStore, "_commit"),
    "  SQLite": (_time_function, sqlite.SqliteStore, "_write_batch"),
    "fork server replies": (_time_coroutine, zygotes.Zygote, "_read"),
    "  database reads (in any stage)": (_time_coroutine, sqlite.SqliteStore, "_fetchall"),
}
TOP_LEVEL = [label for label in STAGES if not label.startswith(" ")]


async def measure(path: str, size: int, rounds: int, max_processes: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        deck = TaskDeck(Path(tmp) / "data", path, max_processes)
        await deck.start()
        per_round: list[dict[str, float]] = []
        try:
            await deck.fan_out(size)  # warms the fork server / the workers
            for _ in range(rounds):
                spent.clear()
                calls.clear()
                started = time.thread_time()
                await deck.fan_out(size)
                total = time.thread_time() - started
                figures = {label: spent[label] for label in STAGES}
                figures["other"] = total - sum(spent[label] for label in TOP_LEVEL)
                figures["total"] = total
                figures.update({f"{label} calls": calls[label] for label in STAGES})
                per_round.append(figures)
        finally:
            await deck.engine.stop()
    for label in [*STAGES, "other", "total"]:
        ms = statistics.median(r[label] for r in per_round) / size * 1000
        if ms >= 0.005 or not label.startswith(" "):
            key = label.strip().split(" (in")[0].replace(" ", "_")
            count = statistics.median(r[f"{label} calls"] for r in per_round) / size if label in STAGES else None
            print(f"engine_cpu_{path}_{key}_ms_per_child: {ms:.2f}"
                  + (f" ({count:.2f} calls)" if count else ""))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--paths", nargs="+", default=["fork", "reusable"], choices=["fork", "exec", "reusable"])
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-processes", type=int, default=None, help="default: the engine's default")
    args = parser.parse_args()
    for label, (wrap, cls, name) in STAGES.items():
        wrap(cls, name, label)
    for path in args.paths:
        asyncio.run(measure(path, args.size, args.rounds, args.max_processes))


if __name__ == "__main__":
    main()
