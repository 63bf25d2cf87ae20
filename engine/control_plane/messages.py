"""The engine's records as Flyte's run messages (flyteidl2.workflow): Action, ActionDetails, RunDetails.

What the stock CLI reads of them (flyte-cli-backend.md, "Rendering"): ids, ``metadata.task``, the status
with its times and attempts, ``error_info``/``abort_info``, and per attempt its phase, ``logs_available``
and ``outputs.output_uri``.
"""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from flyteidl2.common import identifier_pb2, list_pb2
from flyteidl2.logs.dataplane import payload_pb2
from flyteidl2.task import common_pb2, run_pb2, task_definition_pb2
from flyteidl2.workflow import run_definition_pb2

from engine.action_types import ACTION_TYPE_CONDITION
from engine.phases import ActionPhase
from engine.store.base import ActionRecord, EventRecord

_KIND = {"USER": run_definition_pb2.ErrorInfo.KIND_USER, "SYSTEM": run_definition_pb2.ErrorInfo.KIND_SYSTEM}


def timestamp(seconds: float | None) -> Timestamp | None:
    if not seconds:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def action_id(record: ActionRecord) -> identifier_pb2.ActionIdentifier:
    return identifier_pb2.ActionIdentifier(
        run=identifier_pb2.RunIdentifier(project=record.project, domain=record.domain, name=record.run_name),
        name=record.name)


def _metadata(record: ActionRecord, condition=None) -> run_definition_pb2.ActionMetadata:
    metadata = run_definition_pb2.ActionMetadata(
        parent=record.parent_action_name or "", group=record.action_group or "", action_type=record.action_type,
        environment_name=record.environment_name or "", funtion_name=record.function_name or "")
    metadata.task.CopyFrom(run_definition_pb2.TaskActionMetadata(
        id=task_definition_pb2.TaskIdentifier(project=record.task_project or record.project,
                                              domain=record.task_domain or record.domain,
                                              name=record.task_name or record.function_name,
                                              version=record.task_version or ""),
        task_type=record.task_type, short_name=record.short_name or record.function_name))
    if record.action_type == ACTION_TYPE_CONDITION:
        metadata.condition.name = record.function_name or record.short_name or record.name
        if condition is not None:
            metadata.condition.type.CopyFrom(condition.type)
    return metadata


def _status(record: ActionRecord) -> run_definition_pb2.ActionStatus:
    status = run_definition_pb2.ActionStatus(phase=record.phase, attempts=record.attempts,
                                             cache_status=record.cache_status)
    if (start := timestamp(record.created_at)) is not None:
        status.start_time.CopyFrom(start)
    if ActionPhase(record.phase).is_terminal and (end := timestamp(record.ended_at or record.updated_at)):
        status.end_time.CopyFrom(end)
    if record.duration_ms is not None:
        status.duration_ms = record.duration_ms
    elif ActionPhase(record.phase).is_terminal and record.ended_at and record.created_at:
        status.duration_ms = max(int((record.ended_at - record.created_at) * 1000), 0)
    return status


def action(record: ActionRecord, condition=None) -> run_definition_pb2.Action:
    """``condition``: what a condition action asks (its ConditionAction), while the engine still has it."""
    return run_definition_pb2.Action(id=action_id(record), metadata=_metadata(record, condition),
                                     status=_status(record))


def run(record: ActionRecord) -> run_definition_pb2.Run:
    return run_definition_pb2.Run(action=action(record))


def error_info(kind: str | None, code: str | None, message: str | None) -> run_definition_pb2.ErrorInfo:
    return run_definition_pb2.ErrorInfo(kind=_KIND.get(kind or "", run_definition_pb2.ErrorInfo.KIND_UNSPECIFIED),
                                        code=code or "", message=message or "")


