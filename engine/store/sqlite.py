"""The embedded store: one SQLite database (WAL) behind one writer task.

Every write is an *op* queued to the writer. The writer takes all queued ops (up to ``max_batch``),
validates each against the committed state plus what earlier ops of the same batch staged (so a stale
resourceVersion is refused exactly as the API server would), runs the batch's SQL in one transaction, and
only after COMMIT updates the in-memory objects, resolves the callers and publishes watch events. A caller
is therefore acknowledged only for what is durable, and throughput is not bound by one commit per change.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosqlite

from engine.actions_table import derive_action_updates
from engine.model import ACTION_TYPE_CONDITION, TaskAction, utcnow
from engine.store.resting import RestingObjects, can_rest
from engine.phases import TERMINAL_ACTION_PHASES, ActionPhase
from engine.store.base import (
    ActionKey,
    ActionRecord,
    ActionsChanged,
    ActionStatusUpdate,
    AlreadyExistsError,
    CacheEntry,
    Change,
    ConflictError,
    EngineStore,
    EventRecord,
    EventsRecorded,
    GoneError,
    QueueWatch,
    NotFoundError,
    OwnerGoneError,
    ProjectRecord,
    RunsDatabase,
    TaskRecord,
    TriggerRecord,
    Reservation,
    SecretInfo,
    StorageChanged,
    StorageUnavailableError,
    WatchEvent,
    labels_match,
)

log = logging.getLogger(__name__)

RESERVATION_GRACE_MULTIPLIER = 3  # a reservation lives three heartbeats (Flyte's heartbeatGracePeriodMultiplier)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS taskactions (
    name TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    resource_version INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    project TEXT NOT NULL, domain TEXT NOT NULL, run_name TEXT NOT NULL, name TEXT NOT NULL,
    parent_action_name TEXT,
    phase INTEGER NOT NULL DEFAULT 1,
    action_type INTEGER NOT NULL DEFAULT 0,
    task_project TEXT, task_domain TEXT, task_name TEXT, task_version TEXT,
    task_type TEXT NOT NULL DEFAULT '',
    short_name TEXT, environment_name TEXT,
    function_name TEXT NOT NULL DEFAULT '',
    action_group TEXT NOT NULL DEFAULT '',
    action_spec BLOB, task_spec_digest TEXT, run_spec BLOB,
    input_uri TEXT NOT NULL DEFAULT '', run_output_base TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL, updated_at REAL NOT NULL, ended_at REAL, duration_ms INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    cache_status INTEGER NOT NULL DEFAULT 0,
    abort_requested_at REAL, abort_reason TEXT,
    error_kind TEXT, error_code TEXT, error_message TEXT,
    cache_key TEXT,
    PRIMARY KEY (project, domain, run_name, name)
);
CREATE INDEX IF NOT EXISTS actions_parent ON actions (parent_action_name);
CREATE INDEX IF NOT EXISTS actions_phase ON actions (phase);
CREATE INDEX IF NOT EXISTS actions_created ON actions (created_at);
CREATE INDEX IF NOT EXISTS actions_run_name ON actions (run_name);
CREATE INDEX IF NOT EXISTS actions_roots ON actions (run_name, created_at) WHERE parent_action_name IS NULL;
CREATE INDEX IF NOT EXISTS actions_run_phase ON actions (project, domain, run_name, phase);
CREATE TABLE IF NOT EXISTS action_events (
    project TEXT NOT NULL, domain TEXT NOT NULL, run_name TEXT NOT NULL, name TEXT NOT NULL,
    attempt INTEGER NOT NULL, phase INTEGER NOT NULL, version INTEGER NOT NULL,
    info BLOB NOT NULL,
    error_kind TEXT NOT NULL DEFAULT '',
    updated_time REAL NOT NULL,
    reported_time REAL NOT NULL,
    PRIMARY KEY (project, domain, run_name, name, attempt, phase, version)
);
CREATE TABLE IF NOT EXISTS task_specs (digest TEXT PRIMARY KEY, spec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    project TEXT NOT NULL, domain TEXT NOT NULL, task_name TEXT NOT NULL,
    cache_version TEXT NOT NULL, task_version TEXT NOT NULL,
    outputs_uri TEXT NOT NULL,
    run_name TEXT NOT NULL, action_name TEXT NOT NULL, attempt INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_entries_task ON cache_entries (task_name);
CREATE TABLE IF NOT EXISTS cache_reservations (
    key TEXT PRIMARY KEY, owner_id TEXT NOT NULL, expires_at REAL NOT NULL, heartbeat_seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    project TEXT NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL,
    digest TEXT NOT NULL, spec BLOB NOT NULL, bundle TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (project, domain, name, version)
);
CREATE TABLE IF NOT EXISTS triggers (
    project TEXT NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL, task_name TEXT NOT NULL,
    task_version TEXT NOT NULL, spec BLOB NOT NULL, active INTEGER NOT NULL, revision INTEGER NOT NULL,
    cursor REAL NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (project, domain, name)
);
CREATE TABLE IF NOT EXISTS trigger_history (
    project TEXT NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL, at REAL NOT NULL, revision INTEGER,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL, domains TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS resource_outbox (
    name TEXT PRIMARY KEY, body TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    project TEXT NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL,
    ciphertext BLOB NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    PRIMARY KEY (project, domain, name)
);
"""
# Columns added after a database may have been created: (table, column, declaration).
MIGRATIONS = [("actions", "cache_key", "TEXT")]

