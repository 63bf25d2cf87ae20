"""A RayJob run on this machine the way KubeRay runs it on a cluster, on one local Ray node.

``ray start --head --block`` starts the head (GCS, raylet, dashboard) with every port chosen free (none of
Ray's defaults is assumed: 6379, 8265, 10001 and 52365 may be taken by another cluster); the worker
groups become the node's logical resources (on one machine a group is a set of CPUs, not pods: the
node gets the head's CPUs plus each group's ``num-cpus`` times its replicas). Once the head answers, the
job runner (the task's entrypoint) starts with ``RAY_ADDRESS``, so the task's ``ray.init()`` joins it;
what Ray's workers print reaches the action's log through the driver. ``status.jobDeploymentStatus``
goes Initializing → Running → Complete / Failed, with the dashboard URL; the node is torn down when the
job ends, fails or is deleted.

Each node has its own authentication token, given to the head and the job runner only.

Ray's session directory lives under the system temp directory (0700, removed at teardown), not the data
directory: it holds Unix sockets, whose paths may not exceed 107 bytes, and it must never be inside the
task's code directory, which the SDK uploads to Ray as the job's working_dir (a session directory in it
made that archive include itself: 77 GB before it was stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path

from engine.plugins.core import TaskExecutionContext
from engine.plugins.local_backend import LocalOperator
from engine.plugins.local_cluster import LocalCluster, free_ports, utc_now
from engine.plugins.ray import RayPlugin
from engine.plugins.resources import Resource
from engine.plugins.task_setup import TaskProcessSetup

HEAD_START_SECONDS = 120.0
RAY_STOP_GRACE_SECONDS = 0.5  # a head on SIGTERM drains for up to 30 s; the job is over, nothing to drain


def _cpus(params: dict, default: int) -> int:
    try:
        return max(int(float(params.get("num-cpus", default))), 0)
    except (TypeError, ValueError):
        return default


class LocalRayOperator(LocalOperator):
    kind = "RayJob"
    plugin = RayPlugin()

    def mark_failed(self, status: dict, message: str) -> None:
        status.update(jobDeploymentStatus="Failed", reason="AppFailed", message=message)

    def __init__(self, setup: TaskProcessSetup | None = None, data_dir: Path | None = None):
        self.setup = setup or TaskProcessSetup()
        self.data_dir = data_dir

    def _temp_dir(self, name: str) -> Path:
        seed = f"{self.data_dir}\0{name}".encode()
        return Path(tempfile.gettempdir()) / f"taskdeck-ray-{hashlib.sha256(seed).hexdigest()[:12]}"

    async def run(self, resource: Resource, tctx: TaskExecutionContext, work_dir: Path, save) -> None:
        status = resource["status"]
        status.update(jobDeploymentStatus="Initializing", startTime=utc_now(),
                      rayClusterName=f"{resource['metadata']['name']}-raycluster")
        save()
        cluster = LocalCluster(self.setup, tctx, status, work_dir, save)
        if not isinstance(cluster.cwd, str):
            status.update(jobDeploymentStatus="Failed", reason="ValidationFailed", message=cluster.cwd.reason)
            return
        spec = resource["spec"]["rayClusterSpec"]
        head_params = spec["headGroupSpec"].get("rayStartParams") or {}
        cpus = _cpus(head_params, 1) + sum(_cpus(g.get("rayStartParams") or {}, 1) * int(g.get("replicas") or 0)
                                           for g in spec.get("workerGroupSpecs") or [])
        gcs, dashboard, client, agent, agent_grpc, runtime_env, metrics = free_ports(7)
        # Its own token: no other local user can submit work to it, and a ~/.ray/auth_token some earlier
        # Ray session left (which Ray would pick up on one side only) plays no part.
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_AUTH_TOKEN_PATH": "",
                "RAY_USAGE_STATS_ENABLED": "0"}
        temp_dir = self._temp_dir(resource["metadata"]["name"])
        temp_dir.mkdir(exist_ok=True, mode=0o700)
        if temp_dir.is_symlink() or temp_dir.stat().st_uid != os.getuid():
            raise RuntimeError(f"{temp_dir} is not this user's own directory: not using it")
        try:
            ray = str(Path(cluster.interpreter).with_name("ray"))
            if not os.path.exists(ray):
                raise RuntimeError("the task's Python has no Ray: install TaskDeck's ray extra "
                                   "(pip install 'taskdeck[ray]') or flyteplugins-ray where the task runs")
            head = await cluster.start("head", [
                ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
                "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
                "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
                "--metrics-export-port", str(metrics), "--num-cpus", str(max(cpus, 1)), "--temp-dir", str(temp_dir),
                "--disable-usage-stats"], auth)
            address = f"127.0.0.1:{gcs}"
            await self._head_ready(cluster, head, gcs)
            url = f"http://127.0.0.1:{dashboard}"
            status.update(jobDeploymentStatus="Running", jobStatus="RUNNING", dashboardURL=url,
                          links={"Ray dashboard": url})
            save()
            cluster.note(f"attempt {tctx.metadata.attempt}: local Ray node at {address} with {max(cpus, 1)} logical "
                         f"CPU(s){' (the worker groups, on this one machine)' if spec.get('workerGroupSpecs') else ''}"
                         f"; dashboard {url}")
            # every line the job's workers print reaches the action's log (Ray folds lines that differ only
            # in numbers into "[repeated Nx]" by default)
            code = await cluster.run_job({"RAY_ADDRESS": address, "RAY_DEDUP_LOGS": "0", **auth})
            if code == 0:
                final = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
            else:
                final = {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
                         "message": f"the job runner exited with code {code}; see {tctx.log_path}"}
        finally:
            await cluster.tear_down(grace=RAY_STOP_GRACE_SECONDS)
            status["endTime"] = utc_now()
            save()
            shutil.rmtree(temp_dir, ignore_errors=True)
        status.update(final)  # terminal only once the node is gone: a finished run leaves no process
        save()

    @staticmethod
    async def _head_ready(cluster: LocalCluster, head, port: int) -> None:
        deadline = time.monotonic() + HEAD_START_SECONDS
        while time.monotonic() < deadline:
            if head.returncode is not None:
                raise RuntimeError(f"the Ray head exited ({head.returncode}): "
                                   f"{cluster.log_tail('head', 600).strip().splitlines()[-1:]}; see "
                                   f"{cluster.work_dir}/head.log")
            if "Ray runtime started" in cluster.log_tail("head", 1 << 20):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the Ray head did not start in {HEAD_START_SECONDS:.0f} s; see {cluster.work_dir}")

