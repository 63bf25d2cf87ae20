"""A DaskJob run on this machine the way the dask-kubernetes operator runs it on a cluster.

The scheduler (``dask scheduler``) and the worker group (``dask worker``, ``replicas`` of them, with the
group's threads and memory limit) start as local processes of the task's own interpreter, each in its own
session; ports are chosen free (``--port 0``, the dashboard on ``:0``) and read back from the scheduler
file. Then the job runner (the task's container command) starts with ``DASK_SCHEDULER_ADDRESS``, as the
operator sets it, so the task's ``distributed.Client()`` joins the cluster. ``status.jobStatus`` goes
JobCreated → ClusterCreated → Running → Successful / Failed as the operator's does, with the dashboard
link; the cluster is torn down when the job runner ends, fails or is deleted (no process is left behind).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from pathlib import Path

from engine.plugins.core import TaskExecutionContext
from engine.plugins.launcher import stamped
from engine.plugins.local_backend import LocalOperator
from engine.plugins.process import kill_group, process_start_ticks
from engine.plugins.resources import Resource
from engine.plugins.task_setup import TaskProcessSetup
from engine.plugins.zygotes import sdk_entrypoint_interpreter

log = logging.getLogger(__name__)

LAUNCHER = str(Path(__file__).with_name("launcher.py"))
SCHEDULER_START_SECONDS = 60.0
WORKERS_JOIN_SECONDS = 120.0
STOP_GRACE_SECONDS = 3.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class LocalDaskOperator(LocalOperator):
    kind = "DaskJob"

    def __init__(self, setup: TaskProcessSetup | None = None):
        self.setup = setup or TaskProcessSetup()

    async def run(self, resource: Resource, tctx: TaskExecutionContext, work_dir: Path, save) -> None:
        status = resource["status"]
        status.update(jobStatus="JobCreated", startTime=_now(), processes=[])
        save()
        argv = self.setup.argv(tctx)
        shared, own = self.setup.environment(tctx)
        env = {**shared, **own}
        interpreter = sdk_entrypoint_interpreter(argv[0]) or sys.executable
        cwd = self.setup.prepare(tctx)
        if not isinstance(cwd, str):
            status.update(jobStatus="Failed", message=cwd.reason)
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        cluster = resource["spec"]["cluster"]["spec"]
        worker_spec = cluster["worker"]["spec"]["containers"][0]
        processes: list[asyncio.subprocess.Process] = []

        async def start(name: str, command: list[str], extra_env: dict[str, str] | None = None, log_path=None,
                        gated: bool = False):
            with open(log_path or work_dir / f"{name}.log", "ab", buffering=0) as out:
                process = await asyncio.create_subprocess_exec(
                    *command, cwd=cwd, env={**env, **(extra_env or {})},
                    stdin=asyncio.subprocess.PIPE if gated else asyncio.subprocess.DEVNULL,
                    stdout=out, stderr=out, start_new_session=True)
            processes.append(process)
            status["processes"].append([process.pid, process_start_ticks(process.pid)])
            save()
            return process

        try:
            scheduler_file = work_dir / "scheduler.json"
            with contextlib.suppress(FileNotFoundError):
                scheduler_file.unlink()
            scheduler = await start("scheduler", [
                interpreter, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)])
            address, dashboard = await self._scheduler_address(scheduler, scheduler_file, work_dir)
            status.update(jobStatus="ClusterCreated", schedulerAddress=address,
                          links={"Dask dashboard": f"http://127.0.0.1:{dashboard}/status"} if dashboard else {})
            save()
            worker_args = self._worker_args(worker_spec.get("args") or [])
            replicas = int(cluster["worker"].get("replicas") or 1)
            for i in range(replicas):
                await start(f"worker-{i}", [interpreter, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                            str(scheduler_file), "--name", f"worker-{i}", "--no-dashboard",
                                            *worker_args])
            await self._workers_joined(work_dir, replicas, processes)
            with open(tctx.log_path, "ab", buffering=0) as header:
                header.write(stamped(f"[taskdeck] attempt {tctx.metadata.attempt}: local Dask cluster at {address} "
                                     f"({cluster['worker'].get('replicas')} worker(s)); dashboard "
                                     f"{status['links'].get('Dask dashboard', '-')}", time.time()))
            runner = await start("job-runner", [sys.executable, "-I", "-S", LAUNCHER, str(tctx.log_path), "--",
                                                *argv], {"DASK_SCHEDULER_ADDRESS": address},
                                 log_path=tctx.log_path, gated=True)
            await self._go(runner)
            status.update(jobStatus="Running", jobRunnerPodName=f"{resource['metadata']['name']}-runner")
            save()
            tctx.enqueue_owner()
            code = await runner.wait()
            if code == 0:
                status.update(jobStatus="Successful")
            else:
                status.update(jobStatus="Failed", message=f"the job runner exited with code {code}; see "
                                                          f"{tctx.log_path}")
        finally:
            await self._tear_down(processes)
            status["endTime"] = _now()
            save()

    @staticmethod
    async def _go(runner: asyncio.subprocess.Process) -> None:
        """The launcher waits for its go (``launcher.py``): the job runner is recorded by now."""
        with contextlib.suppress(OSError):
            runner.stdin.write(b"go\n")
            await runner.stdin.drain()
        runner.stdin.close()

    @staticmethod
    def _worker_args(args: list[str]) -> list[str]:
        """The worker group's ``--nthreads`` and ``--memory-limit``, from the DaskJob's worker args."""
        out = []
        for flag in ("--nthreads", "--memory-limit"):
            if flag in args and args.index(flag) + 1 < len(args):
                out += [flag, args[args.index(flag) + 1]]
        return out

    @staticmethod
    async def _scheduler_address(scheduler, scheduler_file: Path, work_dir: Path) -> tuple[str, int | None]:
        deadline = time.monotonic() + SCHEDULER_START_SECONDS
        while time.monotonic() < deadline:
            if scheduler.returncode is not None:
                text = (work_dir / "scheduler.log").read_text(errors="replace")[-4000:]
                if "No module named" in text and "distributed" in text:
                    raise RuntimeError("the task's Python has no dask.distributed: install TaskDeck's dask extra "
                                       "(pip install 'taskdeck[dask]') or flyteplugins-dask where the task runs")
                raise RuntimeError(f"the Dask scheduler exited ({scheduler.returncode}); see {work_dir}/scheduler.log")
            try:
                info = json.loads(scheduler_file.read_text())
                return info["address"], (info.get("services") or {}).get("dashboard")
            except (OSError, ValueError, KeyError):
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the Dask scheduler did not start in {SCHEDULER_START_SECONDS:.0f} s")

    @staticmethod
    async def _workers_joined(work_dir: Path, replicas: int, processes) -> None:
        """Until every worker has registered with the scheduler: the task sees the group it asked for."""
        deadline = time.monotonic() + WORKERS_JOIN_SECONDS
        while time.monotonic() < deadline:
            joined = 0
            for i in range(replicas):
                try:
                    joined += "Registered to:" in (work_dir / f"worker-{i}.log").read_text(errors="replace")
                except OSError:
                    pass
            if joined == replicas:
                return
            if any(p.returncode is not None for p in processes):
                raise RuntimeError(f"a Dask worker exited while starting; see {work_dir}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the Dask workers did not all join in {WORKERS_JOIN_SECONDS:.0f} s; see {work_dir}")

    @staticmethod
    async def _tear_down(processes: list[asyncio.subprocess.Process]) -> None:
        for process in reversed(processes):
            if process.returncode is None:
                kill_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in processes:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), max(deadline - time.monotonic(), 0.01))
        for process in processes:
            kill_group(process.pid, signal.SIGKILL)  # the group: nannies' children too
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
