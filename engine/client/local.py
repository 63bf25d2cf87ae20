"""The client interface in-process: calls an engine's services directly.

The console's embedded engine uses it, the HTTP API serves it (so a remote client gets the very same
answers), and the CLI reads a directory no engine serves through a read-only one.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from flyteidl2.core import types_pb2
from flyteidl2.task import common_pb2, task_definition_pb2

from engine.client.base import DEFAULT_LOG_CHUNK, EngineClient, EngineUnavailableError
from engine.secret_store import mask
from engine.client.models import Action, ActionIO, Change, ConditionInfo, Event, LogChunk
from engine.errors import InvalidRunError
from engine.names import check_action_name, check_run_name
from engine.services import EngineServices
from engine.views import action_view, cache_entry_json, event_view

MAX_LOG_CHUNK = 4_000_000


def _message(cls, data: bytes, field: str):
    message = cls()
    try:
        message.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - DecodeError, RecursionError: the caller's bytes
        raise InvalidRunError(f"{field} is not a valid {cls.__name__}: {exc}", field=field) from None
    return message


class LocalClient(EngineClient):
    def __init__(self, services: EngineServices, *, description: str = "embedded engine", can_write: bool = True):
        self.services = services
        self.runs = services.runs
        self.description = description
        self.can_write = can_write

    def _writable(self) -> None:
        if not self.can_write:
            raise EngineUnavailableError(f"no engine serves {self.services.data_dir}: start one "
                                         "(`taskdeck --headless`) to change runs")

    # ------------------------------------------------------------------ reads
    async def _views(self, records, run_names: list[str] | None) -> list[Action]:
        if not any(r.parent_action_name is None for r in records):
            return [action_view(r) for r in records]  # only a run (a root) shows what it waits on
        waiting = await self.runs.waiting_conditions(run_names)
        return [action_view(r, waiting.get(r.run_name, ()) if r.parent_action_name is None else ())
                for r in records]

    async def list_runs(self, limit: int = 1000) -> list[Action]:
        records = await self.runs.list_runs(limit)
        return await self._views(records, None if len(records) > 500 else [r.run_name for r in records])

    async def get_run(self, run: str) -> Action:
        return (await self._views([await self.runs.get_run(run)], [run]))[0]

    async def list_actions(self, run: str) -> list[Action]:
        return await self._views(await self.runs.list_actions(run), [run])

    async def get_actions(self, run: str, names: list[str]) -> list[Action]:
        return await self._views(await self.runs.get_actions(run, names), [run])

    async def list_events(self, run: str, action: str) -> list[Event]:
        record = await self.runs.get_run(run)
        return [event_view(e) for e in await self.runs.list_events((record.project, record.domain, run, action))]

    async def run_counts(self) -> dict[int, int]:
        return await self.runs.run_counts()

    async def task_action(self, run: str, action: str) -> dict[str, Any] | None:
        obj = self.runs.task_action_named(run, action)
        return obj.to_dict() if obj is not None else None

    async def action_io(self, run: str, action: str, attempt: int) -> ActionIO:
        inputs, outputs, report = await self.runs.action_io(run, action, attempt)
        return ActionIO(inputs, outputs, report)

    async def read_log(self, run: str, action: str, attempt: int, offset: int = 0,
                       max_bytes: int = DEFAULT_LOG_CHUNK) -> LogChunk:
        record = await self.runs.find_action(run, action)
        if record is None:
            raise LookupError(f"action {action!r} not found in run {run!r}")
        if not 1 <= max_bytes <= MAX_LOG_CHUNK:
            raise InvalidRunError(f"max_bytes must be from 1 to {MAX_LOG_CHUNK}", field="maxBytes")
        if not 1 <= attempt <= max(record.attempts, 1):
            raise InvalidRunError(f"attempt must be from 1 to {max(record.attempts, 1)}", field="attempt")
        chunk = await self.services.logs.read(run, action, attempt, offset, max_bytes)
        secrets = self.services.secrets
        if secrets is None or not chunk.lines:
            return chunk
        values = await secrets.values_for(record.project, record.domain)
        if not values:
            return chunk
        return dataclasses.replace(chunk, lines=tuple(
            dataclasses.replace(line, text=mask(line.text, values)) for line in chunk.lines))

    async def condition(self, run: str, action: str) -> ConditionInfo:
        condition = self.runs.condition_of(run, action)
        type_name = types_pb2.SimpleType.Name(condition.type.simple) if condition.type.HasField("simple") else ""
        return ConditionInfo(condition.name or action, condition.prompt, condition.description, type_name)

    async def result(self, run: str, action: str = "a0") -> dict[str, Any]:
        return (await self.runs.result(run, action)).to_json()

    async def wait(self, run: str, timeout: float, action: str = "a0") -> dict[str, Any]:
        try:
            return (await self.runs.wait_for_run(run, timeout, action)).to_json()
        except TimeoutError:
            return {**(await self.runs.result(run, action)).to_json(), "timedOut": True}

    async def health(self) -> dict[str, Any]:
        error = self.services.health.error
        return {"status": "degraded" if error else "ok", "storage": "unavailable" if error else "ok",
                "storageError": error, "backend": self.services.backend()}

    async def render(self, run: str, action: str = "a0") -> dict[str, Any]:
        if self.services.render is None:
            raise LookupError("rendering needs the engine: start one (taskdeck --headless) or use its console")
        return self.services.render(run, action)  # the names are checked where the TaskAction is looked up

    async def cluster_object(self, run: str, action: str = "a0") -> dict[str, Any] | None:
        if self.services.cluster_object is None:
            return None  # tasks run on this machine: nothing of theirs is on a cluster
        check_run_name(run)
        check_action_name(action)
        return await self.services.cluster_object(run, action)

    async def list_workers(self) -> dict[str, Any]:
        return self.services.workers()

    async def list_cache(self, task: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        return [cache_entry_json(e) for e in await self.runs.list_cache(task, limit)]

    # ------------------------------------------------------------------ commands
    async def create_run(self, task_spec: bytes, inputs: bytes, *, project: str, domain: str,
                         name: str | None = None, code_dir: str | None = None,
                         env_vars: dict[str, str] | None = None, queue: str = "") -> Action:
        self._writable()
        if self.services.projects is not None:
            await self.services.projects.check(project, domain)
        spec = _message(task_definition_pb2.TaskSpec, task_spec, "taskSpec")
        values = _message(common_pb2.Inputs, inputs, "inputs")
        record = await self.runs.create_run(spec, values, project=project, domain=domain, name=name,
                                            code_dir=code_dir, env_vars=env_vars, queue=queue)
        return action_view(record)

    async def stage_input(self, path: str, *, project: str, domain: str) -> str:
        self._writable()
        if self.services.stage is None:
            raise LookupError("storing input files needs the engine: start one (taskdeck --headless)")
        return await asyncio.to_thread(self.services.stage, path, project, domain)

    async def create_secret(self, name: str, value: bytes, *, project: str = "", domain: str = "") -> dict[str, Any]:
        self._writable()
        return (await self._secret_store().put(name, value, project=project, domain=domain)).to_json()

    async def list_secrets(self) -> list[dict[str, Any]]:
        return [info.to_json() for info in await self._secret_store().list()]

    async def delete_secret(self, name: str, *, project: str = "", domain: str = "") -> None:
        self._writable()
        await self._secret_store().delete(name, project=project, domain=domain)

    async def deploy_task(self, task_spec: bytes, *, project: str, domain: str, bundle: str = "") -> dict[str, Any]:
        self._writable()
        record, registered = await self._tasks().deploy(task_spec, project=project, domain=domain, bundle=bundle)
        return {**record.to_json(), "registered": registered}

    async def list_tasks(self, project: str | None = None, domain: str | None = None) -> list[dict[str, Any]]:
        return [t.to_json() for t in await self._tasks().list(project, domain)]

    async def get_task(self, name: str, *, project: str, domain: str, version: str | None = None) -> dict[str, Any]:
        record = await self._tasks().get(project, domain, name, version)
        return {**record.to_json(), "taskSpec": base64.b64encode(record.spec).decode()}

    async def run_task(self, name: str, inputs: bytes = b"", *, project: str, domain: str, version: str | None = None,
                       run_name: str | None = None, args: list[str] | None = None) -> Action:
        self._writable()
        tasks = self._tasks()
        record = await tasks.get(project, domain, name, version)
        if args is not None:
            inputs = await self._inputs_from_args(record, args, project, domain)
        code_dir = await asyncio.to_thread(tasks.code_dir, record)
        return await self.create_run(record.spec, inputs, project=project, domain=domain, name=run_name,
                                     code_dir=code_dir)

    async def _inputs_from_args(self, record, args: list[str], project: str, domain: str) -> bytes:
        """A registered task's inputs from ``--name value`` arguments (files stored in the upload store)."""
        from flyteidl2.task import task_definition_pb2

        from engine.sdk import HelpRequested, InputError, deployed_task, parse_inputs, stored_inputs

        spec = task_definition_pb2.TaskSpec()
        spec.ParseFromString(record.spec)
        task = deployed_task(spec)
        try:  # off the loop: the SDK reads registered defaults with asyncio.run
            values = await asyncio.to_thread(parse_inputs, task, [str(a) for a in args], record.name)
        except HelpRequested as shown:
            raise InvalidRunError(shown.text.strip(), field="args") from None
        except InputError as exc:
            raise InvalidRunError(str(exc), field="args") from None
        if self.services.stage is None:
            raise LookupError("storing input files needs the engine: start one (taskdeck --headless)")

        async def stage(path: str) -> str:
            return await asyncio.to_thread(self.services.stage, path, project, domain)

        try:
            return (await stored_inputs(task, values, stage)).SerializeToString()
        except InputError as exc:
            raise InvalidRunError(str(exc), field="args") from None

    def _tasks(self):
        if self.services.tasks is None:
            raise LookupError("registered tasks need the engine: start one (taskdeck --headless)")
        return self.services.tasks

    async def deploy_trigger(self, trigger: bytes, *, project: str, domain: str, task_name: str,
                             task_version: str) -> dict[str, Any]:
        self._writable()
        return (await self._triggers().deploy(trigger, project=project, domain=domain, task_name=task_name,
                                              task_version=task_version)).to_json()

    async def list_triggers(self) -> list[dict[str, Any]]:
        return [t.to_json() for t in await self._triggers().list()]

    async def set_trigger_active(self, name: str, active: bool, *, project: str, domain: str) -> dict[str, Any]:
        self._writable()
        return (await self._triggers().set_active(name, active, project=project, domain=domain)).to_json()

    async def trigger_history(self, name: str, *, project: str, domain: str) -> list[dict[str, Any]]:
        return await self._triggers().history(name, project=project, domain=domain)

    def _triggers(self):
        if self.services.triggers is None:
            raise LookupError("triggers need the engine: start one (taskdeck --headless)")
        return self.services.triggers

    async def create_project(self, project_id: str, *, name: str = "", description: str = "") -> dict[str, Any]:
        self._writable()
        return (await self._projects().create(project_id, name=name, description=description)).to_json()

    async def list_projects(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in await self._projects().list()]

    def _projects(self):
        if self.services.projects is None:
            raise LookupError("projects need the engine's database")
        return self.services.projects

    def _secret_store(self):
        if self.services.secrets is None:
            raise LookupError("secrets need the engine: start one (taskdeck --headless)")
        return self.services.secrets

    async def abort(self, run: str, action: str = "a0", reason: str = "aborted") -> None:
        self._writable()
        await self.runs.abort_action(run, action, reason)

    async def retry(self, run: str, action: str = "a0", *, who: str, why: str = "") -> list[str]:
        self._writable()
        return await self.runs.retry_action(run, action, who=who, why=why)

    async def signal(self, run: str, action: str, value: str, *, by: str) -> str:
        self._writable()
        return await self.runs.signal_text(run, action, value, by)

    async def evict_cache(self, keys: list[str] | None = None, task: str | None = None,
                          everything: bool = False) -> int:
        self._writable()
        return await self.runs.evict_cache(keys, task, everything)

    # ------------------------------------------------------------------ the change feed
    def changes(self, cursor: str | None = None, run: str | None = None) -> AsyncIterator[Change]:
        return self.services.feed.follow(cursor, run)


@contextlib.asynccontextmanager
async def read_only_client(data_dir: Path):
    """A client for a data directory no engine serves: reads from its database, writes refused."""
    from engine.feed import ChangeFeed
    from engine.logs import LogService
    from engine.runs import RunsService
    from engine.storage_health import StorageHealth
    from engine.store.sqlite import SqliteStore

    store = SqliteStore(Path(data_dir) / "taskdeck.db", read_only=True)
    await store.start()
    try:
        health = StorageHealth(store, data_dir)
        from engine.secret_store import EmbeddedSecretStore

        from engine.projects import ProjectsService
        from engine.tasks import TasksService
        from engine.triggers import TriggersService

        services = EngineServices(RunsService(store, data_dir), ChangeFeed(store, health), health,
                                  LogService(data_dir), Path(data_dir), secrets=EmbeddedSecretStore(store, data_dir),
                                  projects=ProjectsService(store), tasks=TasksService(store, data_dir),
                                  triggers=TriggersService(store, None, start_run=None))  # reads only
        yield LocalClient(services, description=f"{data_dir} (read-only: no engine serves it)", can_write=False)
    finally:
        await store.close()
