"""The local process supervisor every plugin that runs processes shares: launch (each process in its own
session, optionally under the launcher that stamps its lines into the action's log and gated until it is
recorded), reap, adopt (is this pid still the one we started, after an engine restart) and kill (SIGTERM,
a grace period, SIGKILL to the whole group, and to the session for what left the group)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

LAUNCHER = str(Path(__file__).with_name("launcher.py"))
STOP_GRACE_SECONDS = 3.0


class Supervised:
    """A launched process: its pid and start time, its go (when gated) and its exit."""

    def __init__(self, process: asyncio.subprocess.Process):
        self.process = process
        self.pid = process.pid
        self.start_ticks = process_start_ticks(process.pid)

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def go(self, payload: dict | None = None) -> None:
        """Let a gated process run (it is recorded), telling the launcher ``payload`` (what it does first:
        ``launcher.py``). One that is gone already is reaped as it ended."""
        stdin = self.process.stdin
        if stdin is None:
            return
        with contextlib.suppress(OSError):
            stdin.write(b"go " + json.dumps(payload, separators=(",", ":")).encode() + b"\n" if payload else b"go\n")
            await stdin.drain()
        stdin.close()

    async def wait(self) -> int:
        return await self.process.wait()


async def launch(command: list[str], *, env: dict[str, str], cwd: str, log_path: Path, stamped: bool = False,
                 gated: bool = False) -> Supervised:
    """``command`` in a new session, its output appended to ``log_path``. ``stamped``: under the launcher,
    each line stamped with its time; ``gated``: the launcher waits for ``go()`` and exits without running
    anything if the engine dies first (so nothing runs unrecorded)."""
    from engine.plugins.core import StorageFaultError

    if stamped:
        command = [sys.executable, "-I", "-S", LAUNCHER, str(log_path), "--", *command]
    try:
        out = open(log_path, "ab", buffering=0)
    except OSError as exc:
        raise StorageFaultError(str(log_path), exc) from exc
    with out:  # the child keeps its own descriptor
        process = await asyncio.create_subprocess_exec(
            *command, cwd=cwd, env=env, stdin=asyncio.subprocess.PIPE if gated else asyncio.subprocess.DEVNULL,
            stdout=out, stderr=out, start_new_session=True)
    return Supervised(process)


async def launch_helper(interpreter: str, script: str, *, env: dict[str, str], cwd: str,
                        log_path: Path) -> asyncio.subprocess.Process:
    """A helper that talks on pipes (a fork server, a reusable worker): its own session, requests on its
    stdin and replies on its stdout, its stderr into ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab", buffering=0) as log_file:
        return await asyncio.create_subprocess_exec(
            interpreter, "-P", script, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=log_file, env=env, cwd=cwd, start_new_session=True, limit=1 << 20)


async def stop(pid: int, wait_exit: Callable[[], Awaitable[object]], grace: float = STOP_GRACE_SECONDS,
               session: bool = False) -> None:
    """SIGTERM to the process group, up to ``grace`` seconds for ``wait_exit``, then SIGKILL to whatever is
    left of the group (and of the session, with ``session``). Cancelled midway, it still kills."""
    kill_group(pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(wait_exit(), grace)
    except asyncio.TimeoutError:
        pass
    finally:
        kill_group(pid, signal.SIGKILL)
        if session:
            kill_session(pid, signal.SIGKILL)


async def gone(pid: int, start_ticks: int | None, poll: float = 0.05, deadline: float | None = None) -> bool:
    """Wait until a process that is not our child (an adopted one) has exited; False at ``deadline``."""
    while alive(pid, start_ticks):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True


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
