"""The runs data in PostgreSQL (asyncpg), for engines that share it: the Kubernetes backend's leader and its
followers (``--database postgresql://...``). SQLite stays the default for a single engine.

It keeps what ``SqliteStore`` keeps of the runs data (actions, events, task specs, the cache and its
reservations, registered tasks, triggers, projects, secrets and the TaskAction outbox) with the same
semantics; the TaskActions themselves live on the API server (``ClusterStore``). Every write is one
transaction. What two engines may race on is decided by the database, not by a cache in either engine:
the actions table's monotonic phase guard is evaluated in the UPDATE, a cache reservation is taken with
one conditional upsert, and a repeated event is ignored by its primary key.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

from engine.model import ACTION_TYPE_CONDITION, TaskAction
from engine.phases import TERMINAL_ACTION_PHASES, ActionPhase
from engine.store.base import (
    ActionKey,
    ActionRecord,
    ActionsChanged,
    ActionStatusUpdate,
    AlreadyExistsError,
    CacheEntry,
    Change,
    EventRecord,
    EventsRecorded,
    NotFoundError,
    ProjectRecord,
    Reservation,
    RunsDatabase,
    SecretInfo,
    StorageChanged,
    StorageUnavailableError,
    TaskRecord,
    TriggerRecord,
)

log = logging.getLogger(__name__)

RESERVATION_GRACE_MULTIPLIER = 3  # as the SQLite store: a reservation lives three heartbeats
SCHEMA_LOCK = 0x7A5CDEC  # an advisory lock: two engines starting together create the schema once

SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    project TEXT NOT NULL, domain TEXT NOT NULL, run_name TEXT NOT NULL, name TEXT NOT NULL,
    parent_action_name TEXT,
    phase BIGINT NOT NULL DEFAULT 1,
    action_type BIGINT NOT NULL DEFAULT 0,
    task_project TEXT, task_domain TEXT, task_name TEXT, task_version TEXT,
    task_type TEXT NOT NULL DEFAULT '',
    short_name TEXT, environment_name TEXT,
    function_name TEXT NOT NULL DEFAULT '',
    action_group TEXT NOT NULL DEFAULT '',
    action_spec BYTEA, task_spec_digest TEXT, run_spec BYTEA,
    input_uri TEXT NOT NULL DEFAULT '', run_output_base TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION, duration_ms BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    cache_status BIGINT NOT NULL DEFAULT 0,
    abort_requested_at DOUBLE PRECISION, abort_reason TEXT,
    error_kind TEXT, error_code TEXT, error_message TEXT,
    cache_key TEXT,
    PRIMARY KEY (project, domain, run_name, name)
);
CREATE INDEX IF NOT EXISTS actions_run_name ON actions (run_name);
CREATE INDEX IF NOT EXISTS actions_roots ON actions (run_name, created_at) WHERE parent_action_name IS NULL;
CREATE INDEX IF NOT EXISTS actions_created ON actions (created_at);
CREATE INDEX IF NOT EXISTS actions_paused ON actions (run_name) WHERE phase = {paused};
CREATE TABLE IF NOT EXISTS action_events (
    project TEXT NOT NULL, domain TEXT NOT NULL, run_name TEXT NOT NULL, name TEXT NOT NULL,
    attempt BIGINT NOT NULL, phase BIGINT NOT NULL, version BIGINT NOT NULL,
    info BYTEA NOT NULL,
    error_kind TEXT NOT NULL DEFAULT '',
    updated_time DOUBLE PRECISION NOT NULL,
    reported_time DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (project, domain, run_name, name, attempt, phase, version)
);
CREATE TABLE IF NOT EXISTS task_specs (digest TEXT PRIMARY KEY, spec BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    project TEXT NOT NULL, domain TEXT NOT NULL, task_name TEXT NOT NULL,
    cache_version TEXT NOT NULL, task_version TEXT NOT NULL,
    outputs_uri TEXT NOT NULL,
    run_name TEXT NOT NULL, action_name TEXT NOT NULL, attempt BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_entries_task ON cache_entries (task_name);
CREATE TABLE IF NOT EXISTS cache_reservations (
    key TEXT PRIMARY KEY, owner_id TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
    heartbeat_seconds DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    project TEXT NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
    digest TEXT NOT NULL, spec BYTEA NOT NULL, bundle TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (project, domain, name, version)
);
CREATE TABLE IF NOT EXISTS triggers (
    project TEXT NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL, task_name TEXT NOT NULL,
    task_version TEXT NOT NULL, spec BYTEA NOT NULL, active BOOLEAN NOT NULL, revision BIGINT NOT NULL,
    cursor DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (project, domain, name)
);
CREATE TABLE IF NOT EXISTS trigger_history (
    id BIGSERIAL PRIMARY KEY,
    project TEXT NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, revision BIGINT,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, domains TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS resource_outbox (
    name TEXT PRIMARY KEY, body TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    project TEXT NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL,
    ciphertext BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (project, domain, name)
);
CREATE TABLE IF NOT EXISTS probes (engine TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL);
""".format(paused=int(ActionPhase.PAUSED))

