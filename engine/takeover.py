"""What an engine that takes over a namespace does before it reconciles: give every TaskAction on the
cluster a row in its runs database.

With PostgreSQL the leader and its followers share the runs data, so there is nothing to do. With each
engine's own SQLite database, the actions the dead leader created exist only as TaskActions: the rows are
rebuilt from them (identity, task, inputs and outputs, phase, attempts, timings) and their phase history
becomes their events. What lived only in the old leader's database cannot be recovered, and is said:
the events' details (log links, errors as reported, reported times), the run and action specs, and the
task spec (so the console shows and finishes such a run, but cannot re-run it from its spec).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from flyteidl2.common import identifier_pb2
from flyteidl2.core import tasks_pb2
from flyteidl2.workflow import run_definition_pb2

from engine.actions_table import derive_action_updates
from engine.events import _set_time
from engine.model import ACTION_TYPE_CONDITION, ACTION_TYPE_TASK, TaskAction
from engine.phases import ActionPhase, Reason
from engine.store.base import ActionRecord, AlreadyExistsError, EventRecord

log = logging.getLogger(__name__)

LOST = ("the events' details (log links, errors as reported, reported times), the run and action specs and the "
        "task spec were in the previous leader's database")
_EVENT_PHASE = {
    Reason.QUEUED: ActionPhase.QUEUED, Reason.INITIALIZING: ActionPhase.INITIALIZING,
    Reason.EXECUTING: ActionPhase.RUNNING, Reason.COMPLETED: ActionPhase.SUCCEEDED,
    Reason.RETRYABLE_FAILURE: ActionPhase.FAILED, Reason.PERMANENT_FAILURE: ActionPhase.FAILED,
    Reason.ABORTED: ActionPhase.ABORTED, Reason.PLUGIN_NOT_FOUND: ActionPhase.FAILED,
    Reason.INVALID_SPEC: ActionPhase.FAILED, Reason.PAUSED: ActionPhase.PAUSED,
    Reason.SIGNALED: ActionPhase.SUCCEEDED, Reason.TIMED_OUT: ActionPhase.TIMED_OUT,
}


@dataclasses.dataclass(frozen=True)
class Rebuilt:
    run_name: str
    action_name: str
    events: int  # recovered from the phase history

    def describe(self) -> str:
        return (f"{self.run_name}/{self.action_name}: rebuilt from its TaskAction with {self.events} events from its "
                f"phase history; {LOST}")


def record_from(obj: TaskAction) -> ActionRecord:
    spec = obj.spec
    template = tasks_pb2.TaskTemplate()
    template.ParseFromString(spec.task_template or b"")
    created = obj.metadata.creation_timestamp.timestamp() if obj.metadata.creation_timestamp else time.time()
    return ActionRecord(
        project=spec.project, domain=spec.domain, run_name=spec.run_name, name=spec.action_name,
        parent_action_name=spec.parent_action_name, phase=int(ActionPhase.QUEUED),
        action_type=ACTION_TYPE_CONDITION if spec.action_type == "condition" else ACTION_TYPE_TASK,
        task_project=template.id.project or None, task_domain=template.id.domain or None,
        task_name=template.id.name or None, task_version=template.id.version or None,
        task_type=spec.task_type or template.type, short_name=spec.short_name or None,
        function_name=template.id.name.rsplit(".", 1)[-1], action_group=spec.group,
        input_uri=spec.input_uri, run_output_base=spec.run_output_base, created_at=created, updated_at=time.time(),
        attempts=max(obj.status.observed_attempts, 1),
    )


def events_from(obj: TaskAction) -> list[EventRecord]:
    """The phase history as events: one per transition, its attempt counted from the retryable failures."""
    spec, events, attempt = obj.spec, [], 1
    for version, transition in enumerate(obj.status.phase_history):
        phase = _EVENT_PHASE.get(transition.phase)
        if phase is not None:
            event = run_definition_pb2.ActionEvent(
                id=identifier_pb2.ActionIdentifier(
                    run=identifier_pb2.RunIdentifier(project=spec.project, domain=spec.domain, name=spec.run_name),
                    name=spec.action_name),
                attempt=attempt, phase=int(phase), version=version)
            _set_time(event.updated_time, transition.occurred_at)
            _set_time(event.reported_time, transition.occurred_at)
            if transition.message and phase in (ActionPhase.FAILED, ActionPhase.TIMED_OUT):
                event.error_info.CopyFrom(run_definition_pb2.ErrorInfo(message=transition.message))
            at = transition.occurred_at.timestamp()
            events.append(EventRecord(spec.project, spec.domain, spec.run_name, spec.action_name, attempt, int(phase),
                                      version, event.SerializeToString(), "", at, at))
        if transition.phase == Reason.RETRYABLE_FAILURE:
            attempt += 1
    return events


async def rebuild_missing_actions(store) -> list[Rebuilt]:
    """Rows for the TaskActions the runs database lacks (``store``: a ClusterStore), parents first."""
    runs, rebuilt = store.runs, []
    objects = sorted(await store.resources.list(), key=lambda o: (
        o.spec.parent_action_name is not None,
        o.metadata.creation_timestamp.timestamp() if o.metadata.creation_timestamp else 0.0))
    by_name = {o.name: o for o in objects}
    for obj in objects:
        key = (obj.spec.project, obj.spec.domain, obj.spec.run_name, obj.spec.action_name)
        if await runs.get_action(key) is not None:
            continue
        try:
            await runs.outbox_create_run_action(record_from(obj), None, None)
        except AlreadyExistsError:
            continue  # another writer made it meanwhile
        events = events_from(obj)
        await runs.record_events(events)
        parent = by_name.get(obj.metadata.owner_references[0].name) if obj.metadata.owner_references else None
        for update in derive_action_updates(None, obj, parent):
            await runs.update_action_status(update)
        item = Rebuilt(obj.spec.run_name, obj.spec.action_name, len(events))
        log.warning("%s", item.describe())
        rebuilt.append(item)
    return rebuilt
