"""The engine's store on the Kubernetes backend: TaskActions on the API server, the runs data in a database.

There is no transaction across the two, so each write is ordered and idempotent, and the informer repairs:

- a new action's row (and its task spec) is written with the TaskAction it still has to create in the
  database's outbox, in one transaction; then the resource is created (AlreadyExists: it was) and the
  outbox entry cleared. An engine killed in between creates it at its next start, so neither is lost;
- the actions table follows the resources as Flyte's actions service follows its informer: each change the
  informer sees is turned into table updates (``derive_action_updates``) that the table's monotonic guard
  makes safe to repeat, and the first list at start replays them all, so a change missed while the engine
  was down is caught up;
- a status is written after its events are recorded (a status never saved without its events; events of a
  status write that then conflicts are recorded again by the retry, and ignored as duplicates).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from engine.actions_table import derive_action_updates
from engine.model import TaskAction
from engine.store.base import (
    ActionKey,
    ActionRecord,
    ActionStatusUpdate,
    AlreadyExistsError,
    CacheEntry,
    Change,
    EngineStore,
    EventRecord,
    ProjectRecord,
    Reservation,
    RunsDatabase,
    SecretInfo,
    TaskRecord,
    TriggerRecord,
    WatchEvent,
)
from engine.store.kubernetes import KubernetesResourceStore

log = logging.getLogger(__name__)


class ClusterStore(EngineStore):
    """The store interface over a ``KubernetesResourceStore`` and a runs database with an outbox."""

    def __init__(self, resources: KubernetesResourceStore, runs: RunsDatabase):
        if not isinstance(runs, RunsDatabase):
            raise TypeError("the runs database of the Kubernetes backend must be a RunsDatabase (it keeps an outbox)")
        self.resources = resources
        self.runs = runs
        self._updates: asyncio.Queue[ActionStatusUpdate | None] | None = None
        self._follower: asyncio.Task | None = None
        resources.on_status_write = runs.record_events
        resources.on_change = self._follow

    @property
    def storage_error(self) -> str | None:  # type: ignore[override]
        return self.runs.storage_error

    @property
    def namespace(self) -> str:
        return self.resources.namespace

    def describe(self) -> dict:
        """Where the TaskActions are, for the console's header and `/health`."""
        return {"kind": "kubernetes", "cluster": self.resources.cluster, "namespace": self.namespace,
                "relists": self.resources.relists, "runsDatabase": self.runs.location()}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        await self.runs.start()
        self._updates = asyncio.Queue()
        self._follower = asyncio.create_task(self._apply_updates(), name="actions-table-follower")
        await self.resources.start()
        for pending in await self.runs.outbox_pending():
            log.info("creating %s, recorded before the last engine stopped", pending.name)
            await self._create_resource(pending)

    async def close(self) -> None:
        await self.resources.close()
        if self._updates is not None and self._follower is not None:
            self._updates.put_nowait(None)
            await self._follower
        await self.runs.close()

    async def probe(self) -> bool:
        return await self.runs.probe()

    # ------------------------------------------------------------------ the actions table follows the informer
    def _follow(self, old: TaskAction | None, new: TaskAction | None) -> None:
        parent = None
        if old is None and new is not None and new.metadata.owner_references:
            parent = self.resources.peek(new.metadata.owner_references[0].name)
        for update in derive_action_updates(old, new, parent):
            if self._updates is not None:
                self._updates.put_nowait(update)

    async def _apply_updates(self) -> None:
        assert self._updates is not None
        while (update := await self._updates.get()) is not None:
            try:
                await self.runs.update_action_status(update)
            except Exception as exc:  # the next change, or the next start's list, repeats it
                log.warning("could not update action %s from its TaskAction: %s", "/".join(update.key), exc)

    async def settled(self) -> None:
        """Until the actions table has taken every change the informer has seen so far (for tests)."""
        while self._updates is not None and not self._updates.empty():
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ writes spanning both
    async def _create_resource(self, obj: TaskAction) -> TaskAction:
        try:
            created = await self.resources.create(obj)
        except AlreadyExistsError:
            created = await self.resources.get(obj.name)  # a retry of a create that landed (get gives a copy)
            obj.metadata, obj.status = created.metadata, created.status
        await self.runs.outbox_done(obj.name)
        return created

    async def create_run_action(self, record: ActionRecord, task_action: TaskAction | None,
                                task_spec: tuple[str, bytes] | None) -> TaskAction | None:
        await self.runs.outbox_create_run_action(record, task_action, task_spec)
        if task_action is None:
            return None
        await self._create_resource(task_action)
        return task_action

    async def restart_action(self, key: ActionKey, attempts: int, task_action: TaskAction,
                             events: list[EventRecord]) -> None:
        await self.runs.outbox_restart_action(key, attempts, task_action, events)
        await self._create_resource(task_action)

    # ------------------------------------------------------------------ resources
    @property
    def resource_version(self) -> str:
        return self.resources.resource_version

    async def create(self, obj: TaskAction) -> TaskAction:
        return await self.resources.create(obj)

    async def get(self, name: str) -> TaskAction:
        return await self.resources.get(name)

    def peek(self, name: str) -> TaskAction | None:
        return self.resources.peek(name)

    async def list(self, selector: dict[str, str | None] | None = None) -> list[TaskAction]:
        return await self.resources.list(selector)

    async def update(self, obj: TaskAction) -> TaskAction:
        return await self.resources.update(obj)

    async def update_status(self, obj: TaskAction, events: list[EventRecord] | None = None,
                            labels: dict[str, str] | None = None) -> TaskAction:
        return await self.resources.update_status(obj, events, labels)

    async def patch_labels(self, name: str, labels: dict[str, str]) -> str:
        return await self.resources.patch_labels(name, labels)

    async def delete(self, name: str) -> None:
        await self.resources.delete(name)

    def watch(self, since_resource_version: str | None = None) -> AsyncIterator[WatchEvent]:
        return self.resources.watch(since_resource_version)

    # ------------------------------------------------------------------ runs data, cache, catalog: the database
    async def update_action_status(self, update: ActionStatusUpdate) -> None:
        await self.runs.update_action_status(update)

    async def mark_abort_requested(self, key: ActionKey, reason: str, when: float) -> None:
        await self.runs.mark_abort_requested(key, reason, when)

    async def record_events(self, events: list[EventRecord]) -> None:
        await self.runs.record_events(events)

    async def get_action(self, key: ActionKey) -> ActionRecord | None:
        return await self.runs.get_action(key)

    async def find_run(self, run_name: str) -> ActionRecord | None:
        return await self.runs.find_run(run_name)

    async def list_runs(self, limit: int = 200) -> list[ActionRecord]:
        return await self.runs.list_runs(limit)

    async def list_actions(self, project: str, domain: str, run_name: str) -> list[ActionRecord]:
        return await self.runs.list_actions(project, domain, run_name)

    async def get_actions(self, project: str, domain: str, run_name: str, names: list[str]) -> list[ActionRecord]:
        return await self.runs.get_actions(project, domain, run_name, names)

    async def list_events(self, key: ActionKey) -> list[EventRecord]:
        return await self.runs.list_events(key)

    async def phase_counts(self, run: tuple[str, str, str] | None = None) -> dict[int, int]:
        return await self.runs.phase_counts(run)

    async def paused_conditions(self, run_names: list[str] | None = None) -> list[tuple[str, str, str]]:
        return await self.runs.paused_conditions(run_names)

    async def get_task_spec(self, digest: str) -> bytes | None:
        return await self.runs.get_task_spec(digest)

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        return self.runs.subscribe(callback)

    async def cache_get(self, key: str) -> CacheEntry | None:
        return await self.runs.cache_get(key)

    async def cache_put(self, entry: CacheEntry) -> None:
        await self.runs.cache_put(entry)

    async def cache_list(self, task_name: str | None = None, limit: int = 1000) -> list[CacheEntry]:
        return await self.runs.cache_list(task_name, limit)

    async def cache_delete(self, keys: list[str] | None = None, task_name: str | None = None) -> int:
        return await self.runs.cache_delete(keys, task_name)

    async def get_or_extend_reservation(self, key: str, owner_id: str, heartbeat_seconds: float,
                                        now: float) -> Reservation:
        return await self.runs.get_or_extend_reservation(key, owner_id, heartbeat_seconds, now)

    async def release_reservation(self, key: str, owner_id: str) -> None:
        await self.runs.release_reservation(key, owner_id)

    async def secret_put(self, project: str, domain: str, name: str, ciphertext: bytes, now: float) -> SecretInfo:
        return await self.runs.secret_put(project, domain, name, ciphertext, now)

    async def secret_get(self, project: str, domain: str, name: str) -> bytes | None:
        return await self.runs.secret_get(project, domain, name)

    async def secret_delete(self, project: str, domain: str, name: str) -> bool:
        return await self.runs.secret_delete(project, domain, name)

    async def secret_list(self, project: str | None = None, domain: str | None = None) -> list[SecretInfo]:
        return await self.runs.secret_list(project, domain)

    async def project_create(self, project: ProjectRecord) -> bool:
        return await self.runs.project_create(project)

    async def project_get(self, project_id: str) -> ProjectRecord | None:
        return await self.runs.project_get(project_id)

    async def project_list(self) -> list[ProjectRecord]:
        return await self.runs.project_list()

    async def task_register(self, task: TaskRecord) -> TaskRecord:
        return await self.runs.task_register(task)

    async def task_get(self, project: str, domain: str, name: str, version: str | None = None) -> TaskRecord | None:
        return await self.runs.task_get(project, domain, name, version)

    async def task_list(self, project: str | None = None, domain: str | None = None) -> list[TaskRecord]:
        return await self.runs.task_list(project, domain)

    async def trigger_put(self, project: str, domain: str, name: str, task_name: str, task_version: str, spec: bytes,
                          active: bool, now: float) -> TriggerRecord:
        return await self.runs.trigger_put(project, domain, name, task_name, task_version, spec, active, now)

    async def trigger_set_active(self, project: str, domain: str, name: str, active: bool,
                                 now: float) -> TriggerRecord | None:
        return await self.runs.trigger_set_active(project, domain, name, active, now)

    async def trigger_list(self, project: str | None = None, domain: str | None = None) -> list[TriggerRecord]:
        return await self.runs.trigger_list(project, domain)

    async def trigger_advance(self, project: str, domain: str, name: str, cursor: float) -> None:
        await self.runs.trigger_advance(project, domain, name, cursor)

    async def trigger_note(self, project: str, domain: str, name: str, text: str, now: float) -> None:
        await self.runs.trigger_note(project, domain, name, text, now)

    async def trigger_history(self, project: str, domain: str, name: str) -> list[dict]:
        return await self.runs.trigger_history(project, domain, name)