_ACTION_COLUMNS = [f for f in ActionRecord.__dataclass_fields__]
_EVENT_COLUMNS = [f for f in EventRecord.__dataclass_fields__]
_CACHE_COLUMNS = [f for f in CacheEntry.__dataclass_fields__]


def _placeholders(n: int, start: int = 1) -> str:
    return ", ".join(f"${i}" for i in range(start, start + n))


_INSERT_ACTION = (f"INSERT INTO actions ({', '.join(_ACTION_COLUMNS)}) VALUES ({_placeholders(len(_ACTION_COLUMNS))}) "
                  "ON CONFLICT DO NOTHING RETURNING name")
_INSERT_EVENT = (f"INSERT INTO action_events ({', '.join(_EVENT_COLUMNS)}) VALUES "
                 f"({_placeholders(len(_EVENT_COLUMNS))}) ON CONFLICT DO NOTHING RETURNING name")
_INSERT_CACHE_ENTRY = (f"INSERT INTO cache_entries ({', '.join(_CACHE_COLUMNS)}) VALUES "
                       f"({_placeholders(len(_CACHE_COLUMNS))}) ON CONFLICT DO NOTHING")
_OUTBOX_PUT = ("INSERT INTO resource_outbox (name, body, created_at) VALUES ($1, $2, $3) "
               "ON CONFLICT (name) DO UPDATE SET body = excluded.body, created_at = excluded.created_at")
_TERMINAL_SQL = ", ".join(str(int(p)) for p in sorted(TERMINAL_ACTION_PHASES))
_ENDED = "COALESCE(ended_at, GREATEST(COALESCE($10::float8, $8::float8), created_at))"
# The monotonic guard of UpdateActionPhase (reference §4.6), as the SQLite store's, evaluated against the row
# under its row lock: two engines updating one action cannot move it backwards.
_UPDATE_ACTION_STATUS = f"""
UPDATE actions SET
    phase = $5,
    attempts = GREATEST(attempts, $6),
    cache_status = $7,
    updated_at = $8,
    created_at = CASE WHEN $9::float8 IS NOT NULL AND $9::float8 < created_at THEN $9::float8 ELSE created_at END,
    ended_at = CASE WHEN $11::boolean THEN {_ENDED} ELSE NULL END,
    duration_ms = CASE WHEN $11::boolean THEN trunc(({_ENDED} - created_at) * 1000)::bigint ELSE NULL END,
    error_kind = CASE WHEN $11::boolean THEN $12::text ELSE error_kind END,
    error_code = CASE WHEN $11::boolean THEN $13::text ELSE error_code END,
    error_message = CASE WHEN $11::boolean THEN $14::text ELSE error_message END
WHERE project = $1 AND domain = $2 AND run_name = $3 AND name = $4
  AND (phase <= $5 OR phase IN ({int(ActionPhase.FAILED)}, {int(ActionPhase.TIMED_OUT)})
       OR (phase = {int(ActionPhase.PAUSED)} AND $5 IN ({_TERMINAL_SQL})))
"""
_RESET_ACTION = (
    "UPDATE actions SET phase = $1, attempts = $2, updated_at = $3, ended_at = NULL, duration_ms = NULL, "
    "error_kind = NULL, error_code = NULL, error_message = NULL, abort_requested_at = NULL, abort_reason = NULL "
    "WHERE project = $4 AND domain = $5 AND run_name = $6 AND name = $7 RETURNING name")
