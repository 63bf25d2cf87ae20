"""The core plugin interface (Flyte's pluginsCore): Plugin, PhaseInfo, Transition, TaskExecutionContext.

Plugins see only what is in this module: never the store, the controller or the reconciler.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flyteidl2.core import tasks_pb2

from engine.phases import PluginPhase

DEFAULT_PHASE_VERSION = 0
SYSTEM_ERROR_CODE = "SystemError"
# Error codes that fail at once as USER errors instead of counting as system failures.
NON_RETRYABLE_CODES = frozenset({"BadTaskSpecification", "MetadataTooLarge"})

USER = "USER"
SYSTEM = "SYSTEM"
UNKNOWN = ""


@dataclasses.dataclass(frozen=True)
class ExecutionError:
    """core.ExecutionError, reduced to what the executor carries: code, message, kind."""

    code: str
    message: str
    kind: str = USER  # "USER", "SYSTEM" or "" (unknown)


@dataclasses.dataclass
class TaskInfo:
    occurred_at: dt.datetime | None = None
    log_path: str | None = None
    cache_status: int = 0  # core.CatalogCacheStatus of the first non-DISABLED external resource
    additional_reasons: list[str] = dataclasses.field(default_factory=list)
    custom: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PhaseInfo:
    phase: PluginPhase
    version: int = DEFAULT_PHASE_VERSION
    reason: str = ""
    err: ExecutionError | None = None
    info: TaskInfo = dataclasses.field(default_factory=TaskInfo)
    woken: bool = False  # what it waits for wakes the action when it can go on (not persisted)

    def __post_init__(self) -> None:
        if self.info.occurred_at is None:
            self.info.occurred_at = dt.datetime.now(dt.timezone.utc)

    def with_version(self, version: int) -> PhaseInfo:
        return dataclasses.replace(self, version=version)

    # Constructors named as in pluginsCore.
    @classmethod
    def undefined(cls) -> PhaseInfo:
        return cls(PluginPhase.UNDEFINED)

    @classmethod
    def not_ready(cls, version: int = 0, reason: str = "") -> PhaseInfo:
        return cls(PluginPhase.NOT_READY, version, reason)

    @classmethod
    def waiting_for_resources(cls, version: int = 0, reason: str = "", info: TaskInfo | None = None,
                              woken: bool = False) -> PhaseInfo:
        """``woken``: whatever it waits for wakes the action (then it is rechecked only now and then)."""
        return cls(PluginPhase.WAITING_FOR_RESOURCES, version, reason, info=info or TaskInfo(), woken=woken)

    @classmethod
    def queued(cls, version: int = 0, reason: str = "", info: TaskInfo | None = None) -> PhaseInfo:
        return cls(PluginPhase.QUEUED, version, reason, info=info or TaskInfo())

    @classmethod
    def initializing(cls, version: int = 0, reason: str = "", info: TaskInfo | None = None) -> PhaseInfo:
        return cls(PluginPhase.INITIALIZING, version, reason, info=info or TaskInfo())

    @classmethod
    def running(cls, version: int = 0, info: TaskInfo | None = None, reason: str = "") -> PhaseInfo:
        return cls(PluginPhase.RUNNING, version, reason, info=info or TaskInfo())

    @classmethod
    def success(cls, info: TaskInfo | None = None, reason: str = "") -> PhaseInfo:
        return cls(PluginPhase.SUCCESS, 0, reason, info=info or TaskInfo())

    @classmethod
    def aborted(cls, reason: str = "aborted") -> PhaseInfo:
        return cls(PluginPhase.ABORTED, 0, reason)

    @classmethod
    def waiting_for_cache(cls, version: int = 0, reason: str = "", info: TaskInfo | None = None) -> PhaseInfo:
        return cls(PluginPhase.WAITING_FOR_CACHE, version, reason, info=info or TaskInfo())

    @classmethod
    def failure(cls, code: str, message: str, info: TaskInfo | None = None) -> PhaseInfo:
        """Permanent, USER."""
        return cls(PluginPhase.PERMANENT_FAILURE, 0, message, ExecutionError(code, message, USER), info or TaskInfo())

    @classmethod
    def system_failure(cls, code: str, message: str, info: TaskInfo | None = None) -> PhaseInfo:
        """Permanent, SYSTEM."""
        return cls(PluginPhase.PERMANENT_FAILURE, 0, message, ExecutionError(code, message, SYSTEM),
                   info or TaskInfo())

    @classmethod
    def retryable_failure(cls, code: str, message: str, info: TaskInfo | None = None) -> PhaseInfo:
        """Retryable, USER."""
        return cls(PluginPhase.RETRYABLE_FAILURE, 0, message, ExecutionError(code, message, USER),
                   info or TaskInfo())

    @classmethod
    def system_retryable_failure(cls, code: str, message: str, info: TaskInfo | None = None) -> PhaseInfo:
        """Retryable, SYSTEM."""
        return cls(PluginPhase.RETRYABLE_FAILURE, 0, message, ExecutionError(code, message, SYSTEM),
                   info or TaskInfo())

    @classmethod
    def failed(cls, phase: PluginPhase, err: ExecutionError, info: TaskInfo | None = None) -> PhaseInfo:
        return cls(phase, 0, err.message, err, info or TaskInfo())


@dataclasses.dataclass
class Transition:
    """The v2 reconciler ignores the transition type; only the PhaseInfo matters."""

    info: PhaseInfo

    @classmethod
    def of(cls, info: PhaseInfo) -> Transition:
        return cls(info)


class PluginError(Exception):
    """An error a plugin raises from ``handle``: a system failure unless its code is non-retryable."""

    def __init__(self, message: str, code: str = SYSTEM_ERROR_CODE):
        super().__init__(message)
        self.code = code


class StorageFaultError(PluginError):
    """A file the engine writes for the action could not be written (disk full, permissions).

    Neither the task's fault nor a plugin failure: the action waits, retried with backoff, until the
    data directory accepts writes again. It never uses up an attempt or a system failure.
    """

    def __init__(self, path: str, error: OSError):
        super().__init__(f"cannot write {path}: {error.strerror or error}", code="StorageFault")
        self.path = path
        self.error = error


@dataclasses.dataclass(frozen=True)
class PluginProperties:
    disable_node_level_caching: bool = False
    generated_name_max_length: int | None = None


class PluginStateManager:
    """Plugin state between rounds: JSON bytes here (Flyte Gob-encodes Go structs; Python has no Gob)."""

    def __init__(self, raw: bytes | None, version: int):
        self._raw = raw
        self._version = version
        self._new: tuple[int, bytes] | None = None
        self._reset = False

    @property
    def version(self) -> int:
        return self._version

    def get(self) -> dict[str, Any] | None:
        if not self._raw:
            return None
        try:
            value = json.loads(self._raw)
        except ValueError as exc:
            raise CorruptedPluginStateError(f"plugin state is not decodable: {exc}") from exc
        if not isinstance(value, dict):
            raise CorruptedPluginStateError("plugin state is not an object")
        return value

    def put(self, version: int, value: dict[str, Any]) -> None:
        self._new = (version, json.dumps(value, sort_keys=True, separators=(",", ":")).encode())

    def reset(self) -> None:
        self._new = None
        self._reset = True

    def new_state(self) -> tuple[bytes | None, int, bool]:
        """(bytes, version, written)."""
        if self._new is not None:
            return self._new[1], self._new[0], True
        if self._reset:
            return None, 0, True
        return None, 0, False


class CorruptedPluginStateError(Exception):
    pass


@dataclasses.dataclass
class TaskExecutionMetadata:
    namespace: str
    owner_name: str  # the TaskAction's name
    run_name: str
    action_name: str
    project: str
    domain: str
    attempt: int  # 1-based
    max_attempts: int
    labels: dict[str, str]
    annotations: dict[str, str]
    environment: dict[str, str]  # ACTION_NAME, RUN_NAME, _U_RUN_BASE, _U_ORG_NAME + spec.envVars
    run_start_time: str
    parent_owner_name: str | None = None  # the parent action's TaskAction, for a child
    owner_uid: str = ""  # the TaskAction's uid: what owner references of the objects it creates name
    interruptible: bool = False  # spec.interruptible: may run on preemptible nodes (Kubernetes only)

    @property
    def retry_attempt(self) -> int:
        return self.attempt - 1

    @property
    def generated_name(self) -> str:
        """``<crName>-<retryAttempt>``, like the pod name."""
        return f"{self.owner_name}-{self.retry_attempt}"


@dataclasses.dataclass
class TaskExecutionContext:
    metadata: TaskExecutionMetadata
    task_template_bytes: bytes
    input_path: str  # <inputUri prefix>/inputs.pb
    output_prefix: str  # this attempt's directory; outputs.pb and error.pb go inside
    raw_output_prefix: str
    checkpoint_prefix: str
    prev_checkpoint_prefix: str
    log_path: Path
    plugin_state: PluginStateManager
    enqueue_owner: Callable[[], None]  # wake the reconciler for this action (Flyte: owned-pod events)
    runtime_env: dict[str, str]  # engine-provided env for task processes (controller endpoint, ...)
    storage_root: str = ""  # the data directory: output files named outside it are copied in
    secret_env: dict[str, str] = dataclasses.field(default_factory=dict)  # what the task's secret requests get
    # where a cluster keeps them (variable → (Kubernetes Secret, key)): pods take these by reference
    secret_refs: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    # the ones asked for as files: (path under /etc/flyte/secrets, Kubernetes Secret, key), mounted into pods
    secret_files: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    # the same for a plugin that mounts values itself (``mounts_secret_values``): path → value
    secret_file_values: dict[str, str] = dataclasses.field(default_factory=dict)
    # where the attempt's files are when its prefix is on an object store (engine/data_store.py: read, exists,
    # aread, aexists; ``remote``); None: local paths
    files: Any = None
    _template: tasks_pb2.TaskTemplate | None = None

    @property
    def task_template(self) -> tasks_pb2.TaskTemplate:
        if self._template is None:
            template = tasks_pb2.TaskTemplate()
            template.ParseFromString(self.task_template_bytes)
            self._template = template
        return self._template


class Plugin(abc.ABC):
    """A task plugin. ``handle`` is non-blocking and idempotent; ``abort`` and ``finalize`` idempotent."""

    id: str = ""
    task_types: tuple[str, ...] = ()
    is_default: bool = False
    properties: PluginProperties = PluginProperties()
    mounts_secret_values = False  # file secrets come as values (local processes), not as cluster references

    @abc.abstractmethod
    async def handle(self, tctx: TaskExecutionContext) -> Transition: ...

    @abc.abstractmethod
    async def abort(self, tctx: TaskExecutionContext) -> None: ...

    @abc.abstractmethod
    async def finalize(self, tctx: TaskExecutionContext) -> None: ...

    async def close(self) -> None:
        """Release what the plugin holds when the engine stops."""
