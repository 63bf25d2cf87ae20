"""The store interface: TaskAction resources (Kubernetes semantics) and the runs data model.

The SQLite store implements it for the embedded default; a Kubernetes-backed store can implement the
resource half against the API server (resourceVersion, label selectors, watch, finalizers and owner
references are all Kubernetes concepts) and the runs half against a database.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import Literal

from engine.errors import AlreadyExistsError, StorageUnavailableError  # noqa: F401 - raised by stores
from engine.model import TaskAction


class StoreError(Exception):
    """Base class of store errors."""


class NotFoundError(StoreError):
    pass




class ConflictError(StoreError):
    """A write carried a stale resourceVersion (HTTP 409 in Kubernetes)."""


class GoneError(StoreError):
    """A watch asked for a resourceVersion older than the retained history (HTTP 410): re-list."""


class OwnerGoneError(StoreError):
    """A child was created under an owner that is missing or being deleted."""




WatchEventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    type: WatchEventType
    object: TaskAction
    resource_version: str  # opaque, as on Kubernetes: compared for equality, or given back to resume a watch


class QueueWatch:
    """A store's watch: the events put on its queue, until None; closing it tells the store to stop."""

    def __init__(self, watches: set):
        self._watches = watches
        self.queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()

    def __aiter__(self) -> QueueWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        event = await self.queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        self._watches.discard(self)


def labels_match(labels: dict[str, str], selector: dict[str, str | None] | None) -> bool:
    """Whether ``labels`` satisfy a store selector (a None value: the label only has to exist)."""
    if not selector:
        return True
    for key, value in selector.items():
        if key not in labels:
            return False
        if value is not None and labels[key] != value:
            return False
    return True


# (project, domain, run_name, action_name)
ActionKey = tuple[str, str, str, str]


@dataclasses.dataclass
class ActionRecord:
    """A row of the actions table; a run is its root action (parent_action_name is None)."""

    project: str
    domain: str
    run_name: str
    name: str
    parent_action_name: str | None = None
    phase: int = 1  # ActionPhase.QUEUED
    action_type: int = 1  # workflow.ActionType: TASK 1, TRACE 2, CONDITION 3
    task_project: str | None = None
    task_domain: str | None = None
    task_name: str | None = None
    task_version: str | None = None
    task_type: str = ""
    short_name: str | None = None
    environment_name: str | None = None
    function_name: str = ""
    action_group: str = ""
    action_spec: bytes | None = None  # serialized workflow.ActionSpec
    task_spec_digest: str | None = None
    run_spec: bytes | None = None
    input_uri: str = ""
    run_output_base: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    ended_at: float | None = None
    duration_ms: int | None = None
    attempts: int = 0
    cache_status: int = 0
    abort_requested_at: float | None = None
    abort_reason: str | None = None
    error_kind: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    cache_key: str | None = None  # the catalog key of a discoverable task (see engine/cache.py)

    @property
    def key(self) -> ActionKey:
        return (self.project, self.domain, self.run_name, self.name)


@dataclasses.dataclass(frozen=True)
class ActionStatusUpdate:
    """UpdateActionStatus: applied only if the monotonic phase guard allows it."""

    key: ActionKey
    phase: int
    attempts: int
    cache_status: int = 0
    start_time: float | None = None
    end_time: float | None = None
    error_kind: str | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclasses.dataclass(frozen=True)
class EventRecord:
    """A row of action_events; unique on (action, attempt, phase, version)."""

    project: str
    domain: str
    run_name: str
    name: str
    attempt: int
    phase: int
    version: int
    info: bytes  # serialized workflow.ActionEvent
    error_kind: str
    updated_time: float
    reported_time: float

    @property
    def key(self) -> ActionKey:
        return (self.project, self.domain, self.run_name, self.name)


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """A catalog entry: the outputs of a succeeded discoverable action, by cache key.

    As in Flyte the entry points at the outputs (their URI); it does not copy them.
    """

    key: str
    project: str  # the task's identity without its version: a new version alone does not bust the cache
    domain: str
    task_name: str
    cache_version: str
    task_version: str
    outputs_uri: str
    run_name: str  # where the outputs came from
    action_name: str
    attempt: int
    created_at: float


@dataclasses.dataclass(frozen=True)
class SecretInfo:
    """What may be shown of a secret: its name, scope and times, never its value."""

    name: str
    project: str  # "" for a global secret
    domain: str  # "" for a project-wide or global secret
    created_at: float
    updated_at: float

    def to_json(self) -> dict:
        return {"name": self.name, "project": self.project or None, "domain": self.domain or None,
                "createdAt": self.created_at, "updatedAt": self.updated_at}