# Taken when free, expired or already the owner's; otherwise the row is left as it is (and read back).
_TAKE_RESERVATION = (
    "INSERT INTO cache_reservations AS r (key, owner_id, expires_at, heartbeat_seconds) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (key) DO UPDATE SET owner_id = excluded.owner_id, expires_at = excluded.expires_at, "
    "heartbeat_seconds = excluded.heartbeat_seconds WHERE r.owner_id = excluded.owner_id OR r.expires_at <= $5 "
    "RETURNING key, owner_id, expires_at, heartbeat_seconds")
_TRIGGER_COLUMNS = "project, domain, name, task_name, task_version, spec, active, revision, cursor, updated_at"
_TASK_COLUMNS = "project, domain, name, version, digest, spec, bundle, created_at"

T = TypeVar("T")


def check_database_url(url: str) -> str:
    """A PostgreSQL connection URL, or ValueError saying what is wrong with it (never echoing a password)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError("--database must be a postgresql:// URL (postgresql://USER@HOST:PORT/DB)") from None
    if parts.scheme not in ("postgresql", "postgres") or not (parts.hostname or "host=" in parts.query):
        raise ValueError("--database must be a postgresql:// URL with a host (postgresql://USER@HOST:PORT/DB); "
                         "give the password with PGPASSWORD or ~/.pgpass rather than in the URL")
    return url


def redacted(url: str) -> str:
    """The URL as it may be shown: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _action(row) -> ActionRecord:
    return ActionRecord(**{k: row[k] for k in _ACTION_COLUMNS})


def _event(row) -> EventRecord:
    return EventRecord(**{k: row[k] for k in _EVENT_COLUMNS})


def _cache_entry(row) -> CacheEntry:
    return CacheEntry(**{k: row[k] for k in _CACHE_COLUMNS})


def _task(row) -> TaskRecord:
    return TaskRecord(row[0], row[1], row[2], row[3], row[4], bytes(row[5] or b""), row[6], row[7])


def _trigger(row) -> TriggerRecord:
    return TriggerRecord(row[0], row[1], row[2], row[3], row[4], bytes(row[5]), bool(row[6]), row[7], row[8], row[9])


def _project(row) -> ProjectRecord:
    return ProjectRecord(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4])


_UNAVAILABLE = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.InsufficientResourcesError,
                asyncpg.OperatorInterventionError, OSError, TimeoutError)