_ACTION_COLUMNS = [f.name for f in dataclasses.fields(ActionRecord)]
_INSERT_ACTION = (
    f"INSERT OR IGNORE INTO actions ({', '.join(_ACTION_COLUMNS)}) VALUES ({', '.join('?' * len(_ACTION_COLUMNS))})"
)
_OUTBOX_PUT = "INSERT OR REPLACE INTO resource_outbox (name, body, created_at) VALUES (?, ?, ?)"
_EVENT_COLUMNS = [f.name for f in dataclasses.fields(EventRecord)]
_CACHE_COLUMNS = [f.name for f in dataclasses.fields(CacheEntry)]
_INSERT_CACHE_ENTRY = (
    f"INSERT OR IGNORE INTO cache_entries ({', '.join(_CACHE_COLUMNS)}) VALUES ({', '.join('?' * len(_CACHE_COLUMNS))})"
)
_UPSERT_RESERVATION = (
    "INSERT INTO cache_reservations (key, owner_id, expires_at, heartbeat_seconds) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET owner_id = excluded.owner_id, expires_at = excluded.expires_at, "
    "heartbeat_seconds = excluded.heartbeat_seconds"
)
_INSERT_EVENT = (
    f"INSERT OR IGNORE INTO action_events ({', '.join(_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_EVENT_COLUMNS))})"
)
_TERMINAL_SQL = ", ".join(str(int(p)) for p in sorted(TERMINAL_ACTION_PHASES))
# The monotonic guard of UpdateActionPhase (reference §4.6), evaluated by SQLite against the row.
_UPDATE_ACTION_STATUS = f"""
UPDATE actions SET
    phase = :phase,
    attempts = MAX(attempts, :attempts),
    cache_status = :cache_status,
    updated_at = :now,
    created_at = CASE WHEN :start_time IS NOT NULL AND :start_time < created_at THEN :start_time ELSE created_at END,
    ended_at = CASE WHEN :terminal THEN COALESCE(ended_at, MAX(COALESCE(:end_time, :now), created_at)) ELSE NULL END,
    duration_ms = CASE WHEN :terminal
        THEN CAST((COALESCE(ended_at, MAX(COALESCE(:end_time, :now), created_at)) - created_at) * 1000 AS INTEGER)
        ELSE NULL END,
    error_kind = CASE WHEN :terminal THEN :error_kind ELSE error_kind END,
    error_code = CASE WHEN :terminal THEN :error_code ELSE error_code END,
    error_message = CASE WHEN :terminal THEN :error_message ELSE error_message END
WHERE project = :project AND domain = :domain AND run_name = :run_name AND name = :name
  AND (phase <= :phase OR phase IN ({int(ActionPhase.FAILED)}, {int(ActionPhase.TIMED_OUT)})
       OR (phase = {int(ActionPhase.PAUSED)} AND :phase IN ({_TERMINAL_SQL})))
"""
_UPSERT_OBJECT = (
    "INSERT INTO taskactions (name, namespace, resource_version, body) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(name) DO UPDATE SET namespace = excluded.namespace, "
    "resource_version = excluded.resource_version, body = excluded.body"
)
_DELETE_OBJECT = "DELETE FROM taskactions WHERE name = ?"
_SAVE_RV = "INSERT INTO meta (key, value) VALUES ('resource_version', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"


def _row_to_action(row: sqlite3.Row) -> ActionRecord:
    try:
        return ActionRecord(**{k: row[k] for k in _ACTION_COLUMNS})
    except IndexError:  # a read-only view of an older database lacks newer columns
        present = set(row.keys())
        return ActionRecord(**{k: row[k] for k in _ACTION_COLUMNS if k in present})


def _row_to_event(row: sqlite3.Row) -> EventRecord:
    return EventRecord(**{k: row[k] for k in _EVENT_COLUMNS})


def _refresh(obj: TaskAction, committed: TaskAction) -> TaskAction:
    """Write back what the server sets, into the caller's object (controller-runtime's contract)."""
    meta, done = obj.metadata, committed.metadata
    meta.resource_version = done.resource_version
    meta.uid = done.uid
    meta.generation = done.generation
    meta.creation_timestamp = done.creation_timestamp
    meta.deletion_timestamp = done.deletion_timestamp
    return obj


class _Batch:
    """What one writer batch stages on top of the committed state.

    Op functions validate first and stage after, so an op that raises leaves the batch untouched.
    """

    def __init__(self, store: SqliteStore):
        self._store = store
        self.staged: dict[str, TaskAction | None] = {}
        self.rv = store._rv
        self.statements: list[tuple[str, Any]] = []
        self.watch_events: list[WatchEvent] = []
        self.changed_actions: dict[ActionKey, None] = {}
        self.status_updates: list[ActionStatusUpdate] = []
        self.new_events: list[EventRecord] = []
        self.new_action_keys: set[ActionKey] = set()
        self.new_dependents: dict[str, set[str]] = {}
        self.bodies: dict[int, str] = {}  # id(staged object) -> its JSON, serialized once for SQL and history
        self.reservations: dict[str, Reservation | None] = {}  # staged; None = released
        self.now = utcnow()

    def action_exists(self, key: ActionKey) -> bool:
        return key in self.new_action_keys or key in self._store._action_keys

    def lookup(self, name: str) -> TaskAction | None:
        if name in self.staged:
            return self.staged[name]
        return self._store._lookup(name)

    def reservation(self, key: str) -> Reservation | None:
        if key in self.reservations:
            return self.reservations[key]
        return self._store._reservations.get(key)

    def dependents_of(self, uid: str) -> list[str]:
        """Committed dependents plus those created earlier in this batch (owner references never change)."""
        return sorted(self._store._dependents.get(uid, set()) | self.new_dependents.get(uid, set()))

    def stage(self, obj: TaskAction, event_type: str) -> TaskAction:
        self._derive_actions(self.lookup(obj.name), obj)
        if event_type == "ADDED":
            for ref in obj.metadata.owner_references:
                self.new_dependents.setdefault(ref.uid, set()).add(obj.name)
        self.rv += 1
        obj.metadata.resource_version = str(self.rv)
        self.staged[obj.name] = obj
        self.watch_events.append(WatchEvent(event_type, obj, str(self.rv)))  # type: ignore[arg-type]
        return obj

    def stage_removal(self, obj: TaskAction) -> None:
        self._derive_actions(obj, None)
        self.rv += 1
        self.staged[obj.name] = None
        self.watch_events.append(WatchEvent("DELETED", obj, str(self.rv)))

    def sql(self, statement: str, params: Any) -> None:
        self.statements.append((statement, params))

    def _derive_actions(self, old: TaskAction | None, new: TaskAction | None) -> None:
        """Keep the actions table in step with the resources, in the same transaction."""
        parent = None
        if old is None and new is not None and new.metadata.owner_references:
            parent = self.lookup(new.metadata.owner_references[0].name)
        for update in derive_action_updates(old, new, parent):
            self._store._op_update_action_status(self, update)


@dataclasses.dataclass
class _Op:
    apply: Callable[[_Batch], Any]
    future: asyncio.Future


