"""The Ray plugin (Flyte's ``plugins/k8s/ray/ray.go``): a task of type ``ray`` becomes a KubeRay RayJob
(ray.io/v1) with a head group, the worker groups the task asks for and a submitter pod, and its phase is
read from ``status.jobDeploymentStatus``.

The job's ``custom`` is the SDK's RayJob proto as JSON (``flyteplugins-ray``: ``RayJobConfig``).
"""

from __future__ import annotations

import copy

from flyteidl2.core import execution_pb2
from flyteidl2.plugins import ray_pb2

from engine.plugins.core import PhaseInfo, PluginError, TaskExecutionContext, TaskExecutionMetadata, TaskInfo
from engine.plugins.outcome import CorruptErrorFileError, read_error_file
from engine.plugins.podspec import to_pod_spec
from engine.plugins.resources import Resource, ResourcePlugin, ResourceProperties, custom_config

API_VERSION = "ray.io/v1"
KIND = "RayJob"
PORTS = [{"name": "redis", "containerPort": 6379}, {"name": "head", "containerPort": 10001},
         {"name": "dashboard", "containerPort": 8265}]
DEFAULT_TTL_SECONDS = 3600


def _field_env(name: str, path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _error_file_recoverable(tctx: TaskExecutionContext) -> bool | None:
    """Whether the attempt's error.pb says RECOVERABLE (None: there is no readable one)."""
    try:
        error = read_error_file(tctx.output_prefix)
    except CorruptErrorFileError:
        return None
    return None if error is None else error.kind == execution_pb2.ContainerError.RECOVERABLE


class RayPlugin(ResourcePlugin):
    id = "ray"
    task_types = ("ray",)
    properties = ResourceProperties(generated_name_max_length=47)

    def build_identity_resource(self, metadata: TaskExecutionMetadata) -> Resource:
        return {"apiVersion": API_VERSION, "kind": KIND}

    def build_resource(self, tctx: TaskExecutionContext) -> Resource:
        job = custom_config(tctx, ray_pb2.RayJob(), "Ray")
        base = to_pod_spec(tctx, container_name="ray-head", restart_policy="Never")
        primary = base["containers"][0]
        entrypoint = " ".join(primary.get("args") or primary.get("command") or [])
        cluster = job.ray_cluster

        head = copy.deepcopy(primary)
        head.pop("args", None)
        head.pop("command", None)
        head["env"] = head["env"] + [_field_env("MY_POD_IP", "status.podIP"), {"name": "RAY_COLOR_PREFIX", "value": "0"},
                                     {"name": "RAY_DATA_DISABLE_PROGRESS_BARS", "value": "1"}]
        head["ports"] = copy.deepcopy(PORTS)
        head_params = dict(cluster.head_group_spec.ray_start_params)
        head_params.setdefault("include-dashboard", "true")
        head_params.setdefault("node-ip-address", "$MY_POD_IP")
        head_params.setdefault("dashboard-host", "0.0.0.0")
        head_params.setdefault("disable-usage-stats", "true")

        workers = []
        for group in cluster.worker_group_spec:
            worker = copy.deepcopy(primary)
            worker["name"] = "ray-worker"
            worker.pop("args", None)
            worker.pop("command", None)
            worker["env"] = worker["env"] + [
                {"name": "RAY_DISABLE_DOCKER_CPU_WARNING", "value": "1"}, {"name": "TYPE", "value": "worker"},
                _field_env("MY_POD_NAME", "metadata.name"), _field_env("MY_POD_IP", "status.podIP")]
            worker["ports"] = copy.deepcopy(PORTS)
            worker["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}
            params = dict(group.ray_start_params)
            params.setdefault("node-ip-address", "$MY_POD_IP")
            replicas = group.replicas
            workers.append({
                "groupName": group.group_name or "default", "replicas": replicas,
                "minReplicas": min(group.min_replicas, replicas), "maxReplicas": max(group.max_replicas, replicas),
                "rayStartParams": params,
                "template": {"spec": {"containers": [worker], "restartPolicy": "Never"}},
            })

        submitter = {"name": "ray-job-submitter", "image": head["image"],
                     "resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                                   "requests": {"cpu": "500m", "memory": "200Mi"}}}
        spec = {
            "entrypoint": entrypoint,
            "shutdownAfterJobFinishes": True,  # Flyte's config default; a task can only ask for it too
            "ttlSecondsAfterFinished": job.ttl_seconds_after_finished or DEFAULT_TTL_SECONDS,
            "submissionMode": "K8sJobMode",
            "rayClusterSpec": {
                "headGroupSpec": {"rayStartParams": head_params, "serviceType": "NodePort", "enableIngress": True,
                                  "template": {"spec": {"containers": [head], "restartPolicy": "Never"}}},
                "workerGroupSpecs": workers,
                "enableInTreeAutoscaling": cluster.enable_autoscaling,
            },
            "submitterPodTemplate": {"spec": {"containers": [submitter], "restartPolicy": "Never",
                                              "enableServiceLinks": False}},
        }
        if job.runtime_env_yaml:
            spec["runtimeEnvYAML"] = job.runtime_env_yaml
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {}, "spec": spec}

    def get_task_phase(self, tctx: TaskExecutionContext, resource: Resource) -> PhaseInfo:
        status = resource.get("status") or {}
        deployment = status.get("jobDeploymentStatus", "")
        links = dict(status.get("links") or {})
        if status.get("jobStatus") == "RUNNING" and status.get("dashboardURL"):
            links["Ray Dashboard"] = status["dashboardURL"]
        info = TaskInfo(log_path=str(tctx.log_path), custom={"jobDeploymentStatus": deployment,
                                                             "rayClusterName": status.get("rayClusterName"),
                                                             "links": links})
        if deployment == "":
            return PhaseInfo.queued(reason="Scheduling", info=info)
        if deployment == "Initializing":
            return PhaseInfo.initializing(reason="cluster is creating", info=info)
        if deployment == "Running":
            return PhaseInfo.running(info=info)
        if deployment == "Complete":
            return PhaseInfo.success(info)
        if deployment == "Suspending":
            return PhaseInfo.queued(reason="cluster is about to be suspended", info=info)
        if deployment == "Suspended":
            return PhaseInfo.queued(reason="cluster is suspended", info=info)
        if deployment == "Failed":
            reason, message = status.get("reason", ""), status.get("message", "")
            text = f"Failed to run Ray job {resource['metadata']['name']} with error: [{reason}] {message}"
            recoverable = _error_file_recoverable(tctx)
            if recoverable is None and reason == "JobDeploymentStatusTransitionGracePeriodExceeded":
                return PhaseInfo.system_retryable_failure(reason, text, info)
            if recoverable:  # the task's own error file says it may be retried
                return PhaseInfo.retryable_failure("TaskFailedWithError", text, info)
            return PhaseInfo.failure("TaskFailedWithError", text, info)
        # ValidationFailed, Retrying, Waiting: Flyte does not handle these (it reports an error); so do we
        raise PluginError(f"unknown job deployment status {deployment!r}", code="UnknownDeploymentStatus")

    def is_terminal(self, resource: Resource) -> bool:
        return (resource.get("status") or {}).get("jobDeploymentStatus") in ("Complete", "Failed")

    def get_completion_time(self, resource: Resource) -> str | None:
        status = resource.get("status") or {}
        return status.get("endTime") or status.get("startTime") or (resource.get("metadata") or {}).get(
            "creationTimestamp")
