"""The engine's policy for Python's cyclic collector (engine/pygc.py): applied while engines run, then undone."""

from __future__ import annotations

import gc
import weakref

from engine import pygc
from engine.engine import Engine, EngineConfig


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


async def test_engines_tune_the_collector_while_running_and_restore_it_after_the_last_stops(tmp_path):
    before = gc.get_threshold()
    first = Engine(EngineConfig(data_dir=tmp_path / "a", serve=False))
    second = Engine(EngineConfig(data_dir=tmp_path / "b", serve=False))
    await first.start()
    try:
        assert gc.get_threshold()[0] == pygc.YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0  # the start-up heap is out of collections
        await second.start()
        await first.stop()
        assert gc.get_threshold()[0] == pygc.YOUNG_THRESHOLD  # still one engine running

        cycle = Node()
        alive = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert alive() is None  # cycles made while the engine runs are still collected
    finally:
        await first.stop()
        await second.stop()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_an_engine_told_not_to_tune_leaves_the_collector_alone(tmp_path):
    before = gc.get_threshold()
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, tune_python_gc=False))
    await engine.start()
    try:
        assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    finally:
        await engine.stop()
