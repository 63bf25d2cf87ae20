"""The Ray plugin (Flyte's ``plugins/k8s/ray/ray.go``): a task of type ``ray`` becomes a KubeRay RayJob
(ray.io/v1) with a head group, the worker groups the task asks for and a submitter pod, and its phase is
read from ``status.jobDeploymentStatus``.

The job's ``custom`` is the SDK's RayJob proto as JSON (``flyteplugins-ray``: ``RayJobConfig``).
"""

from __future__ import annotations

import copy
import shlex

from flyteidl2.core import execution_pb2
from flyteidl2.plugins import ray_pb2
from google.protobuf import json_format

from engine.plugins.core import PhaseInfo, PluginError, TaskExecutionContext, TaskExecutionMetadata, TaskInfo
from engine.plugins.outcome import CorruptErrorFileError, read_error_file
from engine.plugins.k8s_config import K8sConfig
from engine.plugins.podspec import (
    PodParts,
    add_extended_resource_tolerations,
    apply_platform_scheduling_constraints,
    merge_overlay_pod_spec,
    service_account,
    to_pod_spec,
)
from engine.plugins.resources import PodRef, Resource, ResourcePlugin, ResourceProperties, custom_config
from engine.plugins.task_target import integral

API_VERSION = "ray.io/v1"
KIND = "RayJob"
PORTS = [{"name": "redis", "containerPort": 6379}, {"name": "head", "containerPort": 10001},
         {"name": "dashboard", "containerPort": 8265}]
DEFAULT_TTL_SECONDS = 3600
RAY_STATE_VOLUME, RAY_STATE_MOUNT = "system-ray-state", "/tmp/ray"
_QUIET_LOGS = ({"name": "RAY_COLOR_PREFIX", "value": "0"}, {"name": "RAY_DATA_DISABLE_PROGRESS_BARS", "value": "1"})


