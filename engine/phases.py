"""The three phase vocabularies of the Flyte v2 executor and the one table that maps between them.

1. plugin phases (``PluginPhase``, stored in ``status.pluginPhase`` as ``"PhaseRunning"`` etc.);
2. condition reasons, which are also the names written to ``status.phaseHistory``;
3. ``flyteidl2.common.ActionPhase``, used in ActionEvents and the actions table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from flyteidl2.common import phase_pb2


class PluginPhase(IntEnum):
    UNDEFINED = 0
    NOT_READY = 1
    WAITING_FOR_RESOURCES = 2
    QUEUED = 3
    INITIALIZING = 4
    RUNNING = 5
    SUCCESS = 6
    RETRYABLE_FAILURE = 7
    PERMANENT_FAILURE = 8
    WAITING_FOR_CACHE = 9
    ABORTED = 10

    @property
    def wire_name(self) -> str:
        """The Go enumer string, e.g. ``PhaseWaitingForResources``."""
        return "Phase" + "".join(part.capitalize() for part in self.name.split("_"))

    @classmethod
    def from_wire_name(cls, name: str) -> PluginPhase:
        return _BY_WIRE_NAME.get(name, cls.UNDEFINED)

    @property
    def is_terminal(self) -> bool:
        return self in (PluginPhase.SUCCESS, PluginPhase.RETRYABLE_FAILURE, PluginPhase.PERMANENT_FAILURE,
                        PluginPhase.ABORTED)

    @property
    def is_failure(self) -> bool:
        return self in (PluginPhase.RETRYABLE_FAILURE, PluginPhase.PERMANENT_FAILURE)


_BY_WIRE_NAME = {p.wire_name: p for p in PluginPhase}


class ActionPhase(IntEnum):
    """Mirror of ``flyteidl2.common.ActionPhase``; the numeric order matters for the actions-table guard."""

    UNSPECIFIED = phase_pb2.ACTION_PHASE_UNSPECIFIED
    QUEUED = phase_pb2.ACTION_PHASE_QUEUED
    WAITING_FOR_RESOURCES = phase_pb2.ACTION_PHASE_WAITING_FOR_RESOURCES
    INITIALIZING = phase_pb2.ACTION_PHASE_INITIALIZING
    RUNNING = phase_pb2.ACTION_PHASE_RUNNING
    SUCCEEDED = phase_pb2.ACTION_PHASE_SUCCEEDED
    FAILED = phase_pb2.ACTION_PHASE_FAILED
    ABORTED = phase_pb2.ACTION_PHASE_ABORTED
    TIMED_OUT = phase_pb2.ACTION_PHASE_TIMED_OUT
    PAUSED = phase_pb2.ACTION_PHASE_PAUSED
    RECOVERED = phase_pb2.ACTION_PHASE_RECOVERED

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_ACTION_PHASES


TERMINAL_ACTION_PHASES = frozenset(
    {ActionPhase.SUCCEEDED, ActionPhase.FAILED, ActionPhase.ABORTED, ActionPhase.TIMED_OUT, ActionPhase.RECOVERED}
)


class Reason:
    """Condition reasons (also the phaseHistory vocabulary)."""

    QUEUED = "Queued"
    INITIALIZING = "Initializing"
    EXECUTING = "Executing"
    COMPLETED = "Completed"
    RETRYABLE_FAILURE = "RetryableFailure"
    PERMANENT_FAILURE = "PermanentFailure"
    ABORTED = "Aborted"
    PLUGIN_NOT_FOUND = "PluginNotFound"
    INVALID_SPEC = "InvalidSpec"
    PAUSED = "Paused"
    SIGNALED = "Signaled"
    TIMED_OUT = "TimedOut"


class ConditionType:
    PROGRESSING = "Progressing"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class PhaseMapping:
    """One row of the executor's mapping table (reference §2.4)."""

    reason: str | None  # None: conditions and phaseHistory stay unchanged
    progressing: bool
    terminal_condition: str | None  # "Succeeded" / "Failed" set True, or None
    event_phase: ActionPhase


PHASE_TABLE: dict[PluginPhase, PhaseMapping] = {
    PluginPhase.UNDEFINED: PhaseMapping(None, True, None, ActionPhase.UNSPECIFIED),
    PluginPhase.NOT_READY: PhaseMapping(Reason.QUEUED, True, None, ActionPhase.QUEUED),
    PluginPhase.WAITING_FOR_RESOURCES: PhaseMapping(Reason.QUEUED, True, None, ActionPhase.WAITING_FOR_RESOURCES),
    PluginPhase.QUEUED: PhaseMapping(Reason.QUEUED, True, None, ActionPhase.QUEUED),
    PluginPhase.INITIALIZING: PhaseMapping(Reason.INITIALIZING, True, None, ActionPhase.INITIALIZING),
    PluginPhase.RUNNING: PhaseMapping(Reason.EXECUTING, True, None, ActionPhase.RUNNING),
    PluginPhase.SUCCESS: PhaseMapping(Reason.COMPLETED, False, ConditionType.SUCCEEDED, ActionPhase.SUCCEEDED),
    PluginPhase.RETRYABLE_FAILURE: PhaseMapping(Reason.RETRYABLE_FAILURE, True, None, ActionPhase.FAILED),
    PluginPhase.PERMANENT_FAILURE: PhaseMapping(
        Reason.PERMANENT_FAILURE, False, ConditionType.FAILED, ActionPhase.FAILED
    ),
    PluginPhase.WAITING_FOR_CACHE: PhaseMapping(Reason.QUEUED, True, None, ActionPhase.WAITING_FOR_RESOURCES),
    PluginPhase.ABORTED: PhaseMapping(Reason.ABORTED, False, ConditionType.FAILED, ActionPhase.ABORTED),
}

# What the actions informer derives for the actions table from a True condition (GetPhaseFromConditions).
_PROGRESSING_REASON_TO_DB = {
    Reason.QUEUED: ActionPhase.QUEUED,
    Reason.INITIALIZING: ActionPhase.INITIALIZING,
    Reason.EXECUTING: ActionPhase.RUNNING,
    Reason.PAUSED: ActionPhase.PAUSED,
}


def phase_from_conditions(conditions) -> ActionPhase:
    """The actions-table phase for a TaskAction's conditions, first True match in list order.

    ``RetryableFailure`` has no mapping (UNSPECIFIED, which callers skip), WAITING_FOR_RESOURCES never
    appears here (it is QUEUED), and a Failed condition is FAILED unless the reason is TimedOut.
    """
    for cond in conditions:
        if cond.status != "True":
            continue
        if cond.type == ConditionType.PROGRESSING:
            return _PROGRESSING_REASON_TO_DB.get(cond.reason, ActionPhase.UNSPECIFIED)
        if cond.type == ConditionType.SUCCEEDED:
            return ActionPhase.SUCCEEDED
        if cond.type == ConditionType.FAILED:
            return ActionPhase.TIMED_OUT if cond.reason == Reason.TIMED_OUT else ActionPhase.FAILED
    return ActionPhase.UNSPECIFIED


def may_move_phase(current: ActionPhase, new: ActionPhase) -> bool:
    """The actions-table monotonic guard (reference §4.6).

    Phases move forward by enum number, except that FAILED and TIMED_OUT may be left (retries) and
    PAUSED may settle into a terminal phase.
    """
    if current <= new:
        return True
    if current in (ActionPhase.FAILED, ActionPhase.TIMED_OUT):
        return True
    return current == ActionPhase.PAUSED and new in TERMINAL_ACTION_PHASES
