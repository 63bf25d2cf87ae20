"""The process limit is a real bound, counted from the operating system's side, and trees of any depth finish
under it; a real child costs no more reconciles than its phase changes need."""

from __future__ import annotations

import collections
import os
import textwrap
import threading
from pathlib import Path

import pytest

from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from helpers import run_sdk_task

pytestmark = pytest.mark.sdk

TREE = textwrap.dedent('''
    import asyncio
    import flyte

    env = flyte.TaskEnvironment(name="tree")

    @env.task
    def leaf(x: int) -> int:
        return x

    @env.task
    async def mid(x: int) -> int:
        return sum(await asyncio.gather(*[leaf.aio(x * 10 + j) for j in range(2)]))

    @env.task
    async def top(n: int) -> int:
        return sum(await asyncio.gather(*[mid.aio(i) for i in range(n)]))

    @env.task
    async def flat(n: int) -> int:
        return sum(await asyncio.gather(*[leaf.aio(i) for i in range(n)]))

    @env.task
    def slow_leaf(x: int) -> int:
        import time
        time.sleep(1.0)
        return x

    @env.task
    async def slow_flat(n: int) -> int:
        return sum(await asyncio.gather(*[slow_leaf.aio(i) for i in range(n)]))
''')


class TaskProcessCounter:
    """Samples, at 20 Hz, how many task processes live: sessions led by descendants of this process
    (each task process leads its own), the fork servers' excepted."""

    def __init__(self, exclude_sessions):
        self.exclude_sessions = exclude_sessions
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self.count())

    def count(self) -> int:
        parent_of, session_of = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "Z":
                continue
            parent_of[int(entry)], session_of[int(entry)] = int(fields[1]), int(fields[3])
        ours, frontier = set(), [os.getpid()]
        while frontier:
            pid = frontier.pop()
            children = [p for p, parent in parent_of.items() if parent == pid]
            ours.update(children)
            frontier.extend(children)
        excluded = set(self.exclude_sessions()) | {os.getsid(0)}
        return len({session_of[p] for p in ours if p in session_of} - excluded)


@pytest.fixture(scope="module")
def tree_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("code") / "tree.py"
    path.write_text(TREE)
    return path


async def _engine(tmp_path, limit: int, **config) -> Engine:
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", max_processes=limit, **config))
    await engine.start()
    return engine


def _zygote_sessions(engine):
    return lambda: [z["pid"] for z in engine.container_plugin.zygotes.snapshot() if z["pid"]]


async def test_live_task_processes_never_exceed_the_limit(tmp_path, tree_file):
    engine = await _engine(tmp_path, limit=2)
    try:
        with TaskProcessCounter(_zygote_sessions(engine)) as counter:
            result = await run_sdk_task(engine, tree_file, "flat", n=8)
        assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": sum(range(8))}
        # Two computing at most, plus the parent that is only awaiting them (it lends its slot).
        assert max(counter.samples) <= 3, collections.Counter(counter.samples)
        assert max(counter.samples) >= 2  # the sampler saw them: it counts for real
        assert engine.container_plugin.slots.peak <= 2
    finally:
        await engine.stop()


async def test_a_three_level_fan_out_completes_with_the_limit_at_two(tmp_path, tree_file):
    engine = await _engine(tmp_path, limit=2)
    try:
        with TaskProcessCounter(_zygote_sessions(engine)) as counter:
            result = await run_sdk_task(engine, tree_file, "top", n=2)
        assert result.phase == ActionPhase.SUCCEEDED
        assert result.outputs == {"o0": sum(i * 10 + j for i in range(2) for j in range(2))}
        assert max(counter.samples) <= 2 + 3  # two computing, plus the three parents awaiting children
        assert engine.container_plugin.slots.peak <= 2
    finally:
        await engine.stop()


def _count_reconciles(engine) -> collections.Counter[str]:
    reconciles: collections.Counter[str] = collections.Counter()
    reconcile = engine.manager.reconcile

    async def counted(name):
        reconciles[name] += 1
        return await reconcile(name)

    engine.manager.reconcile = counted
    return reconciles


async def test_a_real_child_costs_at_most_four_reconciles(tmp_path, tree_file):
    engine = await _engine(tmp_path, limit=4)
    reconciles = _count_reconciles(engine)
    try:
        result = await run_sdk_task(engine, tree_file, "flat", n=12)
        assert result.phase == ActionPhase.SUCCEEDED
        children = {name: n for name, n in reconciles.items() if not name.endswith("-a0")}
        assert len(children) == 12
        assert max(children.values()) <= 4, children
    finally:
        await engine.stop()


async def test_a_child_waiting_for_a_slot_is_woken_not_polled(tmp_path, tree_file):
    """Children queued for a slot are reconciled when one is handed to them, not every requeue period
    (here 0.2 s, while the last child waits ~3 s): the period only rechecks them now and then."""
    engine = await _engine(tmp_path, limit=1, requeue_after=0.2)
    reconciles = _count_reconciles(engine)
    try:
        result = await run_sdk_task(engine, tree_file, "slow_flat", n=4)
        assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": sum(range(4))}
        children = {name: n for name, n in reconciles.items() if not name.endswith("-a0")}
        assert len(children) == 4
        # a running child is still rechecked every period (~5 in its 1 s); a waiting one is not
        assert max(children.values()) <= 4 + 8, children
        assert sum(children.values()) <= 4 * (4 + 8), children
    finally:
        await engine.stop()