def _field_env(name: str, path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _resource_env(name: str, resource: str) -> dict:
    return {"name": name, "valueFrom": {"resourceFieldRef": {"containerName": "ray-worker", "resource": resource}}}


def _non_empty(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if v}


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

    def __init__(self, k8s: K8sConfig | None = None):
        self.k8s = k8s or K8sConfig()

    def build_resource(self, tctx: TaskExecutionContext) -> Resource:
        job = custom_config(tctx, ray_pb2.RayJob(), "Ray")
        base = to_pod_spec(tctx, self.k8s)  # head and workers follow the task's interruptibility
        # Flyte joins the args with spaces, but KubeRay runs the entrypoint through a shell: an empty argument
        # (--prev-checkpoint on a first attempt) vanished and shifted the rest. Quoted, each stays one.
        entrypoint = shlex.join(base.primary.get("args") or [])
        cluster = job.ray_cluster
        account = service_account(tctx, self.k8s)

        head_pod = base.copy()
        head = head_pod.rename_primary("ray-head")
        head.pop("args", None)  # Go clears them; omitempty drops the field
        head["env"] = head["env"] + [_field_env("MY_POD_IP", "status.podIP"), *_QUIET_LOGS]
        head["ports"] = list(head.get("ports") or []) + copy.deepcopy(PORTS)
        self._inject_logs_sidecar(head, head_pod.spec)
        head_params = dict(cluster.head_group_spec.ray_start_params)
        head_params.setdefault("include-dashboard", "true")
        head_params.setdefault("node-ip-address", "$MY_POD_IP")
        head_params.setdefault("dashboard-host", "0.0.0.0")
        head_params.setdefault("disable-usage-stats", "true")
        head_template = self._group_template(tctx, head_pod, cluster.head_group_spec, account)

        workers = []
        for group in cluster.worker_group_spec:
            worker_pod = base.copy()
            worker = worker_pod.rename_primary("ray-worker")
            worker.pop("args", None)
            worker["env"] = worker["env"] + [
                {"name": "RAY_DISABLE_DOCKER_CPU_WARNING", "value": "1"}, {"name": "TYPE", "value": "worker"},
                # Flyte points MEMORY_* at the CPU fields too; here they name memory, as their names say.
                *(_resource_env(name, field) for name, field in (
                    ("CPU_REQUEST", "requests.cpu"), ("CPU_LIMITS", "limits.cpu"),
                    ("MEMORY_REQUESTS", "requests.memory"), ("MEMORY_LIMITS", "limits.memory"))),
                _field_env("MY_POD_NAME", "metadata.name"), _field_env("MY_POD_IP", "status.podIP"), *_QUIET_LOGS]
            worker["ports"] = list(worker.get("ports") or []) + copy.deepcopy(PORTS)
            worker["lifecycle"] = {"preStop": {"exec": {"command": ["/bin/sh", "-c", "ray stop"]}}}
            params = dict(group.ray_start_params)
            params.setdefault("node-ip-address", "$MY_POD_IP")
            params.setdefault("disable-usage-stats", "true")
            replicas = group.replicas
            workers.append({
                "groupName": group.group_name or "default", "replicas": replicas,
                "minReplicas": min(group.min_replicas, replicas), "maxReplicas": max(group.max_replicas, replicas),
                "rayStartParams": params,
                "template": self._group_template(tctx, worker_pod, group, account),
            })

        submitter = {"name": "ray-job-submitter", "image": head["image"],
                     "resources": {"limits": {"cpu": "1", "memory": "1Gi"},
                                   "requests": {"cpu": "500m", "memory": "200Mi"}}}
        submitter_spec: dict = {"containers": [submitter], "restartPolicy": "Never", "enableServiceLinks": False}
        if self.k8s.default_tolerations:  # never interruptible: the cluster's defaults only
            submitter_spec["tolerations"] = copy.deepcopy(self.k8s.default_tolerations)
        if self.k8s.default_affinity:
            submitter_spec["affinity"] = copy.deepcopy(self.k8s.default_affinity)
        submitter_meta = {"labels": {**self.k8s.default_labels, **tctx.metadata.labels},
                          "annotations": {**self.k8s.default_annotations, **tctx.metadata.annotations}}
        spec = {
            "entrypoint": entrypoint,
            "shutdownAfterJobFinishes": True,  # Flyte's config default; a task can only ask for it too
            "ttlSecondsAfterFinished": job.ttl_seconds_after_finished or DEFAULT_TTL_SECONDS,
            "submissionMode": "K8sJobMode",
            "rayClusterSpec": {
                "headGroupSpec": {"rayStartParams": head_params, "serviceType": "NodePort", "enableIngress": True,
                                  "template": head_template},
                "workerGroupSpecs": workers,
                "enableInTreeAutoscaling": cluster.enable_autoscaling,
            },
            "submitterPodTemplate": {"metadata": _non_empty(submitter_meta), "spec": submitter_spec},
        }
        if job.runtime_env_yaml:
            spec["runtimeEnvYAML"] = job.runtime_env_yaml
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": base.metadata, "spec": spec}

    def _group_template(self, tctx: TaskExecutionContext, parts: PodParts, group, account: str) -> dict:
        """A head or worker pod template: the group's own k8s_pod merged over the task's pod, then the
        platform's scheduling rules again (a merged pod must not escape them), and Flyte's labels."""
        group_meta: dict[str, dict[str, str]] = {"labels": {}, "annotations": {}}
        if group.HasField("k8s_pod") and group.k8s_pod.HasField("pod_spec"):
            overlay = integral(json_format.MessageToDict(group.k8s_pod.pod_spec))
            parts.spec = merge_overlay_pod_spec(parts.spec, overlay)
            group_meta = {"labels": dict(group.k8s_pod.metadata.labels),
                          "annotations": dict(group.k8s_pod.metadata.annotations)}
        add_extended_resource_tolerations(parts.spec, self.k8s)
        apply_platform_scheduling_constraints(parts.spec, self.k8s, tctx.metadata.interruptible)
        if account:
            parts.spec["serviceAccountName"] = account
        metadata = {
            "labels": {**self.k8s.default_labels, **parts.metadata.get("labels", {}), **tctx.metadata.labels,
                       **group_meta["labels"], "flyte.org/managed": "true"},
            "annotations": {**self.k8s.default_annotations, **parts.metadata.get("annotations", {}),
                            **tctx.metadata.annotations, **group_meta["annotations"]},
        }
        return {"metadata": _non_empty(metadata), "spec": parts.spec}

    def _inject_logs_sidecar(self, head: dict, spec: dict) -> None:
        """Flyte's ``injectLogsSidecar``: the configured sidecar reads the head's /tmp/ray, mounted read-only."""
        if not self.k8s.ray_logs_sidecar:
            return
        sidecar = copy.deepcopy(self.k8s.ray_logs_sidecar)
        mount = next((m for m in head.get("volumeMounts") or [] if m.get("mountPath") == RAY_STATE_MOUNT), None)
        if mount is None:
            spec.setdefault("volumes", []).append({"name": RAY_STATE_VOLUME, "emptyDir": {}})
            mount = {"name": RAY_STATE_VOLUME, "mountPath": RAY_STATE_MOUNT}
            head.setdefault("volumeMounts", []).append(mount)
        read_only = {**mount, "readOnly": True}
        mounts = [m for m in sidecar.get("volumeMounts") or [] if m.get("mountPath") != RAY_STATE_MOUNT]
        sidecar["volumeMounts"] = mounts + [read_only]
        spec["containers"].append(sidecar)

    def related_pods(self, resource: Resource) -> list[PodRef]:
        cluster = (resource.get("status") or {}).get("rayClusterName")
        return [PodRef("ray-head", labels={"ray.io/cluster": cluster, "ray.io/node-type": "head"})] if cluster else []

    def log_pods(self, resource: Resource) -> list[PodRef]:
        """K8sJobMode: the submitter Job's pod, which follows the job's driver output (``ray job submit``);
        the Job controller labels it with the Job's name, the RayJob's."""
        name = (resource.get("metadata") or {}).get("name")
        return [PodRef("ray-job-submitter", labels={"batch.kubernetes.io/job-name": name})] if name else []

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
