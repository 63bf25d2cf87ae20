"""How the actions table follows the TaskActions (Flyte's actions-service informer), as a pure function.

The embedded store applies it inside the transaction that writes the TaskAction, so the table can never
lag the resources, even after a crash; a Kubernetes-backed store would call it from an informer.

As in Flyte: the phase comes from the conditions (first True match), RetryableFailure (UNSPECIFIED) is
skipped, a deleted non-terminal TaskAction is ABORTED, the first sight of a child promotes its parent to
RUNNING, and the table's monotonic guard decides what sticks.
"""

from __future__ import annotations

from engine.model import TaskAction
from engine.phases import ActionPhase, ConditionType, phase_from_conditions
from engine.store.base import ActionKey, ActionStatusUpdate


def action_key(obj: TaskAction) -> ActionKey:
    spec = obj.spec
    return (spec.project, spec.domain, spec.run_name, spec.action_name)


def _observed(obj: TaskAction) -> tuple[int, int, int]:
    return (int(phase_from_conditions(obj.status.conditions)), obj.status.observed_attempts, obj.status.cache_status)


def _running_or_later(obj: TaskAction | None) -> bool:
    if obj is None:
        return False
    phase = phase_from_conditions(obj.status.conditions)
    return phase >= ActionPhase.RUNNING and phase != ActionPhase.PAUSED


def status_update(obj: TaskAction, phase: ActionPhase) -> ActionStatusUpdate:
    status = obj.status
    error = status.error_state if phase in (ActionPhase.FAILED, ActionPhase.TIMED_OUT) else None
    end_time = None
    for type_ in (ConditionType.SUCCEEDED, ConditionType.FAILED):
        cond = status.condition(type_)
        if cond is not None and cond.status == "True":
            end_time = cond.last_transition_time.timestamp()
    if phase == ActionPhase.ABORTED and obj.metadata.deletion_timestamp is not None:
        end_time = obj.metadata.deletion_timestamp.timestamp()
    created = obj.metadata.creation_timestamp
    return ActionStatusUpdate(
        key=action_key(obj),
        phase=int(phase),
        attempts=status.observed_attempts,
        cache_status=status.cache_status,
        start_time=created.timestamp() if created else None,
        end_time=end_time,
        error_kind=error.kind if error else None,
        error_code=error.code if error else None,
        error_message=error.message if error else None,
    )


def derive_action_updates(old: TaskAction | None, new: TaskAction | None,
                          parent: TaskAction | None = None) -> list[ActionStatusUpdate]:
    """The actions-table updates implied by one TaskAction change (``new`` None: deleted).

    ``parent`` is the new child's parent, when known: its promotion is skipped when its own conditions
    already put it at RUNNING or later (the table follows the conditions, so it is there already).
    """
    if new is None:
        if old is None or old.status.is_terminal:
            return []
        return [status_update(old, ActionPhase.ABORTED)]
    updates = []
    if old is None and new.spec.parent_action_name and not _running_or_later(parent):
        spec = new.spec
        parent = (spec.project, spec.domain, spec.run_name, spec.parent_action_name)
        updates.append(ActionStatusUpdate(parent, int(ActionPhase.RUNNING), 1))
    observed = _observed(new)
    if old is not None and _observed(old) == observed:
        return updates
    phase = ActionPhase(observed[0])
    if phase != ActionPhase.UNSPECIFIED:
        updates.append(status_update(new, phase))
    return updates
