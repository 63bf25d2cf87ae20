"""JSON views of runs and actions, shared by the API server and the command line."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flyteidl2.core import catalog_pb2

from engine.model import TaskAction, task_action_name
from engine.phases import ActionPhase
from engine.store.base import ActionRecord, CacheEntry, EventRecord
from engine.events import decode_event


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat() if ts else None


def cache_status_name(value: int) -> str:
    try:
        return catalog_pb2.CatalogCacheStatus.Name(value)
    except ValueError:
        return str(value)


def action_error(record: ActionRecord) -> dict[str, str] | None:
    if record.error_message is None and record.error_code is None:
        return None
    return {"kind": record.error_kind or "", "code": record.error_code or "", "message": record.error_message or ""}


def action_json(record: ActionRecord, task_action: TaskAction | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "run": record.run_name,
        "project": record.project,
        "domain": record.domain,
        "name": record.name,
        "parent": record.parent_action_name,
        "phase": ActionPhase(record.phase).name,
        "attempts": record.attempts,
        "taskType": record.task_type,
        "taskName": record.task_name,
        "shortName": record.short_name,
        "cacheStatus": cache_status_name(record.cache_status),
        "error": action_error(record),
        "startedAt": _iso(record.created_at),
        "endedAt": _iso(record.ended_at),
        "durationMs": record.duration_ms,
        "abortRequestedAt": _iso(record.abort_requested_at),
    }
    if task_action is not None:
        view["taskAction"] = task_action.to_dict()
    return view


def event_json(record: EventRecord) -> dict[str, Any]:
    event = decode_event(record)
    return {
        "attempt": record.attempt,
        "phase": ActionPhase(record.phase).name,
        "version": record.version,
        "updatedTime": _iso(record.updated_time),
        "reportedTime": _iso(record.reported_time),
        "error": (
            {"kind": record.error_kind, "code": event.error_info.code, "message": event.error_info.message}
            if event.HasField("error_info") else None
        ),
        "outputUri": event.outputs.output_uri or None,
        "logs": [log.uri for log in event.log_info],
        "cacheStatus": cache_status_name(event.cache_status),
        "reasons": [c.message for c in event.cluster_events],
    }


def task_action_for(store, record: ActionRecord) -> TaskAction | None:
    return store.peek(task_action_name(record.run_name, record.name))


def cache_entry_json(entry: CacheEntry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "project": entry.project,
        "domain": entry.domain,
        "taskName": entry.task_name,
        "cacheVersion": entry.cache_version,
        "taskVersion": entry.task_version,
        "outputsUri": entry.outputs_uri,
        "source": {"run": entry.run_name, "action": entry.action_name, "attempt": entry.attempt},
        "createdAt": _iso(entry.created_at),
    }
