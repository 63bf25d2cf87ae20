"""The Dask plugin (Flyte's ``plugins/k8s/dask/dask.go``): a task of type ``dask`` becomes a DaskJob of the
dask-kubernetes operator, with a job runner (the task's own container), a scheduler and a worker group.

The job's ``custom`` is the SDK's DaskJob proto as JSON (``flyteplugins-dask``). Phases follow the
operator's ``status.jobStatus`` through Flyte's table; on this machine the local backend runs the DaskJob
as the operator would (``local_dask.py``).
"""

from __future__ import annotations

import copy

from flyteidl2.plugins import dask_pb2

from engine.plugins.core import PhaseInfo, TaskExecutionContext, TaskExecutionMetadata, TaskInfo
from engine.plugins.podspec import resource_requirements, to_pod_spec
from engine.plugins.resources import Resource, ResourcePlugin, custom_config

API_VERSION = "kubernetes.dask.org/v1"
KIND = "DaskJob"
SCHEDULER_PORT, DASHBOARD_PORT = 8786, 8787


class DaskPlugin(ResourcePlugin):
    id = "dask"
    task_types = ("dask",)

    def build_identity_resource(self, metadata: TaskExecutionMetadata) -> Resource:
        return {"apiVersion": API_VERSION, "kind": KIND}

    def build_resource(self, tctx: TaskExecutionContext) -> Resource:
        job = custom_config(tctx, dask_pb2.DaskJob(), "Dask")
        runner = to_pod_spec(tctx, container_name="job-runner", restart_policy="Never")
        base = runner["containers"][0]
        image = base["image"]

        workers = job.workers
        worker = {"name": "dask-worker", "image": workers.image or image, "env": base["env"],
                  "args": ["dask", "worker", "--name", "$(DASK_WORKER_NAME)"]}
        resources = resource_requirements(workers.resources) or base.get("resources")
        if resources:
            worker["resources"] = resources
            limits = resources.get("limits", {})
            if "cpu" in limits:
                worker["args"] += ["--nthreads", str(limits["cpu"])]
            if "memory" in limits:
                worker["args"] += ["--memory-limit", str(limits["memory"])]

        scheduler = {"name": "scheduler", "image": job.scheduler.image or image, "args": ["dask", "scheduler"],
                     "ports": [{"name": "tcp-comm", "containerPort": SCHEDULER_PORT, "protocol": "TCP"},
                               {"name": "dashboard", "containerPort": DASHBOARD_PORT, "protocol": "TCP"}],
                     "readinessProbe": {"httpGet": {"port": "dashboard", "path": "/health"},
                                        "initialDelaySeconds": 5, "periodSeconds": 5, "failureThreshold": 30}}
        scheduler_resources = resource_requirements(job.scheduler.resources) or base.get("resources")
        if scheduler_resources:
            scheduler["resources"] = scheduler_resources

        return {
            "apiVersion": API_VERSION, "kind": KIND, "metadata": {},
            "spec": {
                "job": {"spec": runner},
                # Flyte also sets spec.cluster.metadata; the CRD has no such field, so the API server prunes
                # it (and strict field validation refuses it): left out.
                "cluster": {"spec": {
                    "worker": {"replicas": max(int(workers.number_of_workers or 1), 1),
                               "spec": {"containers": [worker], "restartPolicy": "Always"}},
                    "scheduler": {
                        "spec": {"containers": [scheduler], "restartPolicy": "Always"},
                        "service": {"type": "NodePort", "selector": {"dask.org/component": "scheduler"},
                                    "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": SCHEDULER_PORT,
                                               "targetPort": "tcp-comm"},
                                              {"name": "dashboard", "protocol": "TCP", "port": DASHBOARD_PORT,
                                               "targetPort": "dashboard"}]},
                    },
                }},
            },
        }

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
