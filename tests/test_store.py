"""The SQLite store: Kubernetes resource semantics and the runs data model."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from engine.model import FINALIZER
from engine.phases import ActionPhase
from engine.store.base import (
    ActionRecord,
    ActionsChanged,
    ActionStatusUpdate,
    AlreadyExistsError,
    ConflictError,
    EventRecord,
    EventsRecorded,
    GoneError,
    NotFoundError,
    OwnerGoneError,
)
from engine.store.sqlite import SqliteStore
from helpers import make_task_action


@pytest.fixture
async def store(tmp_path):
    s = SqliteStore(tmp_path / "db.sqlite")
    await s.start()
    yield s
    await s.close()


@pytest.fixture(params=["sqlite", "kubernetes"])
async def any_store(tmp_path, request):
    """The resource half of the store interface on each backend: SQLite, and TaskActions on the API server
    emulator (engine/store/kubernetes.py)."""
    if request.param == "sqlite":
        s = SqliteStore(tmp_path / "db.sqlite")
        await s.start()
        yield s
        await s.close()
        return
    from kubernetes import client

    from engine.store.kubernetes import KubernetesResourceStore
    from kube_apiserver import ApiServer, EmulatorThread

    with EmulatorThread(ApiServer()) as emulator:
        api_client = client.ApiClient(client.Configuration(host=emulator.url))
        s = KubernetesResourceStore(api_client, "flyte", watch_seconds=1)
        await s.start()
        yield s
        await s.close()
        api_client.close()


async def caught_up(store) -> None:
    """Until the store has seen its own writes come back (the Kubernetes store's informer; SQLite at once)."""
    deadline = time.monotonic() + 5
    while getattr(store, "_overlay", None):
        assert time.monotonic() < deadline, "the informer did not catch up"
        await asyncio.sleep(0.01)


async def test_create_assigns_identity_and_rejects_duplicates(store):
    created = await store.create(make_task_action())
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    assert created.resource_version == "1"
    with pytest.raises(AlreadyExistsError):
        await store.create(make_task_action())


async def test_stale_write_is_refused_with_conflict(any_store):
    store = any_store
    obj = await store.create(make_task_action())
    first, second = await store.get(obj.name), await store.get(obj.name)
    first.status.attempts = 2
    await store.update_status(first)
    second.status.attempts = 5
    with pytest.raises(ConflictError):
        await store.update_status(second)
    with pytest.raises(ConflictError):
        await store.update(second)
    assert (await store.get(obj.name)).status.attempts == 2


async def test_conflicting_writes_in_one_batch_refuse_only_the_stale_one(store):
    obj = await store.create(make_task_action())
    a, b = await store.get(obj.name), await store.get(obj.name)
    a.status.attempts, b.status.attempts = 3, 4
    results = await asyncio.gather(store.update_status(a), store.update_status(b), return_exceptions=True)
    assert sum(isinstance(r, ConflictError) for r in results) == 1
    assert (await store.get(obj.name)).status.attempts in (3, 4)


async def test_update_does_not_touch_status_and_update_status_does_not_touch_spec(any_store):
    store = any_store
    obj = await store.create(make_task_action())
    obj.status.attempts = 9
    obj.metadata.labels["x"] = "y"
    updated = await store.update(obj)
    assert updated.status.attempts == 0 and updated.metadata.labels["x"] == "y"
    updated.spec.short_name = "changed"
    updated.status.attempts = 2
    await store.update_status(updated)
    saved = await store.get(obj.name)
    assert saved.spec.short_name == "" and saved.status.attempts == 2


async def test_writes_refresh_the_callers_object_and_keep_their_own_copy(store):
    obj = make_task_action()
    await store.create(obj)
    assert obj.metadata.uid and obj.resource_version == "1"  # server-set fields written back
    obj.status.attempts = 4
    await store.update_status(obj)
    assert obj.resource_version == "2"
    obj.status.attempts = 99  # the store kept its own copy
    assert (await store.get(obj.name)).status.attempts == 4


async def test_objects_survive_a_restart(tmp_path):
    s = SqliteStore(tmp_path / "db.sqlite")
    await s.start()
    obj = await s.create(make_task_action())
    obj.status.attempts = 3
    await s.update_status(obj)
    rv = s.resource_version
    await s.close()
    s2 = SqliteStore(tmp_path / "db.sqlite")
    await s2.start()
    try:
        again = await s2.get(obj.name)
        assert again.status.attempts == 3 and again.metadata.uid == obj.metadata.uid
        assert s2.resource_version == rv
        fresh = await s2.create(make_task_action(action="a1"))
        assert int(fresh.resource_version) == int(rv) + 1  # versions never go back after a restart
    finally:
        await s2.close()


async def test_list_by_label_selector(any_store):
    store = any_store
    root = await store.create(make_task_action(run="r1", action="a0"))
    await store.create(make_task_action(run="r1", action="b1", parent=root))
    await store.create(make_task_action(run="r2", action="a0"))
    names = {o.name for o in await store.list({"flyte.org/run": "r1"})}
    assert names == {"r1-a0", "r1-b1"}
    assert {o.name for o in await store.list({"flyte.org/is-root": "true"})} == {"r1-a0", "r2-a0"}
    await store.patch_labels("r2-a0", {"flyte.org/termination-status": "terminated"})
    assert [o.name for o in await store.list({"flyte.org/termination-status": None})] == ["r2-a0"]


async def test_watch_delivers_changes_in_order_and_resumes_from_a_version(store):
    watch = store.watch(store.resource_version)
    obj = await store.create(make_task_action())
    obj.status.attempts = 2
    await store.update_status(obj)
    seen = [await asyncio.wait_for(watch.__anext__(), 1) for _ in range(2)]
    assert [e.type for e in seen] == ["ADDED", "MODIFIED"]
    assert seen[0].resource_version != seen[1].resource_version  # opaque: only equality has a meaning
    await watch.aclose()

    resumed = store.watch(seen[0].resource_version)  # everything after the first event
    event = await asyncio.wait_for(resumed.__anext__(), 1)
    assert event.type == "MODIFIED" and event.object.status.attempts == 2
    await resumed.aclose()


async def test_watch_resume_replays_every_version_even_within_one_batch(store):
    obj = await store.create(make_task_action())
    since = store.resource_version
    # Submitted together, both patches commit in one batch: the first version is never the row's body.
    await asyncio.gather(store.patch_labels(obj.name, {"x": "1"}), store.patch_labels(obj.name, {"y": "2"}))
    await store.delete(obj.name)

    resumed = store.watch(since)
    replayed = [await asyncio.wait_for(resumed.__anext__(), 1) for _ in range(3)]
    assert [e.type for e in replayed] == ["MODIFIED", "MODIFIED", "DELETED"]
    assert [e.resource_version for e in replayed] == [str(int(since) + k) for k in (1, 2, 3)]
    first, second, deleted = (e.object.metadata.labels for e in replayed)
    assert first.get("x") == "1" and "y" not in first
    assert second.get("x") == "1" and second.get("y") == "2"
    assert deleted == second and replayed[2].object.metadata.uid == obj.metadata.uid
    await resumed.aclose()


async def test_watch_from_a_version_older_than_history_is_gone(tmp_path):
    s = SqliteStore(tmp_path / "db.sqlite", history_size=3)
    await s.start()
    try:
        for i in range(6):
            await s.create(make_task_action(action=f"a{i}"))
        with pytest.raises(GoneError):
            s.watch("1")
        with pytest.raises(GoneError):  # opaque, but a store knows its own: another's is refused, not misread
            s.watch("not-a-version")
        s.watch(str(int(s.resource_version) - 3))  # still retained
    finally:
        await s.close()


async def test_delete_without_finalizer_removes_at_once(any_store):
    store = any_store
    obj = await store.create(make_task_action())
    await caught_up(store)
    watch = store.watch(store.resource_version)
    await store.delete(obj.name)
    with pytest.raises(NotFoundError):
        await store.get(obj.name)
    assert (await asyncio.wait_for(watch.__anext__(), 5)).type == "DELETED"


async def test_finalizer_holds_deletion_until_removed(any_store):
    store = any_store
    obj = await store.create(make_task_action(finalizers=[FINALIZER]))
    await store.delete(obj.name)
    held = await store.get(obj.name)
    assert held.metadata.deletion_timestamp is not None
    await store.delete(obj.name)  # deleting again is harmless
    held = await store.get(obj.name)
    held.metadata.finalizers = []
    await store.update(held)
    with pytest.raises(NotFoundError):
        await store.get(obj.name)


async def test_cascade_delete_through_owner_references(any_store):
    store = any_store
    root = await store.create(make_task_action(finalizers=[FINALIZER]))
    child = await store.create(make_task_action(action="c1", parent=root, finalizers=[FINALIZER]))
    grandchild = await store.create(make_task_action(action="g1", parent=child))
    other = await store.create(make_task_action(run="other"))
    await caught_up(store)  # a remote store knows dependents from what its informer has seen
    await store.delete(root.name)
    assert (await store.get(root.name)).metadata.deletion_timestamp is not None
    assert (await store.get(child.name)).metadata.deletion_timestamp is not None
    with pytest.raises(NotFoundError):  # no finalizer: gone at once
        await store.get(grandchild.name)
    assert (await store.get(other.name)).metadata.deletion_timestamp is None


async def test_child_of_a_deleting_owner_is_refused(any_store):
    store = any_store
    root = await store.create(make_task_action(finalizers=[FINALIZER]))
    await store.delete(root.name)
    with pytest.raises(OwnerGoneError):
        await store.create(make_task_action(action="late", parent=root))


def _record(name="a0", parent=None, phase=ActionPhase.QUEUED):
    now = time.time()
    return ActionRecord(project="p", domain="d", run_name="r1", name=name, parent_action_name=parent,
                        phase=int(phase), created_at=now, updated_at=now, attempts=1)


async def test_run_action_row_and_resource_are_created_together(store):
    obj = make_task_action(run="r1")
    await store.create_run_action(_record(), obj, ("digest", b"spec"))
    assert (await store.get_action(("p", "d", "r1", "a0"))).phase == ActionPhase.QUEUED
    assert await store.get_task_spec("digest") == b"spec"
    assert (await store.get(obj.name)).spec.run_name == "r1"
    with pytest.raises(AlreadyExistsError):
        await store.create_run_action(_record(), None, None)


async def test_actions_phase_only_moves_forward(store):
    await store.create_run_action(_record(), None, None)
    key = ("p", "d", "r1", "a0")

    async def move(phase):
        await store.update_action_status(ActionStatusUpdate(key, int(phase), 1))
        return ActionPhase((await store.get_action(key)).phase)

    assert await move(ActionPhase.RUNNING) == ActionPhase.RUNNING
    assert await move(ActionPhase.QUEUED) == ActionPhase.RUNNING  # in-place restart does not go back
    assert await move(ActionPhase.FAILED) == ActionPhase.FAILED
    assert await move(ActionPhase.RUNNING) == ActionPhase.RUNNING  # FAILED may be left (retries)
    assert await move(ActionPhase.ABORTED) == ActionPhase.ABORTED
    assert await move(ActionPhase.SUCCEEDED) == ActionPhase.ABORTED  # ABORTED blocks later phases
    row = await store.get_action(key)
    assert row.ended_at is not None and row.duration_ms is not None


async def test_paused_settles_into_a_terminal_phase_only(store):
    await store.create_run_action(_record(), None, None)
    key = ("p", "d", "r1", "a0")
    await store.update_action_status(ActionStatusUpdate(key, int(ActionPhase.PAUSED), 1))
    await store.update_action_status(ActionStatusUpdate(key, int(ActionPhase.RUNNING), 1))
    assert (await store.get_action(key)).phase == ActionPhase.PAUSED
    await store.update_action_status(ActionStatusUpdate(key, int(ActionPhase.SUCCEEDED), 1))
    assert (await store.get_action(key)).phase == ActionPhase.SUCCEEDED


async def test_events_are_unique_on_action_attempt_phase_version(store):
    changes = []
    store.subscribe(changes.append)

    def event(attempt, phase, version, info=b"x"):
        return EventRecord("p", "d", "r1", "a0", attempt, int(phase), version, info, "", time.time(), time.time())

    await store.record_events([event(1, ActionPhase.RUNNING, 0), event(1, ActionPhase.RUNNING, 0, b"dup")])
    await store.record_events([event(1, ActionPhase.RUNNING, 1), event(2, ActionPhase.RUNNING, 0)])
    rows = await store.list_events(("p", "d", "r1", "a0"))
    assert [(r.attempt, r.phase, r.version) for r in rows] == [(1, 4, 0), (1, 4, 1), (2, 4, 0)]
    assert rows[0].info == b"x"  # the duplicate was ignored, not overwritten
    assert any(isinstance(c, EventsRecorded) for c in changes)


async def test_many_concurrent_writes_share_few_transactions(store):
    objs = [make_task_action(action=f"a{i}") for i in range(500)]
    await asyncio.gather(*(store.create(o) for o in objs))
    assert len(await store.list()) == 500
    assert store.batches_committed < 100  # group commit: far fewer transactions than writes


async def test_failed_commit_applies_nothing_and_the_store_recovers(store):
    obj = await store.create(make_task_action())
    real_db = store._write_db

    class Broken:
        def __getattr__(self, name):
            return getattr(real_db, name)

        def executemany(self, *args):
            raise sqlite3.OperationalError("disk I/O error")

    store._write_db = Broken()
    obj.status.attempts = 7
    with pytest.raises(Exception, match="disk I/O error"):
        await store.update_status(obj)
    assert (await store.get(obj.name)).status.attempts == 0  # nothing half-applied in memory
    assert "disk I/O error" in store.storage_error
    store._write_db = real_db
    saved = await store.update_status(obj)
    assert saved.status.attempts == 7
    assert isinstance(store.storage_error, type(None))


async def test_subscribers_hear_about_action_changes(store):
    seen = []
    store.subscribe(seen.append)
    await store.create_run_action(_record(), None, None)
    assert any(isinstance(c, ActionsChanged) and ("p", "d", "r1", "a0") in c.keys for c in seen)


async def test_first_child_promotes_a_queued_parent_to_running(store):
    parent = make_task_action(run="r1")
    await store.create_run_action(_record(), parent, None)
    child = make_task_action(run="r1", action="c1", parent=parent)
    await store.create_run_action(_record("c1", parent="a0"), child, None)
    assert (await store.get_action(("p", "d", "r1", "a0"))).phase == ActionPhase.RUNNING
    assert (await store.get_action(("p", "d", "r1", "c1"))).phase == ActionPhase.QUEUED


async def test_actions_table_follows_conditions_in_the_same_commit_and_deletion_aborts(store):
    obj = make_task_action(run="r1")
    await store.create_run_action(_record(), obj, None)
    obj.status.set_condition("Progressing", True, "Executing", "", obj.metadata.creation_timestamp)
    await store.update_status(obj)
    assert (await store.get_action(("p", "d", "r1", "a0"))).phase == ActionPhase.RUNNING
    await store.delete(obj.name)
    row = await store.get_action(("p", "d", "r1", "a0"))
    assert row.phase == ActionPhase.ABORTED and row.ended_at is not None


async def test_reads_see_every_committed_write_while_other_reads_are_in_flight(store):
    """Concurrent readers share one connection: a read must never see the snapshot of another read that
    started before the write (waiters and watches would miss the change and hang)."""
    for i in range(30):
        await store.create_run_action(_record(name=f"a{i}"), None, None)
    key = ("p", "d", "r1", "a0")
    stop = asyncio.Event()

    async def busy_reader():
        while not stop.is_set():
            await store.list_actions("p", "d", "r1")

    readers = [asyncio.ensure_future(busy_reader()) for _ in range(4)]
    try:
        stale = 0
        for attempt in range(2, 80):
            await store.update_action_status(ActionStatusUpdate(key, int(ActionPhase.RUNNING), attempt))
            stale += (await store.get_action(key)).attempts != attempt
        assert stale == 0
    finally:
        stop.set()
        await asyncio.gather(*readers)


async def test_terminated_objects_rest_out_of_memory_and_read_back_whole(store):
    from engine.model import LABEL_TERMINATION_STATUS

    parent = await store.create(make_task_action(run="r9"))
    child = await store.create(make_task_action(run="r9", action="c1", parent=parent))
    assert store.live_objects == 2 and store.resting_objects == 0
    await store.patch_labels(child.name, {LABEL_TERMINATION_STATUS: "terminated"})
    assert store.live_objects == 1 and store.resting_objects == 1
    store._resting._cache.clear()  # force a read from the database
    back = store.peek(child.name)
    assert back.metadata.labels[LABEL_TERMINATION_STATUS] == "terminated"
    assert back.spec.parent_action_name == "a0"
    assert back.resource_version == (await store.get(child.name)).resource_version
    assert [o.name for o in await store.list({LABEL_TERMINATION_STATUS: "terminated"})] == [child.name]
    await store.delete(parent.name)  # the cascade still finds the resting child
    assert store.peek(child.name) is None and store.peek(parent.name) is None


async def test_watch_history_is_bounded_by_bytes(tmp_path):
    store = SqliteStore(tmp_path / "hist.db", history_bytes=20_000)
    await store.start()
    try:
        for i in range(40):
            await store.create(make_task_action(run=f"h{i}"))
        assert sum(len(body) for _, _, body in store._history) <= 20_000
        assert store._history_floor > 0
        with pytest.raises(GoneError):
            store.watch(1)
    finally:
        await store.close()