@dataclasses.dataclass(frozen=True)
class ProjectRecord:
    """A project (Flyte's Project): runs, tasks, triggers and secrets each belong to one, in one of its domains."""

    id: str
    name: str
    description: str
    domains: tuple[str, ...]
    created_at: float

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "description": self.description, "domains": list(self.domains),
                "createdAt": self.created_at}


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    """A registered task: project → domain → name → version, its spec, and the code bundle it runs from."""

    project: str
    domain: str
    name: str
    version: str
    digest: str  # of the serialized TaskSpec: one version, one spec
    spec: bytes
    bundle: str  # the stored code bundle (a .tar.gz in the upload store), "" for none
    created_at: float

    def to_json(self) -> dict:
        return {"project": self.project, "domain": self.domain, "name": self.name, "version": self.version,
                "digest": self.digest, "bundle": self.bundle or None, "createdAt": self.created_at}


@dataclasses.dataclass(frozen=True)
class TriggerRecord:
    """A registered task's trigger: its serialized TaskTrigger, whether it is active, its revision, and its
    cursor (the scheduled time it has fired up to, epoch seconds)."""

    project: str
    domain: str
    name: str
    task_name: str
    task_version: str
    spec: bytes
    active: bool
    revision: int
    cursor: float
    updated_at: float

    def to_json(self) -> dict:
        return {"project": self.project, "domain": self.domain, "name": self.name, "task": self.task_name,
                "taskVersion": self.task_version, "active": self.active, "revision": self.revision,
                "cursor": self.cursor, "updatedAt": self.updated_at}


@dataclasses.dataclass(frozen=True)
class Reservation:
    """Who may compute a serializable cache key; the owner extends it with every reconcile."""

    key: str
    owner_id: str
    expires_at: float
    heartbeat_seconds: float


@dataclasses.dataclass(frozen=True)
class ActionsChanged:
    """Published after a commit that touched the actions table.

    ``updates`` are the status updates requested in that commit (the table's guard may have kept an
    earlier phase); read the row for the authoritative state.
    """

    keys: tuple[ActionKey, ...]
    updates: tuple[ActionStatusUpdate, ...] = ()


@dataclasses.dataclass(frozen=True)
class EventsRecorded:
    """Published after a commit that inserted new action events (duplicates are not repeated)."""

    events: tuple[EventRecord, ...]


@dataclasses.dataclass(frozen=True)
class StorageChanged:
    """Published when writes start failing (``error`` set) and when they succeed again (None)."""

    error: str | None


Change = ActionsChanged | EventsRecorded | StorageChanged


class ResourceStore(abc.ABC):
    """TaskAction resources with Kubernetes semantics.

    ``get`` and ``list`` return copies: mutate them freely and write them back. Writes store a copy and
    refresh the caller's object in place (resourceVersion, uid, timestamps; the status too after
    ``update``), as controller-runtime's client does. ``peek`` returns the committed object itself (an
    informer-cache read): treat it as read-only.
    """

    @abc.abstractmethod
    async def create(self, obj: TaskAction) -> TaskAction: ...

    @abc.abstractmethod
    async def get(self, name: str) -> TaskAction: ...

    @abc.abstractmethod
    def peek(self, name: str) -> TaskAction | None:
        """The committed object, read-only, without a copy (None if it does not exist)."""

    @abc.abstractmethod
    async def list(self, selector: dict[str, str | None] | None = None) -> list[TaskAction]:
        """Objects whose labels match; a None value means the label only has to exist."""

    @abc.abstractmethod
    async def update(self, obj: TaskAction) -> TaskAction:
        """Write metadata and spec (not status), checked against ``metadata.resourceVersion``."""

    @abc.abstractmethod
    async def update_status(self, obj: TaskAction, events: list[EventRecord] | None = None,
                            labels: dict[str, str] | None = None) -> TaskAction:
        """Write the status subresource, checked against ``metadata.resourceVersion``.

        ``events`` are recorded first, in the same transaction: a status is never saved without its events.
        ``labels`` are merge-patched after the status (on Kubernetes: a second call, as Flyte does).
        """

    @abc.abstractmethod
    async def patch_labels(self, name: str, labels: dict[str, str]) -> str:
        """Merge-patch labels; no resourceVersion check. Returns the new resourceVersion."""

    @abc.abstractmethod
    async def delete(self, name: str) -> None:
        """Set deletionTimestamp (or remove at once when there is no finalizer); cascades to dependents."""

    @abc.abstractmethod
    def watch(self, since_resource_version: str | None = None) -> AsyncIterator[WatchEvent]:
        """Changes after ``since_resource_version`` (None: from now). Raises GoneError if too old (or not one
        this store gave out): list again."""

    @property
    @abc.abstractmethod
    def resource_version(self) -> str:
        """The store's latest resourceVersion: opaque (a Kubernetes API server's is), to resume a watch from."""


