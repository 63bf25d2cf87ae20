"""The processes of one locally run object (a Dask or Ray cluster and its job runner), shared by the local
operators: each starts in its own session, is recorded in the object's status before it matters (so a
later engine can tear down what an earlier one left), and goes with its whole process group at teardown.
The job runner runs under ``launcher.py`` (its lines stamped into the action's log) and starts only on
its go, once it is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
from pathlib import Path

from engine.plugins.core import TaskExecutionContext
from engine.plugins.launcher import stamped
from engine.plugins.process import kill_group, kill_session, process_start_ticks
from engine.plugins.task_setup import TaskProcessSetup
from engine.plugins.zygotes import sdk_entrypoint_interpreter

LAUNCHER = str(Path(__file__).with_name("launcher.py"))
STOP_GRACE_SECONDS = 3.0


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class LocalCluster:
    def __init__(self, setup: TaskProcessSetup, tctx: TaskExecutionContext, status: dict, work_dir: Path, save):
        self.tctx = tctx
        self.status = status
        self.work_dir = work_dir
        self.save = save
        self.argv = setup.argv(tctx)
        shared, own = setup.environment(tctx)
        self.env = {**shared, **own}
        self.interpreter = sdk_entrypoint_interpreter(self.argv[0]) or sys.executable
        self.cwd = setup.prepare(tctx)  # a str, or the PhaseInfo of a failure
        self.processes: list[asyncio.subprocess.Process] = []
        status.setdefault("processes", [])

    async def start(self, name: str, command: list[str], extra_env: dict[str, str] | None = None,
                    log_path: Path | None = None, gated: bool = False) -> asyncio.subprocess.Process:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path or self.work_dir / f"{name}.log", "ab", buffering=0) as out:
            process = await asyncio.create_subprocess_exec(
                *command, cwd=self.cwd, env={**self.env, **(extra_env or {})},
                stdin=asyncio.subprocess.PIPE if gated else asyncio.subprocess.DEVNULL,
                stdout=out, stderr=out, start_new_session=True)
        self.processes.append(process)
        self.status["processes"].append([process.pid, process_start_ticks(process.pid)])
        self.save()
        return process

    def note(self, text: str) -> None:
        """A line of the engine's in the action's log."""
        with open(self.tctx.log_path, "ab", buffering=0) as log:
            log.write(stamped(f"[taskdeck] {text}", time.time()))

    async def run_job(self, extra_env: dict[str, str]) -> int:
        """The task's entrypoint against the cluster; its exit code."""
        runner = await self.start("job-runner", [sys.executable, "-I", "-S", LAUNCHER, str(self.tctx.log_path), "--",
                                                 *self.argv], extra_env, log_path=self.tctx.log_path, gated=True)
        with contextlib.suppress(OSError):  # recorded: it may run
            runner.stdin.write(b"go\n")
            await runner.stdin.drain()
        runner.stdin.close()
        self.tctx.enqueue_owner()
        return await runner.wait()

    def log_tail(self, name: str, size: int = 4000) -> str:
        try:
            return (self.work_dir / f"{name}.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""

    async def tear_down(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM, a grace period, then SIGKILL to every process of every session it started. Cancelled
        midway (the engine stopping), it still kills everything before it gives way."""
        try:
            for process in reversed(self.processes):
                if process.returncode is None:
                    kill_group(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for process in self.processes:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(process.wait(), max(deadline - time.monotonic(), 0.01))
        finally:
            for process in self.processes:
                kill_group(process.pid, signal.SIGKILL)
                kill_session(process.pid, signal.SIGKILL)  # what moved to its own group (Ray's workers)
            for process in self.processes:
                with contextlib.suppress(ProcessLookupError, asyncio.CancelledError):
                    await asyncio.shield(process.wait())