class PostgresRunsStore(RunsDatabase):
    """The runs database on a PostgreSQL server, shared by the engines of one namespace."""

    def __init__(self, url: str, *, pool_size: int = 4, engine_id: str = "", command_timeout: float = 30.0):
        self.url = check_database_url(url)
        self.pool_size = pool_size
        self.engine_id = engine_id or f"engine-{id(self):x}"
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._subscribers: list[Callable[[Change], None]] = []
        self.storage_error: str | None = None

    def location(self) -> str:
        return redacted(self.url)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size,
                                                   command_timeout=self.command_timeout)
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            raise StorageUnavailableError(f"cannot reach the runs database {redacted(self.url)}: {exc}") from None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                await conn.execute(SCHEMA)
        except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
            await self.close()
            raise StorageUnavailableError(f"the runs database {redacted(self.url)} cannot be set up: "
                                          f"{type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def probe(self) -> bool:
        try:
            await self._write(lambda c: c.execute(
                "INSERT INTO probes (engine, at) VALUES ($1, $2) ON CONFLICT (engine) DO UPDATE SET at = excluded.at",
                self.engine_id, time.time()))
        except StorageUnavailableError:
            return False
        return True

    # ------------------------------------------------------------------ plumbing
    def _conn(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageUnavailableError("the runs database is not open")
        return self._pool

    async def _write(self, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``body`` in one transaction; a database that cannot take it sets ``storage_error`` (and says so once)."""
        try:
            async with self._conn().acquire() as conn, conn.transaction():
                result = await body(conn)
        except _UNAVAILABLE as exc:
            self._failed(exc)
            raise StorageUnavailableError(self.storage_error) from None
        except asyncpg.PostgresError as exc:
            if exc.sqlstate and exc.sqlstate[:2] in ("08", "53", "57", "58", "25", "40"):  # connection, resources,
                self._failed(exc)  # shutdown, system, transaction state, rollback: the database, not the data
                raise StorageUnavailableError(self.storage_error) from None
            raise
        if self.storage_error is not None:
            self.storage_error = None
            log.warning("the runs database accepts writes again")
            self._publish(StorageChanged(None))
        return result

    def _failed(self, exc: BaseException) -> None:
        first = self.storage_error is None
        self.storage_error = f"{type(exc).__name__}: {exc}"
        log.error("runs database write failed: %s", exc)
        if first:
            self._publish(StorageChanged(self.storage_error))

    async def _fetch(self, sql: str, *params: Any) -> list:
        try:
            return await self._conn().fetch(sql, *params)
        except _UNAVAILABLE as exc:
            raise StorageUnavailableError(f"the runs database cannot be read: {type(exc).__name__}: {exc}") from None

    def _publish(self, change: Change) -> None:
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:  # a broken subscriber must not break a write
                log.exception("store subscriber failed")

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # ------------------------------------------------------------------ actions
    async def create_run_action(self, record: ActionRecord, task_action: TaskAction | None,
                                task_spec: tuple[str, bytes] | None) -> TaskAction | None:
        if task_action is not None:
            raise TypeError("the PostgreSQL store keeps no TaskActions: use it as the runs database of ClusterStore")
        await self.outbox_create_run_action(record, None, task_spec)
        return None

    async def restart_action(self, key: ActionKey, attempts: int, task_action: TaskAction,
                             events: list[EventRecord]) -> None:
        raise TypeError("the PostgreSQL store keeps no TaskActions: use it as the runs database of ClusterStore")

    async def outbox_create_run_action(self, record: ActionRecord, resource: TaskAction | None,
                                       task_spec: tuple[str, bytes] | None) -> None:
        body = resource.to_json() if resource is not None else None

        async def write(conn: asyncpg.Connection) -> None:
            if task_spec is not None:
                await conn.execute("INSERT INTO task_specs (digest, spec) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                   *task_spec)
            if await conn.fetchval(_INSERT_ACTION, *(getattr(record, c) for c in _ACTION_COLUMNS)) is None:
                raise AlreadyExistsError(f"action {record.run_name}/{record.name} already exists")
            if body is not None:
                await conn.execute(_OUTBOX_PUT, resource.name, body, time.time())

        await self._write(write)
        self._publish(ActionsChanged((record.key,)))

    async def outbox_restart_action(self, key: ActionKey, attempts: int, resource: TaskAction,
                                    events: list[EventRecord]) -> None:
        body = resource.to_json()

        async def write(conn: asyncpg.Connection) -> list[EventRecord]:
            if await conn.fetchval(_RESET_ACTION, int(ActionPhase.QUEUED), attempts, time.time(), *key) is None:
                raise NotFoundError(f"action {'/'.join(key)} does not exist")
            recorded = await self._insert_events(conn, events)
            await conn.execute(_OUTBOX_PUT, resource.name, body, time.time())
            return recorded

        recorded = await self._write(write)
        self._publish(ActionsChanged((key,)))
        if recorded:
            self._publish(EventsRecorded(tuple(recorded)))

    async def outbox_pending(self) -> list[TaskAction]:
        rows = await self._fetch("SELECT body FROM resource_outbox ORDER BY created_at, name")
        return [TaskAction.from_json(row["body"]) for row in rows]

    async def outbox_done(self, name: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM resource_outbox WHERE name = $1", name))

    async def update_action_status(self, update: ActionStatusUpdate) -> None:
        terminal = ActionPhase(update.phase) in TERMINAL_ACTION_PHASES
        await self._write(lambda c: c.execute(
            _UPDATE_ACTION_STATUS, *update.key, int(update.phase), update.attempts, update.cache_status, time.time(),
            update.start_time, update.end_time, terminal, update.error_kind, update.error_code, update.error_message))
        self._publish(ActionsChanged((update.key,), (update,)))

    async def mark_abort_requested(self, key: ActionKey, reason: str, when: float) -> None:
        await self._write(lambda c: c.execute(
            "UPDATE actions SET abort_requested_at = COALESCE(abort_requested_at, $1), abort_reason = $2, "
            "updated_at = $1 WHERE project = $3 AND domain = $4 AND run_name = $5 AND name = $6", when, reason, *key))
        self._publish(ActionsChanged((key,)))

    @staticmethod
    async def _insert_events(conn: asyncpg.Connection, events: list[EventRecord]) -> list[EventRecord]:
        recorded = []
        for event in events:
            if await conn.fetchval(_INSERT_EVENT, *(getattr(event, c) for c in _EVENT_COLUMNS)) is not None:
                recorded.append(event)
        return recorded

    async def record_events(self, events: list[EventRecord]) -> None:
        if not events:
            return
        recorded = await self._write(lambda c: self._insert_events(c, events))
        if recorded:
            self._publish(EventsRecorded(tuple(recorded)))

    async def get_action(self, key: ActionKey) -> ActionRecord | None:
        rows = await self._fetch("SELECT * FROM actions WHERE project = $1 AND domain = $2 AND run_name = $3 "
                                 "AND name = $4", *key)
        return _action(rows[0]) if rows else None

    async def find_run(self, run_name: str) -> ActionRecord | None:
        rows = await self._fetch("SELECT * FROM actions WHERE run_name = $1 AND parent_action_name IS NULL "
                                 "ORDER BY created_at DESC LIMIT 1", run_name)
        return _action(rows[0]) if rows else None

    async def list_runs(self, limit: int = 200) -> list[ActionRecord]:
        rows = await self._fetch("SELECT * FROM actions WHERE parent_action_name IS NULL ORDER BY created_at DESC "
                                 "LIMIT $1", limit)
        return [_action(r) for r in rows]

    async def list_actions(self, project: str, domain: str, run_name: str) -> list[ActionRecord]:
        rows = await self._fetch("SELECT * FROM actions WHERE project = $1 AND domain = $2 AND run_name = $3 "
                                 "ORDER BY created_at, name", project, domain, run_name)
        return [_action(r) for r in rows]

    async def get_actions(self, project: str, domain: str, run_name: str, names: list[str]) -> list[ActionRecord]:
        rows = await self._fetch("SELECT * FROM actions WHERE project = $1 AND domain = $2 AND run_name = $3 "
                                 "AND name = ANY($4::text[])", project, domain, run_name, list(names))
        return [_action(r) for r in rows]

    async def list_events(self, key: ActionKey) -> list[EventRecord]:
        rows = await self._fetch("SELECT * FROM action_events WHERE project = $1 AND domain = $2 AND run_name = $3 "
                                 "AND name = $4 ORDER BY attempt, reported_time, phase, version", *key)
        return [_event(r) for r in rows]

    async def phase_counts(self, run: tuple[str, str, str] | None = None) -> dict[int, int]:
        if run is None:
            rows = await self._fetch("SELECT phase, COUNT(*) FROM actions WHERE parent_action_name IS NULL "
                                     "GROUP BY phase")
        else:
            rows = await self._fetch("SELECT phase, COUNT(*) FROM actions WHERE project = $1 AND domain = $2 "
                                     "AND run_name = $3 GROUP BY phase", *run)
        return {int(phase): int(count) for phase, count in rows}

    async def paused_conditions(self, run_names: list[str] | None = None) -> list[tuple[str, str, str]]:
        sql = (f"SELECT run_name, name, COALESCE(short_name, name) FROM actions WHERE phase = "
               f"{int(ActionPhase.PAUSED)} AND action_type = {ACTION_TYPE_CONDITION}")
        if run_names is None:
            rows = await self._fetch(sql + " ORDER BY run_name, name")
        else:
            rows = await self._fetch(sql + " AND run_name = ANY($1::text[]) ORDER BY run_name, name", list(run_names))
        return [tuple(r) for r in rows]

    async def get_task_spec(self, digest: str) -> bytes | None:
        rows = await self._fetch("SELECT spec FROM task_specs WHERE digest = $1", digest)
        return bytes(rows[0][0]) if rows else None

    # ------------------------------------------------------------------ the task cache
    async def cache_get(self, key: str) -> CacheEntry | None:
        rows = await self._fetch("SELECT * FROM cache_entries WHERE key = $1", key)
        return _cache_entry(rows[0]) if rows else None

    async def cache_put(self, entry: CacheEntry) -> None:
        await self._write(lambda c: c.execute(_INSERT_CACHE_ENTRY, *(getattr(entry, k) for k in _CACHE_COLUMNS)))

    async def cache_list(self, task_name: str | None = None, limit: int = 1000) -> list[CacheEntry]:
        if task_name is None:
            rows = await self._fetch("SELECT * FROM cache_entries ORDER BY created_at DESC LIMIT $1", limit)
        else:
            rows = await self._fetch("SELECT * FROM cache_entries WHERE task_name = $1 ORDER BY created_at DESC "
                                     "LIMIT $2", task_name, limit)
        return [_cache_entry(r) for r in rows]

    async def cache_delete(self, keys: list[str] | None = None, task_name: str | None = None) -> int:
        if keys is not None:
            sql, params = "DELETE FROM cache_entries WHERE key = ANY($1::text[]) RETURNING key", (list(keys),)
        elif task_name is not None:
            sql, params = "DELETE FROM cache_entries WHERE task_name = $1 RETURNING key", (task_name,)
        else:
            sql, params = "DELETE FROM cache_entries RETURNING key", ()
        return len(await self._write(lambda c: c.fetch(sql, *params)))

    async def get_or_extend_reservation(self, key: str, owner_id: str, heartbeat_seconds: float,
                                        now: float) -> Reservation:
        expires = now + heartbeat_seconds * RESERVATION_GRACE_MULTIPLIER

        async def take(conn: asyncpg.Connection) -> Reservation:
            row = await conn.fetchrow(_TAKE_RESERVATION, key, owner_id, expires, heartbeat_seconds, now)
            if row is None:  # held by another owner that is alive
                row = await conn.fetchrow("SELECT key, owner_id, expires_at, heartbeat_seconds FROM cache_reservations "
                                          "WHERE key = $1", key)
            return Reservation(*row)

        return await self._write(take)

    async def release_reservation(self, key: str, owner_id: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM cache_reservations WHERE key = $1 AND owner_id = $2",
                                              key, owner_id))

    # ------------------------------------------------------------------ registered tasks
    async def task_register(self, task: TaskRecord) -> TaskRecord:
        await self._write(lambda c: c.execute(
            f"INSERT INTO tasks ({_TASK_COLUMNS}) VALUES ({_placeholders(8)}) ON CONFLICT DO NOTHING",
            task.project, task.domain, task.name, task.version, task.digest, task.spec, task.bundle, task.created_at))
        return await self.task_get(task.project, task.domain, task.name, task.version) or task

    async def task_get(self, project: str, domain: str, name: str, version: str | None = None) -> TaskRecord | None:
        if version:
            rows = await self._fetch(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE project = $1 AND domain = $2 "
                                     "AND name = $3 AND version = $4", project, domain, name, version)
        else:
            rows = await self._fetch(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE project = $1 AND domain = $2 "
                                     "AND name = $3 ORDER BY created_at DESC LIMIT 1", project, domain, name)
        return _task(rows[0]) if rows else None

    async def task_list(self, project: str | None = None, domain: str | None = None) -> list[TaskRecord]:
        columns = "project, domain, name, version, digest, ''::bytea AS spec, bundle, created_at"
        if project is None:
            rows = await self._fetch(f"SELECT {columns} FROM tasks ORDER BY project, domain, name, created_at")
        else:
            rows = await self._fetch(f"SELECT {columns} FROM tasks WHERE project = $1 AND domain = $2 "
                                     "ORDER BY project, domain, name, created_at", project, domain or "")
        return [_task(r) for r in rows]

    # ------------------------------------------------------------------ triggers
    async def _trigger(self, conn, project: str, domain: str, name: str, lock: bool = False) -> TriggerRecord | None:
        row = await conn.fetchrow(f"SELECT {_TRIGGER_COLUMNS} FROM triggers WHERE project = $1 AND domain = $2 "
                                  f"AND name = $3{' FOR UPDATE' if lock else ''}", project, domain, name)
        return _trigger(row) if row else None

    async def _note(self, conn, project, domain, name, at, revision, text) -> None:
        await conn.execute("INSERT INTO trigger_history (project, domain, name, at, revision, text) "
                           "VALUES ($1, $2, $3, $4, $5, $6)", project, domain, name, at, revision, text)

    async def trigger_put(self, project: str, domain: str, name: str, task_name: str, task_version: str, spec: bytes,
                          active: bool, now: float) -> TriggerRecord:
        async def write(conn: asyncpg.Connection) -> TriggerRecord:
            current = await self._trigger(conn, project, domain, name, lock=True)
            if current is not None and (current.spec, current.task_name, current.task_version) == \
                    (spec, task_name, task_version):
                return current  # deployed again unchanged: no new revision
            revision = (current.revision if current else 0) + 1
            cursor = current.cursor if current is not None and current.active else now
            await conn.execute(
                f"INSERT INTO triggers ({_TRIGGER_COLUMNS}) VALUES ({_placeholders(10)}) ON CONFLICT (project, domain, "
                "name) DO UPDATE SET task_name = excluded.task_name, task_version = excluded.task_version, "
                "spec = excluded.spec, active = excluded.active, revision = excluded.revision, "
                "cursor = excluded.cursor, updated_at = excluded.updated_at",
                project, domain, name, task_name, task_version, spec, active, revision, cursor, now)
            await self._note(conn, project, domain, name, now, revision,
                             f"deployed for {task_name} {task_version}, {'active' if active else 'inactive'}")
            return TriggerRecord(project, domain, name, task_name, task_version, spec, active, revision, cursor, now)

        return await self._write(write)

    async def trigger_set_active(self, project: str, domain: str, name: str, active: bool,
                                 now: float) -> TriggerRecord | None:
        async def write(conn: asyncpg.Connection) -> TriggerRecord | None:
            current = await self._trigger(conn, project, domain, name, lock=True)
            if current is None or current.active == active:
                return current
            revision, cursor = current.revision + 1, now if active else current.cursor
            await conn.execute("UPDATE triggers SET active = $1, revision = $2, cursor = $3, updated_at = $4 "
                               "WHERE project = $5 AND domain = $6 AND name = $7",
                               active, revision, cursor, now, project, domain, name)
            await self._note(conn, project, domain, name, now, revision, "activated" if active else "deactivated")
            return TriggerRecord(project, domain, name, current.task_name, current.task_version, current.spec, active,
                                 revision, cursor, now)

        return await self._write(write)

    async def trigger_list(self, project: str | None = None, domain: str | None = None) -> list[TriggerRecord]:
        if project is None:
            rows = await self._fetch(f"SELECT {_TRIGGER_COLUMNS} FROM triggers ORDER BY project, domain, name")
        else:
            rows = await self._fetch(f"SELECT {_TRIGGER_COLUMNS} FROM triggers WHERE project = $1 AND domain = $2 "
                                     "ORDER BY project, domain, name", project, domain or "")
        return [_trigger(r) for r in rows]

    async def trigger_advance(self, project: str, domain: str, name: str, cursor: float) -> None:
        await self._write(lambda c: c.execute(
            "UPDATE triggers SET cursor = GREATEST(cursor, $1) WHERE project = $2 AND domain = $3 AND name = $4",
            cursor, project, domain, name))

    async def trigger_note(self, project: str, domain: str, name: str, text: str, now: float) -> None:
        await self._write(lambda c: self._note(c, project, domain, name, now, None, text))

    async def trigger_history(self, project: str, domain: str, name: str) -> list[dict]:
        rows = await self._fetch("SELECT at, revision, text FROM trigger_history WHERE project = $1 AND domain = $2 "
                                 "AND name = $3 ORDER BY id", project, domain, name)
        return [{"at": r[0], "revision": r[1], "text": r[2]} for r in rows]

    # ------------------------------------------------------------------ projects
    async def project_create(self, project: ProjectRecord) -> bool:
        created = await self._write(lambda c: c.fetchval(
            "INSERT INTO projects (id, name, description, domains, created_at) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT DO NOTHING RETURNING id",
            project.id, project.name, project.description, json.dumps(list(project.domains)), project.created_at))
        return created is not None

    async def project_get(self, project_id: str) -> ProjectRecord | None:
        rows = await self._fetch("SELECT id, name, description, domains, created_at FROM projects WHERE id = $1",
                                 project_id)
        return _project(rows[0]) if rows else None

    async def project_list(self) -> list[ProjectRecord]:
        rows = await self._fetch("SELECT id, name, description, domains, created_at FROM projects ORDER BY id")
        return [_project(r) for r in rows]

    # ------------------------------------------------------------------ secrets (values encrypted by the caller)
    async def secret_put(self, project: str, domain: str, name: str, ciphertext: bytes, now: float) -> SecretInfo:
        created = await self._write(lambda c: c.fetchval(
            "INSERT INTO secrets (project, domain, name, ciphertext, created_at, updated_at) VALUES "
            "($1, $2, $3, $4, $5, $5) ON CONFLICT (project, domain, name) DO UPDATE SET "
            "ciphertext = excluded.ciphertext, updated_at = excluded.updated_at RETURNING created_at",
            project, domain, name, ciphertext, now))
        return SecretInfo(name, project, domain, created, now)

    async def secret_get(self, project: str, domain: str, name: str) -> bytes | None:
        rows = await self._fetch("SELECT ciphertext FROM secrets WHERE project = $1 AND domain = $2 AND name = $3",
                                 project, domain, name)
        return bytes(rows[0][0]) if rows else None

    async def secret_delete(self, project: str, domain: str, name: str) -> bool:
        deleted = await self._write(lambda c: c.fetchval(
            "DELETE FROM secrets WHERE project = $1 AND domain = $2 AND name = $3 RETURNING name", project, domain, name))
        return deleted is not None

    async def secret_list(self, project: str | None = None, domain: str | None = None) -> list[SecretInfo]:
        sql = "SELECT name, project, domain, created_at, updated_at FROM secrets"
        if project is None:
            rows = await self._fetch(sql + " ORDER BY project, domain, name")
        else:
            rows = await self._fetch(sql + " WHERE (project = '' AND domain = '') OR (project = $1 AND "
                                     "(domain = '' OR domain = $2)) ORDER BY project, domain, name", project, domain or "")
        return [SecretInfo(*tuple(r)) for r in rows]
