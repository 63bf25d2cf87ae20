"""The processes of one locally run object (a Dask, Ray or Spark cluster and its job runner), shared by the
local operators and started through the process supervisor (``process.py``): each in its own session,
recorded in the object's status before it matters (so a later engine can tear down what an earlier one
left), and gone with its whole session at teardown. The job runner's lines are stamped into the action's
log, and it starts only on its go, once it is recorded.
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
from engine.plugins.process import STOP_GRACE_SECONDS, Supervised, kill_group, kill_session, launch, stop
from engine.plugins.task_setup import TaskProcessSetup
from engine.plugins.zygotes import sdk_entrypoint_interpreter



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
        self.processes: list[Supervised] = []
        status.setdefault("processes", [])

    async def start(self, name: str, command: list[str], extra_env: dict[str, str] | None = None,
                    log_path: Path | None = None, stamped: bool = False, gated: bool = False) -> Supervised:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        process = await launch(command, env={**self.env, **(extra_env or {})}, cwd=self.cwd,
                               log_path=log_path or self.work_dir / f"{name}.log", stamped=stamped, gated=gated)
        self.processes.append(process)
        self.status["processes"].append([process.pid, process.start_ticks])
        self.save()
        return process

    def note(self, text: str) -> None:
        """A line of the engine's in the action's log."""
        with open(self.tctx.log_path, "ab", buffering=0) as log:
            log.write(stamped(f"[taskdeck] {text}", time.time()))

    async def run_job(self, extra_env: dict[str, str]) -> int:
        """The task's entrypoint against the cluster; its exit code."""
        runner = await self.start("job-runner", self.argv, extra_env, log_path=self.tctx.log_path, stamped=True,
                                  gated=True)
        await runner.go()  # recorded: it may run
        self.tctx.enqueue_owner()
        return await runner.wait()

    def log_tail(self, name: str, size: int = 4000) -> str:
        try:
            return (self.work_dir / f"{name}.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""

    async def tear_down(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Every process of every session it started: SIGTERM, a grace period, then SIGKILL, the sessions
        included (what moved to its own group, as Ray's workers do). Cancelled midway (the engine
        stopping), it still kills everything before it gives way."""
        try:
            await asyncio.gather(*(stop(p.pid, p.wait, grace, session=True) for p in reversed(self.processes)))
        finally:
            for process in self.processes:
                kill_group(process.pid, signal.SIGKILL)
                kill_session(process.pid, signal.SIGKILL)
            for process in self.processes:
                with contextlib.suppress(ProcessLookupError, asyncio.CancelledError):
                    await asyncio.shield(process.wait())