def action_details(record: ActionRecord, events: list[EventRecord], attempt_prefix, log_exists,
                   condition=None) -> run_definition_pb2.ActionDetails:
    """``attempt_prefix(n)``: where attempt n writes its outputs; ``log_exists(n)``: it has a log to tail."""
    details = run_definition_pb2.ActionDetails(id=action_id(record), metadata=_metadata(record, condition),
                                               status=_status(record))
    if condition is not None:
        details.condition.CopyFrom(condition)
    phase = ActionPhase(record.phase)
    if record.error_message or phase in (ActionPhase.FAILED, ActionPhase.TIMED_OUT):
        details.error_info.CopyFrom(error_info(record.error_kind, record.error_code, record.error_message))
    if phase == ActionPhase.ABORTED:
        details.abort_info.CopyFrom(run_definition_pb2.AbortInfo(reason=record.abort_reason or "aborted"))
    if record.action_spec:
        spec = run_definition_pb2.ActionSpec()
        spec.ParseFromString(record.action_spec)
        if spec.HasField("task"):
            details.task.CopyFrom(spec.task.spec)
        elif spec.HasField("trace"):
            details.trace.CopyFrom(spec.trace.spec)
    for n in range(1, max(record.attempts, 1 if events else 0) + 1):
        details.attempts.append(_attempt(n, [e for e in events if e.attempt == n], record, attempt_prefix(n),
                                         log_exists(n)))
    return details


def _attempt(n: int, events: list[EventRecord], record: ActionRecord, prefix: str,
             has_log: bool) -> run_definition_pb2.ActionAttempt:
    attempt = run_definition_pb2.ActionAttempt(attempt=n, logs_available=has_log)
    last = None
    for event in sorted(events, key=lambda e: (e.version, e.updated_time)):
        info = run_definition_pb2.ActionEvent()
        info.ParseFromString(event.info)
        if last is None and (start := timestamp(event.updated_time)) is not None:
            attempt.start_time.CopyFrom(start)
        attempt.phase_transitions.append(run_definition_pb2.PhaseTransition(
            phase=event.phase, start_time=timestamp(event.updated_time)))
        if info.log_info:
            del attempt.log_info[:]
            attempt.log_info.extend(info.log_info)
        if info.HasField("log_context"):
            attempt.log_context.CopyFrom(info.log_context)
        if info.HasField("error_info"):
            attempt.error_info.CopyFrom(info.error_info)
        attempt.cache_status = info.cache_status or attempt.cache_status
        last = event
    phase = last.phase if last is not None else record.phase
    if n == record.attempts:
        phase = record.phase  # the row is the truth for the last attempt
    attempt.phase = phase
    if ActionPhase(phase).is_terminal and last is not None and (end := timestamp(last.updated_time)):
        attempt.end_time.CopyFrom(end)
    if ActionPhase(phase) == ActionPhase.SUCCEEDED:
        attempt.outputs.CopyFrom(common_pb2.OutputReferences(output_uri=prefix))
    return attempt


def run_details(record: ActionRecord, details: run_definition_pb2.ActionDetails) -> run_definition_pb2.RunDetails:
    run_spec = run_pb2.RunSpec()
    if record.run_spec:
        run_spec.ParseFromString(record.run_spec)
    return run_definition_pb2.RunDetails(run_spec=run_spec, action=details)


def log_kind(text: str) -> int:
    """Who wrote a log line: the engine's own lines (``[taskdeck] ...``) are SYSTEM, what the task printed USER."""
    return payload_pb2.LogLineOriginator.SYSTEM if text.startswith("[taskdeck]") else payload_pb2.LogLineOriginator.USER



# What a ListRequest filter may name, and the record's value it compares (as text).
ACTION_FIELDS = {
    "action_type": lambda r: str(r.action_type),
    "parent_name": lambda r: r.parent_action_name or "",
    "phase": lambda r: str(r.phase),
    "name": lambda r: r.name,
    "task_name": lambda r: r.task_name or "",
}


TASK_FIELDS = {
    "name": lambda r: r.name,
    "version": lambda r: r.version,
}


def matches(record, filters, fields=ACTION_FIELDS) -> bool:
    """A record against a ListRequest's filters (EQUAL, NOT_EQUAL, VALUE_IN, VALUE_NOT_IN, CONTAINS on the
    ``fields`` named; a filter on another field is refused: ValueError)."""
    for rule in filters:
        read = fields.get(rule.field)
        if read is None:
            raise ValueError(f"cannot filter on {rule.field!r} (only {', '.join(fields)})")
        value, wanted = read(record), list(rule.values)
        function = list_pb2.Filter.Function
        if rule.function in (function.EQUAL, function.VALUE_IN):
            ok = value in wanted
        elif rule.function in (function.NOT_EQUAL, function.VALUE_NOT_IN):
            ok = value not in wanted
        elif rule.function == function.CONTAINS:
            ok = any(w in value for w in wanted)
        else:
            raise ValueError(f"filter function {function.Name(rule.function)} is not supported")
        if not ok:
            return False
    return True
