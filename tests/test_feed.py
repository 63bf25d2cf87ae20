"""The change feed: resumable from a cursor without missing or repeating an item; a snapshot otherwise."""

from __future__ import annotations

import asyncio

import pytest

from engine.engine import Engine, EngineConfig
from engine.feed import ChangeFeed
from engine.store.base import ActionsChanged, StorageChanged
from helpers import ScriptedPlugin, task_spec


class _Store:
    """Just the subscribe() a feed needs, to publish changes by hand."""

    def __init__(self):
        self.callbacks = []

    def subscribe(self, callback):
        self.callbacks.append(callback)
        return lambda: None

    def publish(self, change) -> None:
        for callback in self.callbacks:
            callback(change)


class _Health(_Store):
    pass


def _changed(*pairs) -> ActionsChanged:
    return ActionsChanged(tuple(("p", "d", run, action) for run, action in pairs))


async def _take(iterator, n: int, timeout: float = 5.0) -> list:
    items = []
    async with asyncio.timeout(timeout):
        async for item in iterator:
            items.append(item)
            if len(items) == n:
                return items
    return items


async def test_a_reader_resumes_from_its_cursor_with_nothing_missed_or_repeated():
    store, health = _Store(), _Health()
    feed = ChangeFeed(store, health)
    first = feed.follow()
    assert (await _take(first, 1))[0].kind == "snapshot"
    for i in range(10):
        store.publish(_changed(("r1", f"c{i}")))
    got = await _take(first, 4)
    assert [c.actions for c in got] == [(("r1", f"c{i}"),) for i in range(4)]
    await first.aclose()  # the connection drops mid-burst
    for i in range(10, 15):
        store.publish(_changed(("r1", f"c{i}")))
    resumed = feed.follow(got[-1].cursor)
    rest = await _take(resumed, 11)
    assert [c.actions[0][1] for c in rest] == [f"c{i}" for i in range(4, 15)]  # from c4 on, once each
    assert len({c.cursor for c in got + rest}) == 15


async def test_a_cursor_the_feed_no_longer_holds_is_answered_with_a_snapshot():
    store, health = _Store(), _Health()
    feed = ChangeFeed(store, health, history=5)
    old = (await _take(feed.follow(), 1))[0].cursor
    for i in range(20):
        store.publish(_changed(("r1", f"c{i}")))
    too_old = await _take(feed.follow(old), 1)
    assert too_old[0].kind == "snapshot" and too_old[0].cursor == feed.cursor
    other_engine = await _take(feed.follow("deadbeef.3"), 1)
    assert other_engine[0].kind == "snapshot"
    garbage = await _take(feed.follow("not a cursor"), 1)
    assert garbage[0].kind == "snapshot"
    live = feed.follow(feed.cursor)  # the newest cursor: nothing old, then what comes
    store.publish(_changed(("r1", "new")))
    assert (await _take(live, 1))[0].actions == (("r1", "new"),)


async def test_a_run_filter_storage_items_and_heartbeats():
    store, health = _Store(), _Health()
    feed = ChangeFeed(store, health)
    followed = feed.follow(feed.cursor, run="r2", heartbeat=0.2)
    store.publish(_changed(("r1", "a0"), ("r2", "a0")))
    store.publish(_changed(("r1", "x")))  # not r2's: skipped
    health.publish(StorageChanged("disk full"))
    items = await _take(followed, 3)
    assert items[0].actions == (("r2", "a0"),)
    assert items[1].kind == "storage" and items[1].storage_error == "disk full"
    assert items[2].kind == "heartbeat" and items[2].cursor == feed.cursor  # the skipped item is behind it
    assert feed.followers == 1
    await followed.aclose()
    assert feed.followers == 0


@pytest.fixture
async def engine(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=0.2))
    engine.registry.register(ScriptedPlugin())
    await engine.start()
    yield engine
    await engine.stop()


async def test_an_engines_feed_names_every_action_its_commits_changed(engine):
    feed = engine.services.feed.follow()
    assert (await _take(feed, 1))[0].kind == "snapshot"
    run = await engine.runs.create_run(task_spec("scripted"), name="rfeed")
    await engine.runs.wait_for_run(run.run_name, timeout=10)
    seen = set()
    async with asyncio.timeout(5):
        async for change in feed:
            seen.update(change.actions)
            if ("rfeed", "a0") in seen and change.kind == "changes":
                break
    assert ("rfeed", "a0") in seen
