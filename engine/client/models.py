"""What a client sees of the engine: plain, JSON-able views, the same in-process and over the API.

They are the engine's only vocabulary for its clients (the console, the CLI, scripts): rows of the runs
and actions tables, action events, log lines with the time they were written, change-feed items. Field
names follow the engine's own records, so a view reads like the row it comes from; JSON uses camelCase.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from typing import Any

from flyteidl2.core import catalog_pb2

from engine.action_types import ACTION_TYPE_CONDITION, ACTION_TYPE_TASK, ACTION_TYPE_TRACE, ROOT_ACTION_NAME
from engine.phases import ActionPhase

__all__ = ["ACTION_TYPE_CONDITION", "ACTION_TYPE_TASK", "ACTION_TYPE_TRACE", "ROOT_ACTION_NAME", "Action",
           "ActionIO", "ActionPhase", "Change", "ConditionInfo", "Event", "LogChunk", "LogLine", "cache_status_name",
           "strict_dumps"]


def strict_json(value: Any) -> Any:
    """``value`` with non-finite floats as None: JSON that strict parsers accept (no NaN, no Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def strict_dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(strict_json(value), allow_nan=False, indent=indent)


_ACTION_TYPES = {ACTION_TYPE_TASK: "task", ACTION_TYPE_TRACE: "trace", ACTION_TYPE_CONDITION: "condition"}
_ACTION_TYPE_OF = {name: value for value, name in _ACTION_TYPES.items()}


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat() if ts else None


def _ts(text: str | None) -> float | None:
    return dt.datetime.fromisoformat(text).timestamp() if text else None


def cache_status_name(value: int) -> str:
    try:
        return catalog_pb2.CatalogCacheStatus.Name(value)
    except ValueError:
        return str(value)


def _cache_status(name: str | int | None) -> int:
    if isinstance(name, int):
        return name
    try:
        return catalog_pb2.CatalogCacheStatus.Value(name or "CACHE_DISABLED")
    except ValueError:
        return 0


def _error(kind, code, message) -> dict[str, str] | None:
    if not code and not message:
        return None
    return {"kind": kind or "", "code": code or "", "message": message or ""}


@dataclasses.dataclass(frozen=True)
class Action:
    """One action (a run is its root action, ``name == "a0"``) as the actions table has it.

    ``phase`` is what to show: a run whose condition waits for input shows PAUSED (``waiting`` names the
    conditions), though the table keeps RUNNING, as Flyte's does.
    """

    project: str
    domain: str
    run_name: str
    name: str
    parent_action_name: str | None = None
    phase: int = int(ActionPhase.QUEUED)
    action_type: int = ACTION_TYPE_TASK
    task_name: str | None = None
    task_type: str = ""
    short_name: str | None = None
    function_name: str = ""
    action_group: str = ""
    has_inputs: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    ended_at: float | None = None
    duration_ms: int | None = None
    attempts: int = 0
    cache_status: int = 0
    cache_key: str | None = None
    abort_requested_at: float | None = None
    abort_reason: str | None = None
    error_kind: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    waiting: tuple[str, ...] = ()  # conditions this run waits on (runs only)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.project, self.domain, self.run_name, self.name)

    @property
    def is_terminal(self) -> bool:
        return ActionPhase(self.phase).is_terminal

    @property
    def error(self) -> dict[str, str] | None:
        return _error(self.error_kind, self.error_code, self.error_message)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run_name, "project": self.project, "domain": self.domain, "name": self.name,
            "parent": self.parent_action_name, "phase": ActionPhase(self.phase).name,
            "actionType": _ACTION_TYPES.get(self.action_type, str(self.action_type)), "attempts": self.attempts,
            "taskType": self.task_type, "taskName": self.task_name, "shortName": self.short_name,
            "functionName": self.function_name, "group": self.action_group, "hasInputs": self.has_inputs,
            "cacheStatus": cache_status_name(self.cache_status), "cacheKey": self.cache_key, "error": self.error,
            "startedAt": _iso(self.created_at), "updatedAt": _iso(self.updated_at), "endedAt": _iso(self.ended_at),
            "durationMs": self.duration_ms, "abortRequestedAt": _iso(self.abort_requested_at),
            "abortReason": self.abort_reason, "waiting": list(self.waiting),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Action:
        error = data.get("error") or {}
        return cls(
            project=data["project"], domain=data["domain"], run_name=data["run"], name=data["name"],
            parent_action_name=data.get("parent"), phase=int(ActionPhase[data["phase"]]),
            action_type=_ACTION_TYPE_OF.get(data.get("actionType"), ACTION_TYPE_TASK),
            task_name=data.get("taskName"), task_type=data.get("taskType") or "", short_name=data.get("shortName"),
            function_name=data.get("functionName") or "", action_group=data.get("group") or "",
            has_inputs=bool(data.get("hasInputs")), created_at=_ts(data.get("startedAt")) or 0.0,
            updated_at=_ts(data.get("updatedAt")) or 0.0, ended_at=_ts(data.get("endedAt")),
            duration_ms=data.get("durationMs"), attempts=data.get("attempts") or 0,
            cache_status=_cache_status(data.get("cacheStatus")), cache_key=data.get("cacheKey"),
            abort_requested_at=_ts(data.get("abortRequestedAt")), abort_reason=data.get("abortReason"),
            error_kind=error.get("kind") or None, error_code=error.get("code") or None,
            error_message=error.get("message") or None, waiting=tuple(data.get("waiting") or ()),
        )


@dataclasses.dataclass(frozen=True)
class Event:
    """One ActionEvent: a phase an attempt reached, when, and why."""

    attempt: int
    phase: int
    version: int
    updated_time: float
    reported_time: float
    error_kind: str = ""
    error_code: str = ""
    error_message: str = ""
    output_uri: str | None = None
    logs: tuple[str, ...] = ()
    cache_status: int = 0
    reasons: tuple[str, ...] = ()
    worker: str = ""  # the reusable worker that ran the attempt, if one did
    links: tuple[tuple[str, str], ...] = ()  # (name, URL): a cluster's dashboards while the attempt ran

    @property
    def error(self) -> dict[str, str] | None:
        return _error(self.error_kind, self.error_code, self.error_message)

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt, "phase": ActionPhase(self.phase).name, "version": self.version,
            "updatedTime": _iso(self.updated_time), "reportedTime": _iso(self.reported_time), "error": self.error,
            "outputUri": self.output_uri, "logs": list(self.logs), "cacheStatus": cache_status_name(self.cache_status),
            "reasons": list(self.reasons), "worker": self.worker,
            "links": [{"name": name, "uri": uri} for name, uri in self.links],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        error = data.get("error") or {}
        return cls(
            attempt=data["attempt"], phase=int(ActionPhase[data["phase"]]), version=data.get("version") or 0,
            updated_time=_ts(data.get("updatedTime")) or 0.0, reported_time=_ts(data.get("reportedTime")) or 0.0,
            error_kind=error.get("kind") or "", error_code=error.get("code") or "",
            error_message=error.get("message") or "", output_uri=data.get("outputUri"),
            logs=tuple(data.get("logs") or ()), cache_status=_cache_status(data.get("cacheStatus")),
            reasons=tuple(data.get("reasons") or ()), worker=data.get("worker") or "",
            links=tuple((link["name"], link["uri"]) for link in data.get("links") or ()),
        )


@dataclasses.dataclass(frozen=True)
class LogLine:
    time: float | None  # when the task process wrote it (None: a line from before timestamps)
    text: str


@dataclasses.dataclass(frozen=True)
class LogChunk:
    """Lines of an attempt's log from byte ``offset`` to ``next_offset`` (only whole lines)."""

    exists: bool
    offset: int
    next_offset: int
    size: int
    lines: tuple[LogLine, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"exists": self.exists, "offset": self.offset, "nextOffset": self.next_offset, "size": self.size,
                "lines": [[line.time, line.text] for line in self.lines]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogChunk:
        return cls(data["exists"], data["offset"], data["nextOffset"], data["size"],
                   tuple(LogLine(t, text) for t, text in data.get("lines") or ()))


@dataclasses.dataclass(frozen=True)
class ActionIO:
    """An attempt's decoded inputs and outputs (None where there are none, or none yet)."""

    inputs: dict[str, Any] | None
    outputs: dict[str, Any] | None
    report: dict[str, Any] | None = None  # {path, bytes, summary} of the attempt's report.html


@dataclasses.dataclass(frozen=True)
class ConditionInfo:
    """What a condition asks: its name, prompt and the type of value it takes."""

    name: str
    prompt: str
    description: str
    type_name: str  # BOOLEAN, INTEGER, FLOAT or STRING

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "prompt": self.prompt, "description": self.description, "type": self.type_name}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConditionInfo:
        return cls(data["name"], data.get("prompt", ""), data.get("description", ""), data.get("type", ""))


@dataclasses.dataclass(frozen=True)
class Change:
    """One item of the change feed.

    ``kind`` is ``changes`` (``actions`` lists the (run, action) pairs whose rows changed), ``snapshot``
    (re-read everything: the feed started, or could not resume from the cursor given), ``storage``
    (``storage_error`` is why writes fail now, or None when they succeed again), ``heartbeat`` (nothing
    changed; the cursor moves on), or, on a remote client only, ``disconnected`` and ``reconnected``.
    Resuming from ``cursor`` misses nothing and repeats nothing.
    """

    kind: str
    cursor: str = ""
    actions: tuple[tuple[str, str], ...] = ()
    storage_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "cursor": self.cursor, "actions": [list(a) for a in self.actions],
                "storageError": self.storage_error}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(data["kind"], data.get("cursor", ""), tuple(tuple(a) for a in data.get("actions") or ()),
                   data.get("storageError"))