class RunsRepository(abc.ABC):
    """The runs data model: actions (runs are root actions), action events and task specs."""

    @abc.abstractmethod
    async def create_run_action(
        self, record: ActionRecord, task_action: TaskAction | None, task_spec: tuple[str, bytes] | None
    ) -> TaskAction | None:
        """Atomically insert the action row, the task spec and create its TaskAction.

        Raises AlreadyExistsError when the action row exists.
        """

    @abc.abstractmethod
    async def restart_action(self, key: ActionKey, attempts: int, task_action: TaskAction,
                             events: list[EventRecord]) -> None:
        """An operator retry: reset the row to QUEUED with ``attempts`` (past the phase guard), create the
        TaskAction and record ``events``, atomically."""

    @abc.abstractmethod
    async def update_action_status(self, update: ActionStatusUpdate) -> None: ...

    @abc.abstractmethod
    async def mark_abort_requested(self, key: ActionKey, reason: str, when: float) -> None: ...

    @abc.abstractmethod
    async def record_events(self, events: list[EventRecord]) -> None:
        """Insert events; a repeated (action, attempt, phase, version) is ignored."""

    @abc.abstractmethod
    async def get_action(self, key: ActionKey) -> ActionRecord | None: ...

    @abc.abstractmethod
    async def find_run(self, run_name: str) -> ActionRecord | None:
        """The root action of the run with that name, in any project/domain."""

    @abc.abstractmethod
    async def list_runs(self, limit: int = 200) -> list[ActionRecord]: ...

    @abc.abstractmethod
    async def list_actions(self, project: str, domain: str, run_name: str) -> list[ActionRecord]: ...

    @abc.abstractmethod
    async def get_actions(self, project: str, domain: str, run_name: str, names: list[str]) -> list[ActionRecord]:
        """The named actions of one run (those that exist)."""

    @abc.abstractmethod
    async def list_events(self, key: ActionKey) -> list[EventRecord]: ...

    @abc.abstractmethod
    async def phase_counts(self, run: tuple[str, str, str] | None = None) -> dict[int, int]:
        """ActionPhase → count: of runs (root actions), or of the actions of one (project, domain, run)."""

    @abc.abstractmethod
    async def paused_conditions(self, run_names: list[str] | None = None) -> list[tuple[str, str, str]]:
        """(run, action, short name) of every condition waiting for its signal (of those runs)."""

    @abc.abstractmethod
    async def get_task_spec(self, digest: str) -> bytes | None: ...

    @abc.abstractmethod
    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call ``callback`` after each commit that changed runs data; returns an unsubscribe function."""


class CacheStore(abc.ABC):
    """The task cache (Flyte's cache service): entries and serialization reservations."""

    @abc.abstractmethod
    async def cache_get(self, key: str) -> CacheEntry | None: ...

    @abc.abstractmethod
    async def cache_put(self, entry: CacheEntry) -> None:
        """Store an entry; one that exists with that key is kept (Flyte's AlreadyExists, still POPULATED)."""

    @abc.abstractmethod
    async def cache_list(self, task_name: str | None = None, limit: int = 1000) -> list[CacheEntry]: ...

    @abc.abstractmethod
    async def cache_delete(self, keys: list[str] | None = None, task_name: str | None = None) -> int:
        """Evict the given keys, or every entry of a task, or (neither given) every entry. Returns the count."""

    @abc.abstractmethod
    async def get_or_extend_reservation(self, key: str, owner_id: str, heartbeat_seconds: float,
                                        now: float) -> Reservation:
        """Take or extend the reservation: granted to ``owner_id`` when it is free, expired or already
        its own; otherwise the current holder's reservation is returned unchanged."""

    @abc.abstractmethod
    async def release_reservation(self, key: str, owner_id: str) -> None:
        """Drop the reservation if ``owner_id`` holds it; a missing one is fine."""


class SecretsRepository(abc.ABC):
    """Secrets as the store keeps them: encrypted values it cannot read, by (project, domain, name)."""

    @abc.abstractmethod
    async def secret_put(self, project: str, domain: str, name: str, ciphertext: bytes, now: float) -> SecretInfo:
        """Create or replace."""

    @abc.abstractmethod
    async def secret_get(self, project: str, domain: str, name: str) -> bytes | None: ...

    @abc.abstractmethod
    async def secret_delete(self, project: str, domain: str, name: str) -> bool:
        """Whether there was one."""

    @abc.abstractmethod
    async def secret_list(self, project: str | None = None, domain: str | None = None) -> list[SecretInfo]:
        """All secrets (None, None), or those a task of ``project``/``domain`` sees: its scope and the wider ones."""


class ProjectsRepository(abc.ABC):
    @abc.abstractmethod
    async def project_create(self, project: ProjectRecord) -> bool:
        """False when a project with that id exists already (it is left as it is)."""

    @abc.abstractmethod
    async def project_get(self, project_id: str) -> ProjectRecord | None: ...

    @abc.abstractmethod
    async def project_list(self) -> list[ProjectRecord]: ...


class TasksRepository(abc.ABC):
    @abc.abstractmethod
    async def task_register(self, task: TaskRecord) -> TaskRecord:
        """The record stored for (project, domain, name, version): ``task`` when new, else the one there."""

    @abc.abstractmethod
    async def task_get(self, project: str, domain: str, name: str, version: str | None = None) -> TaskRecord | None:
        """That version, or the latest registered (None: no such task)."""

    @abc.abstractmethod
    async def task_list(self, project: str | None = None, domain: str | None = None) -> list[TaskRecord]: ...


class TriggersRepository(abc.ABC):
    @abc.abstractmethod
    async def trigger_put(self, project: str, domain: str, name: str, task_name: str, task_version: str, spec: bytes,
                          active: bool, now: float) -> TriggerRecord:
        """Create (its cursor at ``now``) or update; a change is a new revision in its history."""

    @abc.abstractmethod
    async def trigger_set_active(self, project: str, domain: str, name: str, active: bool,
                                 now: float) -> TriggerRecord | None:
        """A new revision; activating moves the cursor to ``now`` (the inactive time is not caught up)."""

    @abc.abstractmethod
    async def trigger_list(self, project: str | None = None, domain: str | None = None) -> list[TriggerRecord]: ...

    @abc.abstractmethod
    async def trigger_advance(self, project: str, domain: str, name: str, cursor: float) -> None: ...

    @abc.abstractmethod
    async def trigger_note(self, project: str, domain: str, name: str, text: str, now: float) -> None: ...

    @abc.abstractmethod
    async def trigger_history(self, project: str, domain: str, name: str) -> list[dict]:
        """Revisions and what the scheduler did, oldest first."""


class ResourceOutbox(abc.ABC):
    """For TaskActions kept in another store (a Kubernetes API server): the runs database records the
    resource it still has to create in the same transaction as the action row, so a crash between the
    two writes loses neither (the outbox is drained at start)."""

    @abc.abstractmethod
    async def outbox_create_run_action(self, record: ActionRecord, resource: TaskAction | None,
                                       task_spec: tuple[str, bytes] | None) -> None:
        """The action row, its task spec and (if any) its resource to create, atomically. Raises
        AlreadyExistsError when the row exists."""

    @abc.abstractmethod
    async def outbox_restart_action(self, key: ActionKey, attempts: int, resource: TaskAction,
                                    events: list[EventRecord]) -> None:
        """An operator retry: the row reset to QUEUED, ``events`` and the resource to create, atomically."""

    @abc.abstractmethod
    async def outbox_pending(self) -> list[TaskAction]:
        """Resources recorded and not yet marked created, oldest first."""

    @abc.abstractmethod
    async def outbox_done(self, name: str) -> None: ...


class EngineStore(ResourceStore, RunsRepository, CacheStore, SecretsRepository, ProjectsRepository, TasksRepository,
                  TriggersRepository, abc.ABC):
    storage_error: str | None = None  # why the last write failed, until one succeeds

    @abc.abstractmethod
    async def probe(self) -> bool:
        """Try a write; True (and storage_error cleared) when storage accepts writes again."""

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...


class RunsDatabase(RunsRepository, CacheStore, SecretsRepository, ProjectsRepository, TasksRepository,
                   TriggersRepository, ResourceOutbox, abc.ABC):
    """The runs data without the TaskActions: what ``ClusterStore`` keeps beside the API server (SQLite for
    one engine, PostgreSQL for engines that share it)."""

    storage_error: str | None = None

    @abc.abstractmethod
    def location(self) -> str:
        """Where the runs data is, as it may be shown (no password)."""

    @abc.abstractmethod
    async def probe(self) -> bool: ...

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

