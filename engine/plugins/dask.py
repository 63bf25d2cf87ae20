"""The Dask plugin (Flyte's ``plugins/k8s/dask/dask.go``): a task of type ``dask`` becomes a DaskJob of the
dask-kubernetes operator, with a job runner (the task's own container), a scheduler and a worker group.

The job's ``custom`` is the SDK's DaskJob proto as JSON (``flyteplugins-dask``). Phases follow the
operator's ``status.jobStatus`` through Flyte's table; on this machine the local backend runs the DaskJob
as the operator would (``local_dask.py``).
"""

from __future__ import annotations

import copy
import urllib.parse

from flyteidl2.plugins import dask_pb2

from engine.plugins.core import PhaseInfo, TaskExecutionContext, TaskExecutionMetadata, TaskInfo
from engine.plugins.k8s_config import K8sConfig
from engine.plugins.log_links import render_link
from engine.plugins.podspec import resource_requirements, to_pod_spec
from engine.plugins.resources import PodRef, Resource, ResourcePlugin, custom_config

API_VERSION = "kubernetes.dask.org/v1"
KIND = "DaskJob"
SCHEDULER_PORT, DASHBOARD_PORT = 8786, 8787


def dashboard_prefix(template: str, tctx: TaskExecutionContext) -> str:
    """Flyte's ``dashboardPrefixFromLogConfig``: the path of the configured DASHBOARD link, minus "/status"."""
    if not template:
        return ""
    path = urllib.parse.urlparse(render_link(template, tctx)).path
    return path.removesuffix("/status")


class DaskPlugin(ResourcePlugin):
    id = "dask"
    task_types = ("dask",)

    def build_identity_resource(self, metadata: TaskExecutionMetadata) -> Resource:
        return {"apiVersion": API_VERSION, "kind": KIND}

    def __init__(self, k8s: K8sConfig | None = None):
        self.k8s = k8s or K8sConfig()

    def build_resource(self, tctx: TaskExecutionContext) -> Resource:
        job = custom_config(tctx, dask_pb2.DaskJob(), "Dask")
        task_pod = to_pod_spec(tctx, self.k8s)  # workers follow the task's interruptibility
        fixed_pod = to_pod_spec(tctx, self.k8s, interruptible=False)  # scheduler and job runner never do
        image = task_pod.primary["image"]

        workers = job.workers
        worker_pod = task_pod.copy()
        worker = worker_pod.rename_primary("dask-worker")
        worker["image"] = workers.image or image
        resources = resource_requirements(workers.resources) or worker.get("resources")
        worker["args"] = ["dask", "worker", "--name", "$(DASK_WORKER_NAME)"]
        worker.pop("command", None)
        if resources:
            worker["resources"] = resources
            limits = resources.get("limits", {})
            if "cpu" in limits:
                worker["args"] += ["--nthreads", str(limits["cpu"])]
            if "memory" in limits:
                worker["args"] += ["--memory-limit", str(limits["memory"])]
        worker_pod.spec["restartPolicy"] = "Always"

        scheduler_pod = fixed_pod.copy()
        scheduler = scheduler_pod.rename_primary("scheduler")
        scheduler["image"] = job.scheduler.image or image
        scheduler.pop("command", None)
        scheduler["args"] = ["dask", "scheduler"]
        prefix = dashboard_prefix(self.k8s.dask_dashboard_template, tctx)
        if prefix:
            scheduler["args"] += ["--dashboard-prefix", prefix]
        scheduler["ports"] = [{"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
                              {"name": "dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"}]
        scheduler.setdefault("readinessProbe", {"httpGet": {"port": "dashboard"}, "initialDelaySeconds": 5,
                                                "periodSeconds": 5, "failureThreshold": 30})
        scheduler_resources = resource_requirements(job.scheduler.resources)
        if scheduler_resources:
            scheduler["resources"] = scheduler_resources
        scheduler_pod.spec["restartPolicy"] = "Always"

        runner_pod = fixed_pod.copy()
        runner_pod.rename_primary("job-runner")
        runner_pod.spec["restartPolicy"] = "Never"

        cluster_name = tctx.metadata.generated_name.lower()
        return {
            "apiVersion": API_VERSION, "kind": KIND, "metadata": task_pod.metadata,
            "spec": {
                "job": {"spec": runner_pod.spec},
                # Flyte also sets spec.cluster.metadata; the CRD has no such field, so the API server prunes
                # it (and strict field validation refuses it): left out.
                "cluster": {"spec": {
                    "worker": {"replicas": max(int(workers.number_of_workers or 1), 1), "spec": worker_pod.spec},
                    "scheduler": {
                        "spec": scheduler_pod.spec,
                        "service": {"type": "NodePort",
                                    "selector": {"dask.org/cluster-name": cluster_name,
                                                 "dask.org/component": "scheduler"},
                                    "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT,
                                               "targetPort": "tcp-comm"},
                                              {"name": "dashboard", "protocol": "TCP", "port": DASHBOARD_PORT,
                                               "targetPort": "dashboard"}]},
                    },
                }},
            },
        }

    def related_pods(self, resource: Resource) -> list[PodRef]:
        runner = (resource.get("status") or {}).get("jobRunnerPodName")
        return [PodRef("job-runner", name=runner)] if runner else []

    def log_pods(self, resource: Resource) -> list[PodRef]:
        return self.related_pods(resource)

    def get_task_phase(self, tctx: TaskExecutionContext, resource: Resource) -> PhaseInfo:
        status = resource.get("status") or {}
        job_status = status.get("jobStatus", "")
        links = copy.deepcopy(status.get("links") or {})  # where the local operator says its UIs are
        info = TaskInfo(log_path=str(tctx.log_path), custom={"jobStatus": job_status, "links": links,
                                                             "jobRunnerPodName": status.get("jobRunnerPodName")})
        if job_status == "":
            return PhaseInfo.initializing(reason="unknown", info=info)
        if job_status == "JobCreated":
            return PhaseInfo.initializing(reason="job created", info=info)
        if job_status == "ClusterCreated":
            return PhaseInfo.initializing(reason="cluster created", info=info)
        if job_status == "Failed":
            return PhaseInfo.retryable_failure("DownstreamSystemError", status.get("message") or "Dask Job failed",
                                               info)
        if job_status == "Successful":
            return PhaseInfo.success(info)
        return PhaseInfo.running(info=info, reason=status.get("message", ""))

    def is_terminal(self, resource: Resource) -> bool:
        return (resource.get("status") or {}).get("jobStatus") in ("Successful", "Failed")

    def get_completion_time(self, resource: Resource) -> str | None:
        return (resource.get("status") or {}).get("endTime")
