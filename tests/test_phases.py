"""The phase mapping table, row by row (reference §2.4), and the actions-table guard."""

from __future__ import annotations

import datetime as dt

import pytest

from engine.model import TaskActionStatus
from engine.phases import ActionPhase, PluginPhase, Reason, may_move_phase, phase_from_conditions
from engine.plugins.core import ExecutionError, PhaseInfo
from engine.reconciler import map_phase_to_conditions

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)

# plugin phase -> (Progressing status, reason, terminal condition, phaseHistory entry, event phase, DB phase)
TABLE = [
    (PluginPhase.NOT_READY, "True", "Queued", None, "Queued", ActionPhase.QUEUED, ActionPhase.QUEUED),
    (PluginPhase.WAITING_FOR_RESOURCES, "True", "Queued", None, "Queued", ActionPhase.WAITING_FOR_RESOURCES,
     ActionPhase.QUEUED),
    (PluginPhase.QUEUED, "True", "Queued", None, "Queued", ActionPhase.QUEUED, ActionPhase.QUEUED),
    (PluginPhase.INITIALIZING, "True", "Initializing", None, "Initializing", ActionPhase.INITIALIZING,
     ActionPhase.INITIALIZING),
    (PluginPhase.RUNNING, "True", "Executing", None, "Executing", ActionPhase.RUNNING, ActionPhase.RUNNING),
    (PluginPhase.SUCCESS, "False", "Completed", "Succeeded", "Completed", ActionPhase.SUCCEEDED,
     ActionPhase.SUCCEEDED),
    (PluginPhase.RETRYABLE_FAILURE, "True", "RetryableFailure", None, "RetryableFailure", ActionPhase.FAILED,
     ActionPhase.UNSPECIFIED),
    (PluginPhase.PERMANENT_FAILURE, "False", "PermanentFailure", "Failed", "PermanentFailure", ActionPhase.FAILED,
     ActionPhase.FAILED),
    (PluginPhase.WAITING_FOR_CACHE, "True", "Queued", None, "Queued", ActionPhase.WAITING_FOR_RESOURCES,
     ActionPhase.QUEUED),
    (PluginPhase.ABORTED, "False", "Aborted", "Failed", "Aborted", ActionPhase.ABORTED, ActionPhase.FAILED),
]


@pytest.mark.parametrize("phase,progressing,reason,terminal,history,event_phase,db_phase", TABLE,
                         ids=[row[0].wire_name for row in TABLE])
def test_phase_table_row(phase, progressing, reason, terminal, history, event_phase, db_phase):
    from engine.phases import PHASE_TABLE

    info = PhaseInfo(phase, err=ExecutionError("E", "went wrong") if phase.is_failure else None)
    status = TaskActionStatus()
    map_phase_to_conditions(status, info, NOW)
    cond = status.condition("Progressing")
    assert (cond.status, cond.reason) == (progressing, reason)
    if terminal:
        assert status.condition(terminal).status == "True"
        assert status.condition(terminal).reason == reason
    else:
        assert status.condition("Succeeded") is None and status.condition("Failed") is None
    assert [h.phase for h in status.phase_history] == [history]
    assert PHASE_TABLE[phase].event_phase == event_phase
    assert phase_from_conditions(status.conditions) == db_phase
    assert (status.error_state is not None) == phase.is_failure


def test_undefined_phase_changes_nothing():
    status = TaskActionStatus()
    map_phase_to_conditions(status, PhaseInfo(PluginPhase.UNDEFINED), NOW)
    assert status.conditions == [] and status.phase_history == []


def test_plugin_phase_wire_names_match_the_go_enumer():
    assert PluginPhase.RUNNING.wire_name == "PhaseRunning"
    assert PluginPhase.WAITING_FOR_RESOURCES.wire_name == "PhaseWaitingForResources"
    assert PluginPhase.PERMANENT_FAILURE.wire_name == "PhasePermanentFailure"
    assert all(PluginPhase.from_wire_name(p.wire_name) is p for p in PluginPhase)


def test_history_appends_only_when_the_phase_changes():
    status = TaskActionStatus()
    for phase in (PluginPhase.QUEUED, PluginPhase.NOT_READY, PluginPhase.RUNNING, PluginPhase.RUNNING,
                  PluginPhase.SUCCESS):
        map_phase_to_conditions(status, PhaseInfo(phase), NOW)
    assert [h.phase for h in status.phase_history] == ["Queued", "Executing", "Completed"]


def test_last_transition_time_moves_only_when_status_flips():
    status = TaskActionStatus()
    later = NOW + dt.timedelta(seconds=5)
    map_phase_to_conditions(status, PhaseInfo(PluginPhase.QUEUED), NOW)
    map_phase_to_conditions(status, PhaseInfo(PluginPhase.RUNNING), later)
    cond = status.condition("Progressing")
    assert cond.reason == "Executing" and cond.last_transition_time == NOW


def test_condition_reasons_for_conditions_and_timeouts():
    status = TaskActionStatus()
    status.set_condition("Progressing", True, Reason.PAUSED, "waiting", NOW)
    assert phase_from_conditions(status.conditions) == ActionPhase.PAUSED
    status.set_condition("Progressing", False, Reason.TIMED_OUT, "t", NOW)
    status.set_condition("Failed", True, Reason.TIMED_OUT, "t", NOW)
    assert phase_from_conditions(status.conditions) == ActionPhase.TIMED_OUT


@pytest.mark.parametrize("current,new,allowed", [
    (ActionPhase.QUEUED, ActionPhase.RUNNING, True),
    (ActionPhase.RUNNING, ActionPhase.QUEUED, False),
    (ActionPhase.FAILED, ActionPhase.RUNNING, True),
    (ActionPhase.TIMED_OUT, ActionPhase.QUEUED, True),
    (ActionPhase.ABORTED, ActionPhase.SUCCEEDED, False),
    (ActionPhase.PAUSED, ActionPhase.SUCCEEDED, True),
    (ActionPhase.PAUSED, ActionPhase.RUNNING, False),
])
def test_actions_table_guard(current, new, allowed):
    assert may_move_phase(current, new) is allowed
