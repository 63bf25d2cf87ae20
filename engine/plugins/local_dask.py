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
import os
import time
from pathlib import Path

from engine.plugins.core import TaskExecutionContext
from engine.plugins.dask import DaskPlugin
from engine.plugins.local_backend import LocalOperator
from engine.plugins.local_cluster import LocalCluster, utc_now
from engine.plugins.resources import Resource
from engine.plugins.task_setup import TaskProcessSetup

log = logging.getLogger(__name__)

SCHEDULER_START_SECONDS = 60.0
WORKERS_JOIN_SECONDS = 120.0


class LocalDaskOperator(LocalOperator):
    kind = "DaskJob"
    plugin = DaskPlugin()

    def __init__(self, setup: TaskProcessSetup | None = None):
        self.setup = setup or TaskProcessSetup()

    async def run(self, resource: Resource, tctx: TaskExecutionContext, work_dir: Path, save) -> None:
        status = resource["status"]
        status.update(jobStatus="JobCreated", startTime=utc_now())
        save()
        cluster = LocalCluster(self.setup, tctx, status, work_dir, save)
        if not isinstance(cluster.cwd, str):
            status.update(jobStatus="Failed", message=cluster.cwd.reason)
            return
        spec = resource["spec"]["cluster"]["spec"]
        worker_spec = spec["worker"]["spec"]["containers"][0]
        python = cluster.interpreter
        try:
            scheduler_file = work_dir / "scheduler.json"
            with contextlib.suppress(FileNotFoundError):
                scheduler_file.unlink()
            scheduler = await cluster.start("scheduler", [
                python, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)])
            address, dashboard = await self._scheduler_address(cluster, scheduler, scheduler_file)
            status.update(jobStatus="ClusterCreated", schedulerAddress=address,
                          links={"Dask dashboard": f"http://127.0.0.1:{dashboard}/status"} if dashboard else {})
            save()
            worker_args = self._worker_args(worker_spec.get("args") or [], cluster)
            replicas = int(spec["worker"].get("replicas") or 1)
            for i in range(replicas):
                await cluster.start(f"worker-{i}", [python, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                                                    str(scheduler_file), "--name", f"worker-{i}", "--no-dashboard",
                                                    *worker_args])
            await self._workers_joined(cluster, replicas)
            cluster.note(f"attempt {tctx.metadata.attempt}: local Dask cluster at {address} ({replicas} worker(s)); "
                         f"dashboard {status['links'].get('Dask dashboard', '-')}")
            status.update(jobStatus="Running", jobRunnerPodName=f"{resource['metadata']['name']}-runner")
            save()
            code = await cluster.run_job({"DASK_SCHEDULER_ADDRESS": address})
            if code == 0:
                final = {"jobStatus": "Successful"}
            else:
                final = {"jobStatus": "Failed", "message": f"the job runner exited with code {code}; see "
                                                           f"{tctx.log_path}"}
        finally:
            await cluster.tear_down()
            status["endTime"] = utc_now()
            save()
        status.update(final)  # terminal only once the cluster is gone: a finished run leaves no process

    @staticmethod
    def _worker_args(args: list[str], cluster: LocalCluster) -> list[str]:
        """The worker group's ``--nthreads`` and ``--memory-limit``, clamped to this machine."""
        out = []
        if "--nthreads" in args and args.index("--nthreads") + 1 < len(args):
            asked = args[args.index("--nthreads") + 1]
            cores = os.cpu_count() or 1
            threads = clamp_cpus(asked, cores)
            if threads != asked:
                cluster.note(f"a Dask worker asks for {asked} CPUs; this machine has {cores}: {threads} threads")
            out += ["--nthreads", threads]
        if "--memory-limit" in args and args.index("--memory-limit") + 1 < len(args):
            asked = args[args.index("--memory-limit") + 1]
            limit = clamp_memory(asked)
            if limit != asked:
                cluster.note(f"a Dask worker asks for {asked} of memory; this machine has less: {limit}")
            out += ["--memory-limit", limit]
        return out

    @staticmethod
    async def _scheduler_address(cluster: LocalCluster, scheduler, scheduler_file: Path) -> tuple[str, int | None]:
        deadline = time.monotonic() + SCHEDULER_START_SECONDS
        while time.monotonic() < deadline:
            if scheduler.returncode is not None:
                text = cluster.log_tail("scheduler")
                if "No module named" in text and "distributed" in text:
                    raise RuntimeError("the task's Python has no dask.distributed: install TaskDeck's dask extra "
                                       "(pip install 'taskdeck[dask]') or flyteplugins-dask where the task runs")
                raise RuntimeError(f"the Dask scheduler exited ({scheduler.returncode}); see "
                                   f"{cluster.work_dir}/scheduler.log")
            try:
                info = json.loads(scheduler_file.read_text())
                return info["address"], (info.get("services") or {}).get("dashboard")
            except (OSError, ValueError, KeyError):
                await asyncio.sleep(0.1)
        raise RuntimeError(f"the Dask scheduler did not start in {SCHEDULER_START_SECONDS:.0f} s")

    @staticmethod
    async def _workers_joined(cluster: LocalCluster, replicas: int) -> None:
        """Until every worker has registered with the scheduler: the task sees the group it asked for."""
        deadline = time.monotonic() + WORKERS_JOIN_SECONDS
        while time.monotonic() < deadline:
            joined = sum("Registered to:" in cluster.log_tail(f"worker-{i}", 1 << 20) for i in range(replicas))
            if joined == replicas:
                return
            if any(p.returncode is not None for p in cluster.processes):
                raise RuntimeError(f"a Dask worker exited while starting; see {cluster.work_dir}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the Dask workers did not all join in {WORKERS_JOIN_SECONDS:.0f} s; see "
                           f"{cluster.work_dir}")


_MEMORY_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 1024, "mi": 1024 ** 2, "gi": 1024 ** 3,
                 "ti": 1024 ** 4}


def clamp_cpus(asked: str, cores: int) -> str:
    """A Kubernetes CPU quantity (``2``, ``500m``) as whole threads, at least 1 and at most ``cores``."""
    try:
        value = float(asked[:-1]) / 1000 if asked.endswith("m") else float(asked)
    except ValueError:
        return str(cores)
    return str(max(1, min(cores, int(value) or 1)))


def clamp_memory(asked: str) -> str:
    """A Kubernetes memory quantity, no larger than this machine's memory."""
    number = asked.rstrip("KMGTkmgti")
    unit = asked[len(number):].lower()
    try:
        wanted = float(number) * _MEMORY_UNITS[unit]
    except (ValueError, KeyError):
        return asked
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return asked if wanted <= total else str(int(total))
