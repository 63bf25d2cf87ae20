"""Local processes as the plugins see them: is this pid still ours, and stopping a process group."""

from __future__ import annotations

import contextlib
import os
import sys


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, from one read of its stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # Fields 3 and 22, counted after the ")" that closes the command name.
    fields = data[data.rfind(")") + 2:].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU a process has used so far (all its threads), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
        fields = data[data.rfind(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot, to tell our process from a reused pid."""
    stat = _stat(pid)
    return stat[1] if stat is not None else None


def alive(pid: int, start_ticks: int | None) -> bool:
    if sys.platform.startswith("linux"):
        stat = _stat(pid)
        if stat is None or stat[0] == "Z":  # gone, or a zombie: exited, not yet reaped
            return False
        return start_ticks is None or stat[1] == start_ticks
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def session_members(sid: int) -> list[int]:
    """Every live process of session ``sid`` (its leader's descendants, whatever their process group)."""
    members = []
    for entry in os.listdir("/proc") if sys.platform.startswith("linux") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
            fields = data[data.rfind(")") + 2:].split()
            if int(fields[3]) == sid:
                members.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return members


def kill_session(sid: int, sig: int) -> None:
    """``sig`` to every process of a session: daemons that moved to their own process group too."""
    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
