"""JSON views of runs and actions, shared by the API server and the command line."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

from flyteidl2.core import catalog_pb2

from engine.model import TaskAction
from engine.phases import ActionPhase
from engine.store.base import ActionRecord, CacheEntry, EventRecord
from engine.events import decode_event


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
