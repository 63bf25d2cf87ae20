"""Local processes as the plugins see them: is this pid still ours, and stopping a process group."""

from __future__ import annotations

import contextlib
import os
import sys


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot, to tell our process from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # Field 22, counted after the ")" that closes the command name.
    fields = data[data.rfind(")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def alive(pid: int, start_ticks: int | None) -> bool:
    if sys.platform.startswith("linux"):
        ticks = process_start_ticks(pid)
        if ticks is None:
            return False
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().split(b") ", 1)[1][:1] == b"Z":  # zombie: exited, not yet reaped
                    return False
        return start_ticks is None or ticks == start_ticks
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
