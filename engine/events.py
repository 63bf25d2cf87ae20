"""ActionEvent construction (Flyte's buildActionEvent) and decoding for display."""

from __future__ import annotations

import datetime as dt

from flyteidl2.common import identifier_pb2
from flyteidl2.core import execution_pb2
from flyteidl2.workflow import run_definition_pb2

from engine.model import TaskAction, utcnow
from engine.phases import ActionPhase
from engine.plugins.core import SYSTEM, USER, ExecutionError, PhaseInfo
from engine.store.base import EventRecord

def _set_time(field, when: dt.datetime) -> None:
    """Timestamp.FromDatetime without its slow generic path (the datetimes here are UTC-aware)."""
    ts = when.timestamp()
    seconds = int(ts // 1)
    field.seconds = seconds
    field.nanos = int(round((ts - seconds) * 1e6)) * 1000


_ERROR_KIND = {USER: run_definition_pb2.ErrorInfo.KIND_USER, SYSTEM: run_definition_pb2.ErrorInfo.KIND_SYSTEM}


def attempt_prefix(task_action: TaskAction, attempt: int) -> str:
    """``<runOutputBase>/<actionName>/<attempt>``: where an attempt writes outputs.pb / error.pb."""
    return f"{task_action.spec.run_output_base.rstrip('/')}/{task_action.spec.action_name}/{attempt}"


def build_action_event(
    task_action: TaskAction,
    phase_info: PhaseInfo,
    event_phase: ActionPhase,
    *,
    attempt: int | None = None,
    error: ExecutionError | None = None,
    updated_time: dt.datetime | None = None,
    cluster: str = "",
) -> EventRecord:
    spec, status = task_action.spec, task_action.status
    attempt = attempt or status.observed_attempts
    now = utcnow()
    if updated_time is None:
        updated_time = status.phase_history[-1].occurred_at if status.phase_history else now
    event = run_definition_pb2.ActionEvent(
        id=identifier_pb2.ActionIdentifier(
            run=identifier_pb2.RunIdentifier(project=spec.project, domain=spec.domain, name=spec.run_name),
            name=spec.action_name,
        ),
        attempt=attempt,
        phase=int(event_phase),
        version=phase_info.version,
        cluster=cluster,
        cache_status=phase_info.info.cache_status,
    )
    _set_time(event.updated_time, updated_time)
    _set_time(event.reported_time, now)
    error = error or phase_info.err
    if error is not None and event_phase in (ActionPhase.FAILED, ActionPhase.TIMED_OUT):
        event.error_info.CopyFrom(run_definition_pb2.ErrorInfo(
            message=error.message, kind=_ERROR_KIND.get(error.kind, run_definition_pb2.ErrorInfo.KIND_UNSPECIFIED),
            code=error.code,
        ))
    if spec.run_output_base:
        prefix = attempt_prefix(task_action, attempt)
        event.outputs.output_uri = f"{prefix}/outputs.pb"
        event.outputs.report_uri = f"{prefix}/report.html"
    if phase_info.info.log_path:
        event.log_info.append(execution_pb2.TaskLog(uri=phase_info.info.log_path, name="local"))
    for name, uri in (phase_info.info.custom.get("links") or {}).items():  # a cluster's UIs (Dask dashboard, ...)
        event.log_info.append(execution_pb2.TaskLog(uri=uri, name=name))
    worker = phase_info.info.custom.get("worker")
    if worker:  # which reusable worker ran the attempt: where Flyte names the pod
        event.log_context.primary_pod_name = worker
        event.log_context.pods.add(namespace=task_action.metadata.namespace, pod_name=worker,
                                   primary_container_name="worker").containers.add(container_name="worker")
    reasons = [phase_info.reason] if phase_info.reason else []
    for reason in reasons + list(phase_info.info.additional_reasons):
        cluster_event = event.cluster_events.add(message=reason)
        _set_time(cluster_event.occurred_at, phase_info.info.occurred_at or updated_time)
    return EventRecord(
        project=spec.project,
        domain=spec.domain,
        run_name=spec.run_name,
        name=spec.action_name,
        attempt=attempt,
        phase=int(event_phase),
        version=phase_info.version,
        info=event.SerializeToString(),
        error_kind=run_definition_pb2.ErrorInfo.Kind.Name(event.error_info.kind) if event.HasField("error_info") else "",
        updated_time=updated_time.timestamp(),
        reported_time=now.timestamp(),
    )


def decode_event(record: EventRecord) -> run_definition_pb2.ActionEvent:
    event = run_definition_pb2.ActionEvent()
    event.ParseFromString(record.info)
    return event
