"""The one interface clients drive the engine through: commands, reads and the change feed.

Two implementations: ``LocalClient`` calls an engine's services in this process (the console's embedded
engine, the CLI reading a directory no engine serves), ``RemoteClient`` calls a running engine's API with
its credential. Console screens and CLI commands are written against this class only, so they work the
same on either. Errors are the engine's own: ``RunNotFoundError`` (a missing run or action),
``InvalidRunError`` (bad input, with the field), ``EngineUnavailableError`` (no engine answers).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from typing import Any

from engine.client.models import Action, ActionIO, Change, ConditionInfo, Event, LogChunk

DEFAULT_LOG_CHUNK = 1_000_000


class EngineUnavailableError(ConnectionError):
    """The engine cannot be reached (it stopped, or never ran); the message says which and where."""


class EngineClient(abc.ABC):
    #: what this client talks to, for the console's title and messages
    description: str = ""
    #: False for a client that can only read (a directory no engine serves)
    can_write: bool = True

    async def close(self) -> None:
        """Release connections; an embedded engine is stopped by its owner, not here."""

    # ------------------------------------------------------------------ reads
    @abc.abstractmethod
    async def list_runs(self, limit: int = 1000) -> list[Action]: ...

    @abc.abstractmethod
    async def get_run(self, run: str) -> Action: ...

    @abc.abstractmethod
    async def list_actions(self, run: str) -> list[Action]: ...

    @abc.abstractmethod
    async def get_actions(self, run: str, names: list[str]) -> list[Action]:
        """The named actions of the run that exist (a changed action is re-read with this)."""

    @abc.abstractmethod
    async def list_events(self, run: str, action: str) -> list[Event]: ...

    @abc.abstractmethod
    async def run_counts(self) -> dict[int, int]:
        """How many runs are in each phase (as ``Action.phase`` shows them: waiting runs are PAUSED)."""

    @abc.abstractmethod
    async def task_action(self, run: str, action: str) -> dict[str, Any] | None:
        """The action's TaskAction, CRD-shaped (camelCase), while it exists."""

    @abc.abstractmethod
    async def action_io(self, run: str, action: str, attempt: int) -> ActionIO: ...

    @abc.abstractmethod
    async def read_log(self, run: str, action: str, attempt: int, offset: int = 0,
                       max_bytes: int = DEFAULT_LOG_CHUNK) -> LogChunk:
        """Whole lines of the attempt's log from ``offset``; ``offset < 0`` starts ``-offset`` bytes before
        the end (at a line start), so a long log opens at its tail."""

    @abc.abstractmethod
    async def condition(self, run: str, action: str) -> ConditionInfo: ...

    @abc.abstractmethod
    async def result(self, run: str, action: str = "a0") -> dict[str, Any]:
        """``{run, phase, outputs, error}`` of the run (or one action), as ``taskdeck run --json`` prints."""

    @abc.abstractmethod
    async def wait(self, run: str, timeout: float, action: str = "a0") -> dict[str, Any]:
        """``result`` once the action is terminal; ``timedOut: true`` added when ``timeout`` passed first."""

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]:
        """``{status, storage, storageError}`` (``storageError``: why writes fail now, or None)."""

    @abc.abstractmethod
    @abc.abstractmethod
    async def render(self, run: str, action: str = "a0") -> dict[str, Any]:
        """The object the Kubernetes backend would create for the action (a Pod, a DaskJob, ...)."""

    @abc.abstractmethod
    async def cluster_object(self, run: str, action: str = "a0") -> dict[str, Any] | None:
        """The action's object on the cluster now (``object``: as the API server has it, None once gone) and
        the Kubernetes Events about it; None when the engine keeps no tasks on a cluster."""

    @abc.abstractmethod
    async def list_workers(self) -> dict[str, Any]:
        """The engine's reusable-worker pools (each with its workers) and its fork servers."""

    async def list_cache(self, task: str | None = None, limit: int = 1000) -> list[dict[str, Any]]: ...

    # ------------------------------------------------------------------ commands
    @abc.abstractmethod
    async def create_run(self, task_spec: bytes, inputs: bytes, *, project: str, domain: str,
                         name: str | None = None, code_dir: str | None = None,
                         env_vars: dict[str, str] | None = None, queue: str = "") -> Action:
        """A new run of the serialized ``TaskSpec`` with the serialized ``Inputs``."""

    @abc.abstractmethod
    async def deploy_task(self, task_spec: bytes, *, project: str, domain: str, bundle: str = "") -> dict[str, Any]:
        """Register a task version (with its stored code bundle); {task..., "registered": bool}."""
        raise NotImplementedError

    async def list_tasks(self, project: str | None = None, domain: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def get_task(self, name: str, *, project: str, domain: str, version: str | None = None) -> dict[str, Any]:
        """A registered task with its serialized spec (``taskSpec``, base64): the latest version by default."""
        raise NotImplementedError

    async def run_task(self, name: str, inputs: bytes = b"", *, project: str, domain: str, version: str | None = None,
                       run_name: str | None = None, args: list[str] | None = None) -> Action:
        """A new run of a registered task, working in its extracted code bundle; its inputs serialized, or
        ``args`` (``--name value``, parsed by the engine as `flyte run` parses them)."""
        raise NotImplementedError

    async def deploy_trigger(self, trigger: bytes, *, project: str, domain: str, task_name: str,
                             task_version: str) -> dict[str, Any]:
        """Register (or update, as a new revision) a registered task's trigger: a serialized TaskTrigger."""
        raise NotImplementedError

    async def list_triggers(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def set_trigger_active(self, name: str, active: bool, *, project: str, domain: str) -> dict[str, Any]:
        raise NotImplementedError

    async def trigger_history(self, name: str, *, project: str, domain: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def create_project(self, project_id: str, *, name: str = "", description: str = "") -> dict[str, Any]:
        """Create a project with Flyte's three domains (creating one that exists is fine)."""
        raise NotImplementedError

    async def list_projects(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def create_secret(self, name: str, value: bytes, *, project: str = "", domain: str = "") -> dict[str, Any]:
        """Store a secret (global, project-wide, or for one project and domain); what may be shown of it."""
        raise NotImplementedError

    async def list_secrets(self) -> list[dict[str, Any]]:
        """Every secret's name, scope and times; never a value."""
        raise NotImplementedError

    async def delete_secret(self, name: str, *, project: str = "", domain: str = "") -> None:
        raise NotImplementedError

    async def stage_input(self, path: str, *, project: str, domain: str) -> str:
        """Store a local file or directory (a File/Dir input) in the engine's upload store: its stored path."""
        raise NotImplementedError

    async def abort(self, run: str, action: str = "a0", reason: str = "aborted") -> None: ...

    @abc.abstractmethod
    async def retry(self, run: str, action: str = "a0", *, who: str, why: str = "") -> list[str]: ...

    @abc.abstractmethod
    async def signal(self, run: str, action: str, value: str, *, by: str) -> str:
        """Give a paused condition its value, typed from text; returns the condition's action name."""

    @abc.abstractmethod
    async def evict_cache(self, keys: list[str] | None = None, task: str | None = None,
                          everything: bool = False) -> int: ...

    # ------------------------------------------------------------------ the change feed
    @abc.abstractmethod
    def changes(self, cursor: str | None = None, run: str | None = None) -> AsyncIterator[Change]:
        """The change feed (see ``engine/feed.py``); a remote client reconnects by itself, saying so."""
