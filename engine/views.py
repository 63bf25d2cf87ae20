"""The engine's records as client views (``engine/client/models.py``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from engine.client.models import Action, Event
from engine.events import decode_event
from engine.phases import ActionPhase
from engine.store.base import ActionRecord, CacheEntry, EventRecord


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat() if ts else None


def action_view(record: ActionRecord, waiting: tuple[str, ...] = ()) -> Action:
    """A row of the actions table as clients see it (a run waiting on a condition shows PAUSED)."""
    phase = record.phase
    if waiting and phase == int(ActionPhase.RUNNING):
        phase = int(ActionPhase.PAUSED)
    return Action(
        project=record.project, domain=record.domain, run_name=record.run_name, name=record.name,
        parent_action_name=record.parent_action_name, phase=phase, action_type=record.action_type,
        task_name=record.task_name, task_type=record.task_type, short_name=record.short_name,
        function_name=record.function_name, action_group=record.action_group, has_inputs=bool(record.input_uri),
        created_at=record.created_at, updated_at=record.updated_at, ended_at=record.ended_at,
        duration_ms=record.duration_ms, attempts=record.attempts, cache_status=record.cache_status,
        cache_key=record.cache_key, abort_requested_at=record.abort_requested_at, abort_reason=record.abort_reason,
        error_kind=record.error_kind, error_code=record.error_code, error_message=record.error_message,
        waiting=waiting,
    )


def event_view(record: EventRecord) -> Event:
    event = decode_event(record)
    error = event.error_info if event.HasField("error_info") else None
    return Event(
        attempt=record.attempt, phase=record.phase, version=record.version, updated_time=record.updated_time,
        reported_time=record.reported_time, error_kind=record.error_kind.removeprefix("KIND_") if error else "",
        error_code=error.code if error else "", error_message=error.message if error else "",
        output_uri=event.outputs.output_uri or None, logs=tuple(log.uri for log in event.log_info),
        worker=event.log_context.primary_pod_name,
        links=tuple((log.name, log.uri) for log in event.log_info if log.name != "local"),
        cache_status=event.cache_status, reasons=tuple(c.message for c in event.cluster_events),
    )


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
