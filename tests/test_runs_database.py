"""The runs database interface (engine/store/base.py RunsDatabase) on both implementations: SQLite, the
single engine's default, and PostgreSQL (engine/store/postgres.py, against a real server the suite
starts), which engines share on the Kubernetes backend. The same tests, the same answers."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from engine.phases import ActionPhase
from engine.store.base import (
    ActionRecord,
    ActionsChanged,
    ActionStatusUpdate,
    AlreadyExistsError,
    CacheEntry,
    EventRecord,
    EventsRecorded,
    NotFoundError,
    ProjectRecord,
    StorageUnavailableError,
    TaskRecord,
)
from engine.store.sqlite import SqliteStore
from helpers import make_task_action

KEY = ("p", "d", "r1", "a0")


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request, tmp_path):
    if request.param == "sqlite":
        store = SqliteStore(tmp_path / "db.sqlite")
    else:
        from engine.store.postgres import PostgresRunsStore

        store = PostgresRunsStore(request.getfixturevalue("postgres_url"))
    await store.start()
    yield store
    await store.close()


def record(name: str = "a0", parent: str | None = None, run: str = "r1", created: float = 100.0, **fields) -> ActionRecord:
    return ActionRecord(project="p", domain="d", run_name=run, name=name, parent_action_name=parent,
                        created_at=created, updated_at=created, action_spec=b"\x01\x02", **fields)


def event(phase: ActionPhase, version: int = 0, attempt: int = 1, at: float = 101.0) -> EventRecord:
    return EventRecord("p", "d", "r1", "a0", attempt, int(phase), version, b"info", "", at, at)


async def test_an_action_row_is_created_once_with_its_task_spec(db):
    await db.outbox_create_run_action(record(), None, ("digest-1", b"spec"))
    with pytest.raises(AlreadyExistsError):
        await db.outbox_create_run_action(record(), None, ("digest-2", b"other"))
    assert await db.get_task_spec("digest-2") is None  # the refused write left nothing behind
    got = await db.get_action(KEY)
    assert got == record()
    assert await db.get_task_spec("digest-1") == b"spec"
    assert (await db.find_run("r1")).name == "a0"
    assert await db.find_run("nope") is None


async def test_the_phase_only_moves_forward_and_terminal_fields_are_set_once(db):
    await db.outbox_create_run_action(record(), None, None)
    update = lambda phase, **kw: db.update_action_status(ActionStatusUpdate(KEY, int(phase), 1, **kw))  # noqa: E731
    await update(ActionPhase.RUNNING, start_time=90.0)
    await update(ActionPhase.QUEUED)  # late: ignored
    row = await db.get_action(KEY)
    assert row.phase == ActionPhase.RUNNING and row.created_at == 90.0 and row.ended_at is None
    await update(ActionPhase.FAILED, end_time=92.5, error_kind="USER", error_code="E", error_message="boom")
    row = await db.get_action(KEY)
    assert (row.phase, row.ended_at, row.duration_ms, row.error_code) == (ActionPhase.FAILED, 92.5, 2500, "E")
    # a failed action may be moved on (a retry's new attempt), keeping when it first ended
    await update(ActionPhase.SUCCEEDED, end_time=99.0)
    row = await db.get_action(KEY)
    assert row.phase == ActionPhase.SUCCEEDED and row.ended_at == 92.5
    await update(ActionPhase.RUNNING)
    assert (await db.get_action(KEY)).phase == ActionPhase.SUCCEEDED


async def test_a_paused_condition_settles_only_into_a_terminal_phase(db):
    await db.outbox_create_run_action(record(action_type=3, short_name="approve"), None, None)
    await db.update_action_status(ActionStatusUpdate(KEY, int(ActionPhase.PAUSED), 0))
    assert await db.paused_conditions() == [("r1", "a0", "approve")]
    assert await db.paused_conditions(["r1", "other"]) == [("r1", "a0", "approve")]
    assert await db.paused_conditions(["other"]) == []
    await db.update_action_status(ActionStatusUpdate(KEY, int(ActionPhase.RUNNING), 0))
    assert (await db.get_action(KEY)).phase == ActionPhase.PAUSED
    await db.update_action_status(ActionStatusUpdate(KEY, int(ActionPhase.SUCCEEDED), 0))
    assert (await db.get_action(KEY)).phase == ActionPhase.SUCCEEDED


async def test_reads_of_runs_and_their_actions(db):
    await db.outbox_create_run_action(record(created=100.0), None, None)
    for i, name in enumerate(["c2", "c1"]):
        await db.outbox_create_run_action(record(name, parent="a0", created=101.0 + i), None, None)
    await db.outbox_create_run_action(record(run="r2", created=200.0), None, None)
    assert [r.run_name for r in await db.list_runs()] == ["r2", "r1"]
    assert [r.run_name for r in await db.list_runs(limit=1)] == ["r2"]
    assert [a.name for a in await db.list_actions("p", "d", "r1")] == ["a0", "c2", "c1"]
    assert sorted(a.name for a in await db.get_actions("p", "d", "r1", ["c1", "c9", "a0"])) == ["a0", "c1"]
    await db.update_action_status(ActionStatusUpdate(("p", "d", "r1", "c1"), int(ActionPhase.SUCCEEDED), 1))
    assert await db.phase_counts() == {int(ActionPhase.QUEUED): 2}
    assert await db.phase_counts(("p", "d", "r1")) == {int(ActionPhase.QUEUED): 2, int(ActionPhase.SUCCEEDED): 1}


async def test_abort_requests_keep_their_first_time(db):
    await db.outbox_create_run_action(record(), None, None)
    await db.mark_abort_requested(KEY, "first", 110.0)
    await db.mark_abort_requested(KEY, "second", 120.0)
    row = await db.get_action(KEY)
    assert (row.abort_requested_at, row.abort_reason) == (110.0, "second")


async def test_events_are_unique_and_only_new_ones_are_announced(db):
    heard = []
    db.subscribe(heard.append)
    await db.outbox_create_run_action(record(), None, None)
    await db.record_events([event(ActionPhase.QUEUED), event(ActionPhase.RUNNING)])
    await db.record_events([event(ActionPhase.RUNNING), event(ActionPhase.RUNNING, version=1)])
    assert [(e.phase, e.version) for e in await db.list_events(KEY)] == [
        (int(ActionPhase.QUEUED), 0), (int(ActionPhase.RUNNING), 0), (int(ActionPhase.RUNNING), 1)]
    announced = [(e.phase, e.version) for change in heard if isinstance(change, EventsRecorded) for e in change.events]
    assert announced.count((int(ActionPhase.RUNNING), 0)) <= 2  # SQLite repeats a duplicate; nothing is lost
    assert (int(ActionPhase.RUNNING), 1) in announced
    assert any(isinstance(c, ActionsChanged) and KEY in c.keys for c in heard)


async def test_the_outbox_keeps_resources_until_done_and_a_restart_resets_the_row(db):
    first = make_task_action("r1")
    await db.outbox_create_run_action(record(), first, None)
    await db.update_action_status(ActionStatusUpdate(KEY, int(ActionPhase.FAILED), 1, end_time=105.0,
                                                     error_code="E"))
    assert [t.name for t in await db.outbox_pending()] == ["r1-a0"]
    await db.outbox_done("r1-a0")
    assert await db.outbox_pending() == []
    await db.outbox_restart_action(KEY, 2, make_task_action("r1"), [event(ActionPhase.QUEUED, attempt=2)])
    row = await db.get_action(KEY)
    assert (row.phase, row.attempts, row.ended_at, row.error_code) == (ActionPhase.QUEUED, 2, None, None)
    assert [e.attempt for e in await db.list_events(KEY)] == [2]
    assert [t.name for t in await db.outbox_pending()] == ["r1-a0"]
    with pytest.raises(NotFoundError):
        await db.outbox_restart_action(("p", "d", "r9", "a0"), 2, make_task_action("r9"), [])
    assert [t.name for t in await db.outbox_pending()] == ["r1-a0"]


def entry(key: str, task: str = "t", created: float = 1.0) -> CacheEntry:
    return CacheEntry(key, "p", "d", task, "v1", "tv", f"/out/{key}", "r1", "a0", 1, created)


async def test_cache_entries_are_kept_first_come_and_evicted(db):
    await db.cache_put(entry("k1"))
    await db.cache_put(dataclasses.replace(entry("k1"), outputs_uri="/elsewhere"))
    assert (await db.cache_get("k1")).outputs_uri == "/out/k1"
    await db.cache_put(entry("k2", task="u", created=2.0))
    await db.cache_put(entry("k3", created=3.0))
    assert [e.key for e in await db.cache_list()] == ["k3", "k2", "k1"]
    assert [e.key for e in await db.cache_list("t")] == ["k3", "k1"]
    assert await db.cache_delete(keys=["k1", "nope"]) == 1
    assert await db.cache_delete(task_name="u") == 1
    assert await db.cache_delete() == 1
    assert await db.cache_get("k3") is None


async def test_a_reservation_goes_to_one_owner_until_it_expires(db):
    got = await db.get_or_extend_reservation("k", "a", 10.0, now=100.0)
    assert (got.owner_id, got.expires_at) == ("a", 130.0)
    assert (await db.get_or_extend_reservation("k", "b", 10.0, now=110.0)).owner_id == "a"
    assert (await db.get_or_extend_reservation("k", "a", 10.0, now=120.0)).expires_at == 150.0  # extended
    assert (await db.get_or_extend_reservation("k", "b", 10.0, now=151.0)).owner_id == "b"  # a's lapsed
    await db.release_reservation("k", "a")  # not a's any more: kept
    assert (await db.get_or_extend_reservation("k", "c", 10.0, now=152.0)).owner_id == "b"
    await db.release_reservation("k", "b")
    assert (await db.get_or_extend_reservation("k", "c", 10.0, now=153.0)).owner_id == "c"


async def test_tasks_register_once_per_version_and_the_latest_is_found(db):
    one = TaskRecord("p", "d", "t", "v1", "dg1", b"spec1", "", 1.0)
    assert await db.task_register(one) == one
    assert await db.task_register(dataclasses.replace(one, digest="dg-other")) == one
    await db.task_register(TaskRecord("p", "d", "t", "v2", "dg2", b"spec2", "bundle.tgz", 2.0))
    assert (await db.task_get("p", "d", "t")).version == "v2"
    assert (await db.task_get("p", "d", "t", "v1")).spec == b"spec1"
    assert await db.task_get("p", "d", "nope") is None
    listed = await db.task_list("p", "d")
    assert [(t.version, t.spec) for t in listed] == [("v1", b""), ("v2", b"")]
    assert await db.task_list("q", "d") == []


async def test_triggers_keep_revisions_and_cursor(db):
    made = await db.trigger_put("p", "d", "nightly", "t", "v1", b"cron", True, now=10.0)
    assert (made.revision, made.cursor) == (1, 10.0)
    assert (await db.trigger_put("p", "d", "nightly", "t", "v1", b"cron", True, now=20.0)).revision == 1
    await db.trigger_advance("p", "d", "nightly", 15.0)
    await db.trigger_advance("p", "d", "nightly", 12.0)  # never backwards
    changed = await db.trigger_put("p", "d", "nightly", "t", "v2", b"cron", True, now=30.0)
    assert (changed.revision, changed.cursor) == (2, 15.0)
    off = await db.trigger_set_active("p", "d", "nightly", False, now=40.0)
    assert (off.active, off.revision) == (False, 3)
    on = await db.trigger_set_active("p", "d", "nightly", True, now=50.0)
    assert (on.active, on.revision, on.cursor) == (True, 4, 50.0)
    assert await db.trigger_set_active("p", "d", "nope", True, now=50.0) is None
    await db.trigger_note("p", "d", "nightly", "fired", now=51.0)
    history = await db.trigger_history("p", "d", "nightly")
    assert [h["revision"] for h in history] == [1, 2, 3, 4, None] and history[-1]["text"] == "fired"
    [listed] = await db.trigger_list("p", "d")
    assert (listed.task_version, listed.active, listed.cursor) == ("v2", True, 50.0)


async def test_projects_and_scoped_secrets(db):
    assert await db.project_create(ProjectRecord("p", "P", "about", ("dev", "prod"), 1.0))
    assert not await db.project_create(ProjectRecord("p", "Other", "", ("x",), 2.0))
    assert (await db.project_get("p")).domains == ("dev", "prod")
    assert [p.id for p in await db.project_list()] == ["p"]
    first = await db.secret_put("p", "dev", "token", b"cipher1", now=1.0)
    again = await db.secret_put("p", "dev", "token", b"cipher2", now=2.0)
    assert (first.created_at, again.created_at, again.updated_at) == (1.0, 1.0, 2.0)
    assert await db.secret_get("p", "dev", "token") == b"cipher2"
    await db.secret_put("", "", "global", b"g", now=3.0)
    await db.secret_put("q", "dev", "theirs", b"t", now=3.0)
    assert sorted(s.name for s in await db.secret_list("p", "dev")) == ["global", "token"]
    assert len(await db.secret_list()) == 3
    assert await db.secret_delete("p", "dev", "token") and not await db.secret_delete("p", "dev", "token")


# ---------------------------------------------------------------------- PostgreSQL only: engines sharing it
async def test_two_engines_sharing_postgresql_race_for_one_reservation_and_one_phase(postgres_url):
    from engine.store.postgres import PostgresRunsStore

    a, b = PostgresRunsStore(postgres_url, engine_id="a"), PostgresRunsStore(postgres_url, engine_id="b")
    await asyncio.gather(a.start(), b.start())  # the schema is created once, under an advisory lock
    try:
        grants = await asyncio.gather(*(store.get_or_extend_reservation("k", owner, 10.0, now=100.0)
                                        for _ in range(10) for store, owner in ((a, "a"), (b, "b"))))
        assert len({g.owner_id for g in grants}) == 1  # every answer names the same single owner
        await a.outbox_create_run_action(record(), None, None)
        phases = [ActionPhase.QUEUED, ActionPhase.INITIALIZING, ActionPhase.RUNNING, ActionPhase.SUCCEEDED] * 5
        await asyncio.gather(*(store.update_action_status(ActionStatusUpdate(KEY, int(phase), 1))
                               for i, phase in enumerate(phases) for store in ((a, b)[i % 2],)))
        assert (await b.get_action(KEY)).phase == ActionPhase.SUCCEEDED  # whatever the order, never backwards
        with pytest.raises(AlreadyExistsError):
            await b.outbox_create_run_action(record(), None, None)
    finally:
        await a.close()
        await b.close()


async def test_an_unreachable_or_malformed_database_is_a_clear_error():
    from engine.store.postgres import PostgresRunsStore, redacted

    with pytest.raises(ValueError, match="postgresql://"):
        PostgresRunsStore("mysql://db/x")
    url = "postgresql://me:hunter2@127.0.0.1:1/db"
    assert "hunter2" not in redacted(url) and "***" in redacted(url)
    store = PostgresRunsStore(url)
    with pytest.raises(StorageUnavailableError) as caught:
        await store.start()
    assert "hunter2" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)


async def test_a_database_the_engine_may_not_set_up_is_a_clear_error(postgres_server, postgres_url):
    """PostgreSQL 15 lets only a schema's owner create tables in it: an engine given a role without that
    privilege says so, with the URL (no password), instead of failing later or with a traceback."""
    import asyncpg

    from engine.store.postgres import PostgresRunsStore

    import secrets

    role = f"reader_{secrets.token_hex(3)}"
    owner = await asyncpg.connect(postgres_url)
    try:
        await owner.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader-secret'")
    finally:
        await owner.close()
    url = postgres_url.replace(f"{postgres_server.user}:{postgres_server.password}@", f"{role}:reader-secret@")
    store = PostgresRunsStore(url)
    with pytest.raises(StorageUnavailableError) as refused:
        await store.start()
    assert "cannot be set up" in str(refused.value) and "permission denied" in str(refused.value)
    assert "reader-secret" not in str(refused.value) and store._pool is None


async def test_a_write_while_the_server_is_gone_sets_storage_error_and_recovers(postgres_server, postgres_url):
    from engine.store.postgres import PostgresRunsStore

    store = PostgresRunsStore(postgres_url)
    await store.start()
    try:
        await store.outbox_create_run_action(record(), None, None)
        await store._pool.expire_connections()
        postgres_server._run("pg_ctl", "-D", str(postgres_server.root / "data"), "-m", "fast", "-w", "stop")
        try:
            with pytest.raises(StorageUnavailableError):
                await store.update_action_status(ActionStatusUpdate(KEY, int(ActionPhase.RUNNING), 1))
            assert store.storage_error and not await store.probe()
        finally:
            postgres_server.restart()
        assert await store.probe() and store.storage_error is None
        await store.update_action_status(ActionStatusUpdate(KEY, int(ActionPhase.RUNNING), 1))
        assert (await store.get_action(KEY)).phase == ActionPhase.RUNNING
    finally:
        await store.close()
