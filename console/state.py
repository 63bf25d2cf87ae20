"""The console's store of state: rows it shows, refreshed from the engine at a bounded rate.

The engine publishes which actions changed; the console only marks them dirty. A timer (at most
``REFRESH_HZ`` times a second) re-reads what is dirty and the screens render the differences, so a run of
thousands of actions changing live costs a bounded amount of work per frame, never a rebuild per event.
"""

from __future__ import annotations

import datetime as dt
import time

from engine.client import Action, ActionPhase

REFRESH_HZ = 4

PHASE_STYLE = {
    ActionPhase.UNSPECIFIED: ("?", "?", "$text-muted"),
    ActionPhase.QUEUED: ("◌", "Q", "$text-muted"),
    ActionPhase.WAITING_FOR_RESOURCES: ("…", "W", "$warning"),
    ActionPhase.INITIALIZING: ("◔", "I", "$accent"),
    ActionPhase.RUNNING: ("●", "R", "$accent"),
    ActionPhase.SUCCEEDED: ("✓", "+", "$success"),
    ActionPhase.FAILED: ("✗", "X", "$error"),
    ActionPhase.ABORTED: ("⊘", "A", "$warning"),
    ActionPhase.TIMED_OUT: ("⧗", "T", "$error"),
    ActionPhase.PAUSED: ("⏸", "P", "$warning"),
    ActionPhase.RECOVERED: ("↺", "V", "$success"),
}


def phase_markup(phase: int, ascii_only: bool = False, with_name: bool = True) -> str:
    action_phase = ActionPhase(phase)
    glyph, fallback, style = PHASE_STYLE[action_phase]
    text = fallback if ascii_only else glyph
    name = f" {action_phase.name}" if with_name else ""
    return f"[{style}]{text}{name}[/]"


def duration_text(record: Action, now: float | None = None) -> str:
    if record.duration_ms is not None:
        seconds = record.duration_ms / 1000
    elif record.created_at:
        seconds = max((now or time.time()) - record.created_at, 0)
    else:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def started_text(record: Action) -> str:
    if not record.created_at:
        return "-"
    return dt.datetime.fromtimestamp(record.created_at).strftime("%m-%d %H:%M:%S")


def first_error_line(record: Action) -> str:
    if not record.error_message and not record.error_code:
        return ""
    text = f"{record.error_code or 'error'}: {record.error_message or ''}"
    return text.splitlines()[0][:90]


def show(widget, markup: str) -> None:
    """Put ``markup`` in a Static, repainting only on a change, and laying out again only when its shape
    changed (a layout pass recomposes the whole screen: a tick must not cost one per moving number)."""
    shown = getattr(widget, "_taskdeck_shown", None)
    if shown == markup:
        return
    same_shape = shown is not None and [len(line) for line in shown.split("\n")] == [
        len(line) for line in markup.split("\n")]  # same lines, same lengths: same wrapping, same size
    widget._taskdeck_shown = markup
    widget.update(markup, layout=not same_shape)