class SqliteStore(EngineStore, RunsDatabase):
    def __init__(self, path: str | Path, *, max_batch: int = 500, history_size: int = 50_000,
                 history_bytes: int = 8 << 20, read_only: bool = False, inline_commits: bool = True):
        self.path = str(path)
        self.read_only = read_only
        # Commits run on the event loop's thread by default: ~18% more throughput than handing each batch to
        # the writer thread (GIL ping-pong), for a stall of ~1.5 ms median, ~14 ms p99 per batch here.
        self.inline_commits = inline_commits
        self.max_batch = max_batch
        self._objects: dict[str, TaskAction] = {}  # live: not terminated, or being deleted
        self._resting = RestingObjects()  # terminated: read back from the database on demand
        self._dependents: dict[str, set[str]] = collections.defaultdict(set)
        self._rv = 0
        # (type, resourceVersion, JSON body): a string is not tracked by Python's cyclic GC, whereas 50,000
        # object snapshots (~30 containers each) made full collections cost ~40% of the engine's time.
        self._history: collections.deque[tuple[str, int, str]] = collections.deque()
        self._history_size = history_size
        self._history_bytes_cap = history_bytes  # bodies carry task templates: a count alone let it reach ~140 MiB
        self._history_bytes = 0
        self._history_floor = 0
        self._watches: set[QueueWatch] = set()
        self._subscribers: list[Callable[[Change], None]] = []
        self._action_keys: set[ActionKey] = set()
        self._reservations: dict[str, Reservation] = {}  # authoritative: only this engine writes the database
        self._ops: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._writer_task: asyncio.Task | None = None
        self._write_db: sqlite3.Connection | None = None  # used only in the writer thread
        self._write_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conn: aiosqlite.Connection | None = None
        self.batches_committed = 0
        self.storage_error: str | None = None

    def location(self) -> str:
        return self.path

    @property
    def history_bytes(self) -> int:
        """Bytes of TaskAction bodies the watch history keeps (for resuming watches), at most the cap."""
        return self._history_bytes

    @property
    def history_bytes_cap(self) -> int:
        return self._history_bytes_cap

    # ----------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self.read_only:
            await self._start_read_only()
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._write_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        loop = asyncio.get_running_loop()
        rv, bodies, keys, reservations = await loop.run_in_executor(self._write_thread, self._open_writer)
        self._rv = rv
        self._reservations = {r.key: r for r in reservations}
        self._resting.open(self.path)
        for body in bodies:
            obj = TaskAction.from_json(body)
            if can_rest(obj):
                self._resting.put(obj, cache=False)
            else:
                self._objects[obj.name] = obj
            self._index(obj)
            self._rv = max(self._rv, int(obj.metadata.resource_version or 0))
        self._action_keys = keys
        self._history_floor = self._rv
        self._read_conn = await aiosqlite.connect(self.path, isolation_level=None)
        self._read_conn.row_factory = sqlite3.Row
        await self._read_conn.execute_fetchall("PRAGMA busy_timeout=5000")
        self._writer_task = asyncio.create_task(self._writer_loop(), name="store-writer")

    def _open_writer(self) -> tuple[int, list[str], set[ActionKey], list[Reservation]]:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000", "foreign_keys=OFF"):
            conn.execute(f"PRAGMA {pragma}")
        conn.executescript(SCHEMA)
        for table, column, declaration in MIGRATIONS:
            if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._write_db = conn
        row = conn.execute("SELECT value FROM meta WHERE key = 'resource_version'").fetchone()
        bodies = [body for (body,) in conn.execute("SELECT body FROM taskactions")]
        keys = {tuple(r) for r in conn.execute("SELECT project, domain, run_name, name FROM actions")}
        reservations = [Reservation(*r) for r in conn.execute(
            "SELECT key, owner_id, expires_at, heartbeat_seconds FROM cache_reservations")]
        return (int(row[0]) if row else 0), bodies, keys, reservations  # type: ignore[return-value]

    async def _start_read_only(self) -> None:
        """A reader beside (or without) a live engine: no writer, no schema changes."""
        conn = await aiosqlite.connect(f"file:{self.path}?mode=ro", uri=True, isolation_level=None) \
            if Path(self.path).exists() else await aiosqlite.connect(":memory:", isolation_level=None)
        conn.row_factory = sqlite3.Row
        if not Path(self.path).exists():
            await conn.executescript(SCHEMA)
        await conn.execute("PRAGMA busy_timeout=5000")
        async with conn.execute("SELECT body FROM taskactions") as cur:
            async for row in cur:
                obj = TaskAction.from_json(row[0])
                self._objects[obj.name] = obj
        self._read_conn = conn

    async def close(self) -> None:
        if self._writer_task is not None:
            await self._ops.put(None)
            await self._writer_task
            self._writer_task = None
        for watch in list(self._watches):
            watch.queue.put_nowait(None)
        self._watches.clear()
        if self._read_conn is not None:
            await self._read_conn.close()
            self._read_conn = None
        if self._write_db is not None:
            db, self._write_db = self._write_db, None
            await asyncio.get_running_loop().run_in_executor(self._write_thread, db.close)
        if self._write_thread is not None:
            self._write_thread.shutdown(wait=True)
            self._write_thread = None
        self._resting.close()

    # ----------------------------------------------------------------- writer
    async def _submit(self, apply: Callable[[_Batch], Any]) -> Any:
        if self._writer_task is None:
            raise StorageUnavailableError("store is not running")
        future = asyncio.get_running_loop().create_future()
        self._ops.put_nowait(_Op(apply, future))
        return await future

    async def _writer_loop(self) -> None:
        stopping = False
        while not stopping:
            op = await self._ops.get()
            if op is None:
                break
            ops = [op]
            while len(ops) < self.max_batch and not self._ops.empty():
                nxt = self._ops.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                ops.append(nxt)
            await self._commit(ops)

    async def _commit(self, ops: list[_Op]) -> None:
        batch = _Batch(self)
        results: list[tuple[_Op, Any, BaseException | None]] = []
        for op in ops:
            if op.future.cancelled():
                continue
            try:
                results.append((op, op.apply(batch), None))
            except Exception as exc:  # a refused op fails alone; the batch goes on
                results.append((op, None, exc))
        try:
            await self._execute(batch)
        except (sqlite3.Error, OSError) as exc:
            first = self.storage_error is None
            self.storage_error = f"{type(exc).__name__}: {exc}"
            log.error("storage write failed, batch of %d ops not applied: %s", len(ops), exc)
            if first:
                self._publish(StorageChanged(self.storage_error))
            error = StorageUnavailableError(self.storage_error)
            for op, _, _ in results:
                if not op.future.done():
                    op.future.set_exception(error)
            return
        if self.storage_error is not None:
            self.storage_error = None
            log.warning("storage accepts writes again")
            self._publish(StorageChanged(None))
        self.batches_committed += 1
        self._apply_committed(batch)
        for op, result, exc in results:
            if op.future.done():
                continue
            if exc is not None:
                op.future.set_exception(exc)
            else:
                op.future.set_result(result)

    async def _execute(self, batch: _Batch) -> None:
        statements: dict[str, list[Any]] = {}
        for statement, params in batch.statements:
            statements.setdefault(statement, []).append(params)
        upserts = []
        for name, obj in batch.staged.items():
            if obj is not None:
                body = batch.bodies[id(obj)] = obj.to_json()
                upserts.append((name, obj.metadata.namespace, int(obj.metadata.resource_version or 0), body))
        removals = [(name,) for name, obj in batch.staged.items() if obj is None]
        if not statements and not upserts and not removals:
            return
        work: list[tuple[str, list[Any]]] = []
        if upserts:
            work.append((_UPSERT_OBJECT, upserts))
        if removals:
            work.append((_DELETE_OBJECT, removals))
        if batch.rv != self._rv:
            work.append((_SAVE_RV, [(str(batch.rv),)]))
        work.extend(statements.items())
        loop = asyncio.get_running_loop()
        if self.inline_commits:
            self._write_batch(work)
        else:
            await loop.run_in_executor(self._write_thread, self._write_batch, work)

    def _write_batch(self, work: list[tuple[str, list[Any]]]) -> None:
        """One transaction, in the writer thread: one thread hop per batch, not per statement."""
        conn = self._write_db
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement, rows in work:
                conn.executemany(statement, rows)
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise

    def _apply_committed(self, batch: _Batch) -> None:
        for name, obj in batch.staged.items():
            old = self._objects.pop(name, None)
            resting = self._resting.pop(name)
            if old is not None:
                self._unindex(old)
            elif resting is not None:
                self._unindex_uids(name, resting.owner_uids)
            if obj is not None:
                if can_rest(obj):
                    self._resting.put(obj)
                else:
                    self._objects[name] = obj
                self._index(obj)
        self._rv = batch.rv
        self._action_keys.update(batch.new_action_keys)
        for key, reservation in batch.reservations.items():
            if reservation is None:
                self._reservations.pop(key, None)
            else:
                self._reservations[key] = reservation
        for event in batch.watch_events:
            body = batch.bodies.get(id(event.object))
            if body is None:
                body = event.object.to_json()
            self._history.append((event.type, int(event.resource_version), body))
            self._history_bytes += len(body)
            while len(self._history) > 1 and (len(self._history) > self._history_size
                                              or self._history_bytes > self._history_bytes_cap):
                _, self._history_floor, dropped = self._history.popleft()
                self._history_bytes -= len(dropped)
            for watch in self._watches:
                watch.queue.put_nowait(event)
        if batch.changed_actions:
            self._publish(ActionsChanged(tuple(batch.changed_actions), tuple(batch.status_updates)))
        if batch.new_events:
            self._publish(EventsRecorded(tuple(batch.new_events)))

    def _publish(self, change: Change) -> None:
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:  # a broken subscriber must not break the writer
                log.exception("store subscriber failed")

    def _index(self, obj: TaskAction) -> None:
        for ref in obj.metadata.owner_references:
            self._dependents[ref.uid].add(obj.name)

    def _unindex(self, obj: TaskAction) -> None:
        self._unindex_uids(obj.name, tuple(ref.uid for ref in obj.metadata.owner_references))

    def _unindex_uids(self, name: str, owner_uids: tuple[str, ...]) -> None:
        for uid in owner_uids:
            names = self._dependents.get(uid)
            if names is not None:
                names.discard(name)
                if not names:
                    del self._dependents[uid]

    def _lookup(self, name: str) -> TaskAction | None:
        obj = self._objects.get(name)
        return obj if obj is not None else self._resting.get(name)

    # ----------------------------------------------------------------- resources
    @property
    def resource_version(self) -> str:
        return str(self._rv)  # a counter inside; opaque outside, as the Kubernetes store's

    async def get(self, name: str) -> TaskAction:
        obj = self._lookup(name)
        if obj is None:
            raise NotFoundError(f"taskaction {name!r} not found")
        return obj.copy_deep()

    def peek(self, name: str) -> TaskAction | None:
        return self._lookup(name)

    async def list(self, selector: dict[str, str | None] | None = None) -> list[TaskAction]:
        live = [obj.copy_deep() for obj in self._objects.values() if labels_match(obj.metadata.labels, selector)]
        resting = [self._resting.get(name) for name in
                   self._resting.names_matching(lambda labels: labels_match(labels, selector))]
        return live + [obj.copy_deep() for obj in resting if obj is not None]

    @property
    def live_objects(self) -> int:
        return len(self._objects)

    @property
    def resting_objects(self) -> int:
        return len(self._resting)

    async def create(self, obj: TaskAction) -> TaskAction:
        new = obj.copy_deep()
        return _refresh(obj, await self._submit(lambda batch: self._op_create(batch, new)))

    def _op_create(self, batch: _Batch, obj: TaskAction) -> TaskAction:
        if batch.lookup(obj.name) is not None:
            raise AlreadyExistsError(f"taskaction {obj.name!r} already exists")
        for ref in obj.metadata.owner_references:
            owner = batch.lookup(ref.name)
            if owner is None or owner.metadata.uid != ref.uid or owner.metadata.deletion_timestamp is not None:
                raise OwnerGoneError(f"owner {ref.name!r} of {obj.name!r} is gone or being deleted")
        obj.metadata.uid = obj.metadata.uid or str(uuid.uuid4())
        obj.metadata.creation_timestamp = obj.metadata.creation_timestamp or batch.now
        obj.metadata.generation = 1
        obj.metadata.deletion_timestamp = None
        return batch.stage(obj, "ADDED")

    def _checked_current(self, batch: _Batch, obj: TaskAction) -> TaskAction:
        current = batch.lookup(obj.name)
        if current is None:
            raise NotFoundError(f"taskaction {obj.name!r} not found")
        if obj.metadata.resource_version != current.metadata.resource_version:
            raise ConflictError(
                f"taskaction {obj.name!r}: resourceVersion {obj.metadata.resource_version} is stale "
                f"(current {current.metadata.resource_version})"
            )
        return current

    async def update(self, obj: TaskAction) -> TaskAction:
        new = obj.copy_deep()
        committed = await self._submit(lambda batch: self._op_update(batch, new))
        obj.status = committed.status.copy_deep()
        return _refresh(obj, committed)

    def _op_update(self, batch: _Batch, obj: TaskAction) -> TaskAction:
        current = self._checked_current(batch, obj)
        # Immutable and server-owned fields come from the current object; status is a subresource.
        obj.metadata.uid = current.metadata.uid
        obj.metadata.creation_timestamp = current.metadata.creation_timestamp
        obj.metadata.deletion_timestamp = current.metadata.deletion_timestamp
        obj.status = current.status.copy_deep()
        if obj.spec != current.spec:
            obj.metadata.generation = current.metadata.generation + 1
        else:
            obj.metadata.generation = current.metadata.generation
        if obj.metadata.deletion_timestamp is not None and not obj.metadata.finalizers:
            batch.stage_removal(obj)
            self._cascade(batch, obj)
            return obj
        return batch.stage(obj, "MODIFIED")

    async def update_status(self, obj: TaskAction, events: list[EventRecord] | None = None,
                            labels: dict[str, str] | None = None) -> TaskAction:
        new_status = obj.status.copy_deep()
        name, rv = obj.name, obj.metadata.resource_version
        committed = await self._submit(lambda batch: self._op_update_status(batch, name, rv, new_status, events, labels))
        if labels:
            obj.metadata.labels.update(labels)
        return _refresh(obj, committed)

    def _op_update_status(self, batch: _Batch, name: str, rv: str, status, events=None, labels=None) -> TaskAction:
        current = batch.lookup(name)
        if current is None:
            raise NotFoundError(f"taskaction {name!r} not found")
        if rv != current.metadata.resource_version:
            raise ConflictError(f"taskaction {name!r}: resourceVersion {rv} is stale")
        if events:
            self._op_record_events(batch, events)
        new = current.model_copy()
        new.metadata = current.metadata.copy_deep()
        new.status = status
        if labels:
            new.metadata.labels.update(labels)
        return batch.stage(new, "MODIFIED")

    async def patch_labels(self, name: str, labels: dict[str, str]) -> str:
        return (await self._submit(lambda batch: self._op_patch_labels(batch, name, labels))).resource_version

    def _op_patch_labels(self, batch: _Batch, name: str, labels: dict[str, str]) -> TaskAction:
        current = batch.lookup(name)
        if current is None:
            raise NotFoundError(f"taskaction {name!r} not found")
        if all(current.metadata.labels.get(k) == v for k, v in labels.items()):
            return current
        new = current.model_copy()
        new.metadata = current.metadata.copy_deep()
        new.metadata.labels.update(labels)
        return batch.stage(new, "MODIFIED")

    async def delete(self, name: str) -> None:
        await self._submit(lambda batch: self._op_delete(batch, name, must_exist=True))

    def _op_delete(self, batch: _Batch, name: str, must_exist: bool) -> None:
        current = batch.lookup(name)
        if current is None:
            if must_exist:
                raise NotFoundError(f"taskaction {name!r} not found")
            return
        if current.metadata.finalizers:
            if current.metadata.deletion_timestamp is None:
                new = current.model_copy()
                new.metadata = current.metadata.copy_deep()
                new.metadata.deletion_timestamp = batch.now
                batch.stage(new, "MODIFIED")
        else:
            batch.stage_removal(current)
        self._cascade(batch, current)

    def _cascade(self, batch: _Batch, owner: TaskAction) -> None:
        """Owner-reference garbage collection: every dependent is deleted too."""
        for child in batch.dependents_of(owner.metadata.uid):
            child_obj = batch.lookup(child)
            if child_obj is not None and child_obj.metadata.deletion_timestamp is None:
                self._op_delete(batch, child, must_exist=False)

    def watch(self, since_resource_version: str | None = None) -> AsyncIterator[WatchEvent]:
        since = None
        if since_resource_version is not None:
            text = str(since_resource_version)
            if not text.isdigit() or len(text) > 19:
                raise GoneError(f"resourceVersion {text!r} is not one this store gave out; list again")
            since = int(text)
        if since is not None and since < self._history_floor:
            raise GoneError(
                f"resourceVersion {since} is older than the retained history "
                f"({self._history_floor}); list again"
            )
        watch = QueueWatch(self._watches)
        if since is not None:
            for event_type, rv, body in self._history:
                if rv > since:
                    watch.queue.put_nowait(WatchEvent(event_type, TaskAction.from_json(body), str(rv)))  # type: ignore[arg-type]
        self._watches.add(watch)
        return watch

    # ----------------------------------------------------------------- runs data
    async def create_run_action(
        self, record: ActionRecord, task_action: TaskAction | None, task_spec: tuple[str, bytes] | None
    ) -> TaskAction | None:
        new = task_action.copy_deep() if task_action is not None else None
        created = await self._submit(lambda batch: self._op_create_run_action(batch, record, new, task_spec))
        return _refresh(task_action, created) if created is not None else None

    def _op_create_run_action(self, batch: _Batch, record, task_action, task_spec) -> TaskAction | None:
        if batch.action_exists(record.key):
            raise AlreadyExistsError(f"action {record.run_name}/{record.name} already exists")
        created = None
        if task_action is not None:
            created = self._op_create(batch, task_action)
        if task_spec is not None:
            batch.sql("INSERT OR IGNORE INTO task_specs (digest, spec) VALUES (?, ?)", task_spec)
        batch.sql(_INSERT_ACTION, tuple(getattr(record, c) for c in _ACTION_COLUMNS))
        batch.changed_actions[record.key] = None
        batch.new_action_keys.add(record.key)
        return created

    async def probe(self) -> bool:
        def apply(batch: _Batch) -> None:
            batch.sql("INSERT INTO meta (key, value) VALUES ('probe', ?) ON CONFLICT(key) DO UPDATE SET "
                      "value = excluded.value", (str(time.time()),))

        try:
            await self._submit(apply)
        except StorageUnavailableError:
            return False
        return True

    async def restart_action(self, key: ActionKey, attempts: int, task_action: TaskAction,
                             events: list[EventRecord]) -> None:
        new = task_action.copy_deep()

        def apply(batch: _Batch) -> TaskAction:
            self._op_reset_action(batch, key, attempts)
            created = self._op_create(batch, new)
            self._op_record_events(batch, events)
            return created

        _refresh(task_action, await self._submit(apply))

    def _op_reset_action(self, batch: _Batch, key: ActionKey, attempts: int) -> None:
        if not batch.action_exists(key):
            raise NotFoundError(f"action {'/'.join(key)} does not exist")
        batch.sql(
            "UPDATE actions SET phase = ?, attempts = ?, updated_at = ?, ended_at = NULL, duration_ms = NULL, "
            "error_kind = NULL, error_code = NULL, error_message = NULL, abort_requested_at = NULL, "
            "abort_reason = NULL WHERE project = ? AND domain = ? AND run_name = ? AND name = ?",
            (int(ActionPhase.QUEUED), attempts, time.time(), *key))
        batch.changed_actions[key] = None

    # ----------------------------------------------------------------- the outbox (resources kept elsewhere)
    async def outbox_create_run_action(self, record: ActionRecord, resource: TaskAction | None,
                                       task_spec: tuple[str, bytes] | None) -> None:
        body = resource.to_json() if resource is not None else None

        def apply(batch: _Batch) -> None:
            self._op_create_run_action(batch, record, None, task_spec)
            if body is not None:
                batch.sql(_OUTBOX_PUT, (resource.name, body, time.time()))

        await self._submit(apply)

    async def outbox_restart_action(self, key: ActionKey, attempts: int, resource: TaskAction,
                                    events: list[EventRecord]) -> None:
        body = resource.to_json()

        def apply(batch: _Batch) -> None:
            self._op_reset_action(batch, key, attempts)
            self._op_record_events(batch, events)
            batch.sql(_OUTBOX_PUT, (resource.name, body, time.time()))

        await self._submit(apply)

    async def outbox_pending(self) -> list[TaskAction]:
        rows = await self._fetchall("SELECT body FROM resource_outbox ORDER BY created_at, name")
        return [TaskAction.from_json(row["body"]) for row in rows]

    async def outbox_done(self, name: str) -> None:
        await self._submit(lambda batch: batch.sql("DELETE FROM resource_outbox WHERE name = ?", (name,)))

    async def update_action_status(self, update: ActionStatusUpdate) -> None:
        await self._submit(lambda batch: self._op_update_action_status(batch, update))

    def _op_update_action_status(self, batch: _Batch, update: ActionStatusUpdate) -> None:
        project, domain, run_name, name = update.key
        batch.sql(
            _UPDATE_ACTION_STATUS,
            {
                "project": project, "domain": domain, "run_name": run_name, "name": name,
                "phase": int(update.phase), "attempts": update.attempts, "cache_status": update.cache_status,
                "now": time.time(), "start_time": update.start_time, "end_time": update.end_time,
                "terminal": ActionPhase(update.phase) in TERMINAL_ACTION_PHASES,
                "error_kind": update.error_kind, "error_code": update.error_code,
                "error_message": update.error_message,
            },
        )
        batch.changed_actions[update.key] = None
        batch.status_updates.append(update)

    async def mark_abort_requested(self, key: ActionKey, reason: str, when: float) -> None:
        def apply(batch: _Batch) -> None:
            batch.sql(
                "UPDATE actions SET abort_requested_at = COALESCE(abort_requested_at, ?), abort_reason = ?, "
                "updated_at = ? WHERE project = ? AND domain = ? AND run_name = ? AND name = ?",
                (when, reason, when, *key),
            )
            batch.changed_actions[key] = None

        await self._submit(apply)

    async def record_events(self, events: list[EventRecord]) -> None:
        if events:
            await self._submit(lambda batch: self._op_record_events(batch, events))

    def _op_record_events(self, batch: _Batch, events: list[EventRecord]) -> None:
        for event in events:
            batch.sql(_INSERT_EVENT, tuple(getattr(event, c) for c in _EVENT_COLUMNS))
        batch.new_events.extend(events)

    async def _fetchall(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        if self._read_conn is None:
            raise StorageUnavailableError("the store is closed")
        # One hop: execute and fetch in the same job. Two hops let another read run while this statement is
        # still active, and it would then share this statement's (older) snapshot: a missed write.
        try:
            return list(await self._read_conn.execute_fetchall(sql, params))
        except sqlite3.OperationalError as exc:
            if self.read_only and "no such table" in str(exc):
                return []  # a database an older engine made, read without migrating it: that table is empty
            raise

    async def get_action(self, key: ActionKey) -> ActionRecord | None:
        rows = await self._fetchall(
            "SELECT * FROM actions WHERE project = ? AND domain = ? AND run_name = ? AND name = ?", key
        )
        return _row_to_action(rows[0]) if rows else None

    async def find_run(self, run_name: str) -> ActionRecord | None:
        rows = await self._fetchall(
            "SELECT * FROM actions WHERE run_name = ? AND parent_action_name IS NULL ORDER BY created_at DESC",
            (run_name,),
        )
        return _row_to_action(rows[0]) if rows else None

    async def list_runs(self, limit: int = 200) -> list[ActionRecord]:
        rows = await self._fetchall(
            "SELECT * FROM actions WHERE parent_action_name IS NULL ORDER BY created_at DESC LIMIT ?", (limit,)
        )
        return [_row_to_action(r) for r in rows]

    async def list_actions(self, project: str, domain: str, run_name: str) -> list[ActionRecord]:
        rows = await self._fetchall(
            "SELECT * FROM actions WHERE project = ? AND domain = ? AND run_name = ? ORDER BY created_at, name",
            (project, domain, run_name),
        )
        return [_row_to_action(r) for r in rows]

    async def get_actions(self, project: str, domain: str, run_name: str, names: list[str]) -> list[ActionRecord]:
        found: list[ActionRecord] = []
        for i in range(0, len(names), 500):  # under SQLite's bound-parameter limit
            chunk = names[i:i + 500]
            rows = await self._fetchall(
                f"SELECT * FROM actions WHERE project = ? AND domain = ? AND run_name = ? "
                f"AND name IN ({', '.join('?' * len(chunk))})", (project, domain, run_name, *chunk))
            found += [_row_to_action(r) for r in rows]
        return found

    async def list_events(self, key: ActionKey) -> list[EventRecord]:
        rows = await self._fetchall(
            "SELECT * FROM action_events WHERE project = ? AND domain = ? AND run_name = ? AND name = ? "
            "ORDER BY attempt, reported_time, phase, version",
            key,
        )
        return [_row_to_event(r) for r in rows]

    async def integrity_check(self) -> str:
        rows = await self._fetchall("PRAGMA integrity_check")
        return "; ".join(str(r[0]) for r in rows)

    async def phase_counts(self, run: tuple[str, str, str] | None = None) -> dict[int, int]:
        if run is None:
            rows = await self._fetchall(
                "SELECT phase, COUNT(*) FROM actions WHERE parent_action_name IS NULL GROUP BY phase")
        else:
            rows = await self._fetchall(
                "SELECT phase, COUNT(*) FROM actions WHERE project = ? AND domain = ? AND run_name = ? "
                "GROUP BY phase", run)
        return {int(phase): int(count) for phase, count in rows}

    async def paused_conditions(self, run_names: list[str] | None = None) -> list[tuple[str, str, str]]:
        sql = (f"SELECT run_name, name, COALESCE(short_name, name) FROM actions WHERE phase = "
               f"{int(ActionPhase.PAUSED)} AND action_type = {ACTION_TYPE_CONDITION}")
        if run_names is None:
            return [tuple(r) for r in await self._fetchall(sql + " ORDER BY run_name, name")]
        found: list[tuple[str, str, str]] = []
        for i in range(0, len(run_names), 500):
            chunk = run_names[i:i + 500]
            found += [tuple(r) for r in await self._fetchall(
                f"{sql} AND run_name IN ({', '.join('?' * len(chunk))}) ORDER BY run_name, name", chunk)]
        return found

    async def get_task_spec(self, digest: str) -> bytes | None:
        rows = await self._fetchall("SELECT spec FROM task_specs WHERE digest = ?", (digest,))
        return bytes(rows[0][0]) if rows else None

    # ----------------------------------------------------------------- task cache
    async def cache_get(self, key: str) -> CacheEntry | None:
        rows = await self._fetchall("SELECT * FROM cache_entries WHERE key = ?", (key,))
        return CacheEntry(**{k: rows[0][k] for k in _CACHE_COLUMNS}) if rows else None

    async def cache_put(self, entry: CacheEntry) -> None:
        await self._submit(lambda batch: batch.sql(_INSERT_CACHE_ENTRY, tuple(getattr(entry, c) for c in _CACHE_COLUMNS)))

    async def cache_list(self, task_name: str | None = None, limit: int = 1000) -> list[CacheEntry]:
        if task_name is None:
            rows = await self._fetchall("SELECT * FROM cache_entries ORDER BY created_at DESC LIMIT ?", (limit,))
        else:
            rows = await self._fetchall("SELECT * FROM cache_entries WHERE task_name = ? ORDER BY created_at DESC "
                                        "LIMIT ?", (task_name, limit))
        return [CacheEntry(**{k: r[k] for k in _CACHE_COLUMNS}) for r in rows]

    async def cache_delete(self, keys: list[str] | None = None, task_name: str | None = None) -> int:
        if keys is not None:
            found = []
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                found += [r[0] for r in await self._fetchall(
                    f"SELECT key FROM cache_entries WHERE key IN ({', '.join('?' * len(chunk))})", chunk)]
        elif task_name is not None:
            found = [r[0] for r in await self._fetchall("SELECT key FROM cache_entries WHERE task_name = ?",
                                                        (task_name,))]
        else:
            found = [r[0] for r in await self._fetchall("SELECT key FROM cache_entries")]

        def apply(batch: _Batch) -> None:
            for key in found:
                batch.sql("DELETE FROM cache_entries WHERE key = ?", (key,))

        if found:
            await self._submit(apply)
        return len(found)

    # ----------------------------------------------------------------- registered tasks
    async def task_register(self, task: TaskRecord) -> TaskRecord:
        existing = await self.task_get(task.project, task.domain, task.name, task.version)
        if existing is not None:
            return existing
        await self._submit(lambda batch: batch.sql(
            "INSERT OR IGNORE INTO tasks (project, domain, name, version, digest, spec, bundle, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (task.project, task.domain, task.name, task.version, task.digest,
                                                task.spec, task.bundle, task.created_at)))
        return await self.task_get(task.project, task.domain, task.name, task.version) or task

    async def task_get(self, project: str, domain: str, name: str, version: str | None = None) -> TaskRecord | None:
        columns = "project, domain, name, version, digest, spec, bundle, created_at"
        if version:
            rows = await self._fetchall(f"SELECT {columns} FROM tasks WHERE project = ? AND domain = ? AND name = ? "
                                        "AND version = ?", (project, domain, name, version))
        else:
            rows = await self._fetchall(f"SELECT {columns} FROM tasks WHERE project = ? AND domain = ? AND name = ? "
                                        "ORDER BY created_at DESC LIMIT 1", (project, domain, name))
        return _task(rows[0]) if rows else None

    async def task_list(self, project: str | None = None, domain: str | None = None) -> list[TaskRecord]:
        columns = "project, domain, name, version, digest, '' AS spec, bundle, created_at"
        sql, params = f"SELECT {columns} FROM tasks", ()
        if project is not None:
            sql, params = sql + " WHERE project = ? AND domain = ?", (project, domain or "")
        rows = await self._fetchall(sql + " ORDER BY project, domain, name, created_at", params)
        return [_task(r) for r in rows]

    # ----------------------------------------------------------------- triggers
    _TRIGGER_COLUMNS = "project, domain, name, task_name, task_version, spec, active, revision, cursor, updated_at"

    async def _trigger(self, project: str, domain: str, name: str) -> TriggerRecord | None:
        rows = await self._fetchall(f"SELECT {self._TRIGGER_COLUMNS} FROM triggers WHERE project = ? AND domain = ? "
                                    "AND name = ?", (project, domain, name))
        return _trigger(rows[0]) if rows else None

    async def trigger_put(self, project: str, domain: str, name: str, task_name: str, task_version: str, spec: bytes,
                          active: bool, now: float) -> TriggerRecord:
        current = await self._trigger(project, domain, name)
        if current is not None and (current.spec, current.task_name, current.task_version) == \
                (spec, task_name, task_version):
            return current  # deployed again unchanged: no new revision
        revision = (current.revision if current else 0) + 1
        cursor = current.cursor if current is not None and current.active else now
        record = TriggerRecord(project, domain, name, task_name, task_version, spec, active, revision, cursor, now)

        def apply(batch: _Batch) -> None:
            batch.sql(f"INSERT INTO triggers ({self._TRIGGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                      "ON CONFLICT(project, domain, name) DO UPDATE SET task_name = excluded.task_name, "
                      "task_version = excluded.task_version, spec = excluded.spec, active = excluded.active, "
                      "revision = excluded.revision, cursor = excluded.cursor, updated_at = excluded.updated_at",
                      (project, domain, name, task_name, task_version, spec, int(active), revision, cursor, now))
            batch.sql("INSERT INTO trigger_history (project, domain, name, at, revision, text) VALUES (?, ?, ?, ?, ?, ?)",
                      (project, domain, name, now, revision,
                       f"deployed for {task_name} {task_version}, {'active' if active else 'inactive'}"))

        await self._submit(apply)
        return record

    async def trigger_set_active(self, project: str, domain: str, name: str, active: bool,
                                 now: float) -> TriggerRecord | None:
        current = await self._trigger(project, domain, name)
        if current is None:
            return None
        if current.active == active:
            return current
        revision = current.revision + 1
        cursor = now if active else current.cursor

        def apply(batch: _Batch) -> None:
            batch.sql("UPDATE triggers SET active = ?, revision = ?, cursor = ?, updated_at = ? WHERE project = ? AND "
                      "domain = ? AND name = ?", (int(active), revision, cursor, now, project, domain, name))
            batch.sql("INSERT INTO trigger_history (project, domain, name, at, revision, text) VALUES (?, ?, ?, ?, ?, ?)",
                      (project, domain, name, now, revision, "activated" if active else "deactivated"))

        await self._submit(apply)
        return dataclasses.replace(current, active=active, revision=revision, cursor=cursor, updated_at=now)

    async def trigger_list(self, project: str | None = None, domain: str | None = None) -> list[TriggerRecord]:
        sql, params = f"SELECT {self._TRIGGER_COLUMNS} FROM triggers", ()
        if project is not None:
            sql, params = sql + " WHERE project = ? AND domain = ?", (project, domain or "")
        return [_trigger(r) for r in await self._fetchall(sql + " ORDER BY project, domain, name", params)]

    async def trigger_advance(self, project: str, domain: str, name: str, cursor: float) -> None:
        await self._submit(lambda batch: batch.sql(
            "UPDATE triggers SET cursor = MAX(cursor, ?) WHERE project = ? AND domain = ? AND name = ?",
            (cursor, project, domain, name)))

    async def trigger_note(self, project: str, domain: str, name: str, text: str, now: float) -> None:
        await self._submit(lambda batch: batch.sql(
            "INSERT INTO trigger_history (project, domain, name, at, revision, text) VALUES (?, ?, ?, ?, NULL, ?)",
            (project, domain, name, now, text)))

    async def trigger_history(self, project: str, domain: str, name: str) -> list[dict]:
        rows = await self._fetchall("SELECT at, revision, text FROM trigger_history WHERE project = ? AND domain = ? "
                                    "AND name = ? ORDER BY rowid", (project, domain, name))
        return [{"at": r[0], "revision": r[1], "text": r[2]} for r in rows]

    # ----------------------------------------------------------------- projects
    async def project_create(self, project: ProjectRecord) -> bool:
        if await self.project_get(project.id) is not None:
            return False
        await self._submit(lambda batch: batch.sql(
            "INSERT OR IGNORE INTO projects (id, name, description, domains, created_at) VALUES (?, ?, ?, ?, ?)",
            (project.id, project.name, project.description, json.dumps(list(project.domains)), project.created_at)))
        return True

    async def project_get(self, project_id: str) -> ProjectRecord | None:
        rows = await self._fetchall("SELECT id, name, description, domains, created_at FROM projects WHERE id = ?",
                                    (project_id,))
        return _project(rows[0]) if rows else None

    async def project_list(self) -> list[ProjectRecord]:
        rows = await self._fetchall("SELECT id, name, description, domains, created_at FROM projects ORDER BY id")
        return [_project(r) for r in rows]

    # ----------------------------------------------------------------- secrets (values encrypted by the caller)
    async def secret_put(self, project: str, domain: str, name: str, ciphertext: bytes, now: float) -> SecretInfo:
        rows = await self._fetchall("SELECT created_at FROM secrets WHERE project = ? AND domain = ? AND name = ?",
                                    (project, domain, name))
        created = rows[0][0] if rows else now
        await self._submit(lambda batch: batch.sql(
            "INSERT INTO secrets (project, domain, name, ciphertext, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(project, domain, name) DO UPDATE SET ciphertext = excluded.ciphertext, "
            "updated_at = excluded.updated_at", (project, domain, name, ciphertext, created, now)))
        return SecretInfo(name, project, domain, created, now)

    async def secret_get(self, project: str, domain: str, name: str) -> bytes | None:
        rows = await self._fetchall("SELECT ciphertext FROM secrets WHERE project = ? AND domain = ? AND name = ?",
                                    (project, domain, name))
        return bytes(rows[0][0]) if rows else None

    async def secret_delete(self, project: str, domain: str, name: str) -> bool:
        if await self.secret_get(project, domain, name) is None:
            return False
        await self._submit(lambda batch: batch.sql(
            "DELETE FROM secrets WHERE project = ? AND domain = ? AND name = ?", (project, domain, name)))
        return True

    async def secret_list(self, project: str | None = None, domain: str | None = None) -> list[SecretInfo]:
        sql = "SELECT name, project, domain, created_at, updated_at FROM secrets"
        params: tuple = ()
        if project is not None:
            sql += " WHERE (project = '' AND domain = '') OR (project = ? AND (domain = '' OR domain = ?))"
            params = (project, domain or "")
        rows = await self._fetchall(sql + " ORDER BY project, domain, name", params)
        return [SecretInfo(*tuple(r)) for r in rows]

    async def get_or_extend_reservation(self, key: str, owner_id: str, heartbeat_seconds: float,
                                        now: float) -> Reservation:
        def apply(batch: _Batch) -> Reservation:
            current = batch.reservation(key)
            if current is not None and current.owner_id != owner_id and current.expires_at > now:
                return current  # held by another owner that is alive
            granted = Reservation(key, owner_id, now + heartbeat_seconds * RESERVATION_GRACE_MULTIPLIER,
                                  heartbeat_seconds)
            batch.reservations[key] = granted
            batch.sql(_UPSERT_RESERVATION, (key, owner_id, granted.expires_at, heartbeat_seconds))
            return granted

        return await self._submit(apply)

    async def release_reservation(self, key: str, owner_id: str) -> None:
        def apply(batch: _Batch) -> None:
            current = batch.reservation(key)
            if current is not None and current.owner_id == owner_id:
                batch.reservations[key] = None
                batch.sql("DELETE FROM cache_reservations WHERE key = ? AND owner_id = ?", (key, owner_id))

        await self._submit(apply)

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe


def _project(row) -> ProjectRecord:
    return ProjectRecord(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4])


def _task(row) -> TaskRecord:
    return TaskRecord(row[0], row[1], row[2], row[3], row[4], bytes(row[5] or b""), row[6], row[7])


def _trigger(row) -> TriggerRecord:
    return TriggerRecord(row[0], row[1], row[2], row[3], row[4], bytes(row[5]), bool(row[6]), row[7], row[8], row[9])
