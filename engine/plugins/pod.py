"""The Pod plugin (Flyte's ``plugins/k8s/pod/plugin.go`` and ``flytek8s/pod_helper.go``): the Pod a container
task becomes on Kubernetes, and its phase from the Pod's status (``DemystifyPodStatus``).

On the embedded default container tasks run as local processes (``container.py``); this plugin is what
the Kubernetes backend runs them with, and what ``taskdeck render`` prints.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import Any

from engine.plugins.core import (
    SYSTEM,
    USER,
    ExecutionError,
    PhaseInfo,
    TaskExecutionContext,
    TaskExecutionMetadata,
    TaskInfo,
)
from engine.phases import PluginPhase
from engine.plugins.k8s_config import K8sConfig
from engine.plugins.podspec import to_pod_spec
from engine.plugins.resources import Resource, ResourcePlugin

PRIMARY_ANNOTATION = "primary_container_name"
DEFAULT_REQUESTS = {"cpu": "1000m", "memory": "1024Mi"}
SYSTEM_POD_REASONS = frozenset({"Shutdown", "Terminated", "NodeShutdown", "NodeAffinity"})
SIGKILL_CODES = (137, 247)


@dataclasses.dataclass(frozen=True)
class PodConfig:
    """The plugin configuration the phase rules read (Flyte's k8s plugin config defaults)."""

    create_container_error_grace: dt.timedelta = dt.timedelta(minutes=3)
    create_container_config_error_grace: dt.timedelta = dt.timedelta(0)
    image_pull_backoff_grace: dt.timedelta = dt.timedelta(minutes=3)
    pod_pending_timeout: dt.timedelta = dt.timedelta(0)  # 0: off


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


class PodPlugin(ResourcePlugin):
    id = "pod"
    task_types = ("container", "python", "python-task", "sidecar", "raw-container")

    def __init__(self, config: PodConfig | None = None, now=None, k8s: K8sConfig | None = None):
        self.config = config or PodConfig()
        self.k8s = k8s or K8sConfig()
        self._now = now or (lambda: dt.datetime.now(dt.timezone.utc))

    def build_identity_resource(self, metadata: TaskExecutionMetadata) -> Resource:
        return {"apiVersion": "v1", "kind": "Pod"}

    def build_resource(self, tctx: TaskExecutionContext) -> Resource:
        parts = to_pod_spec(tctx, self.k8s)
        resources = parts.primary.setdefault("resources", {})
        resources["requests"] = {**DEFAULT_REQUESTS, **resources.get("requests", {})}
        metadata: dict[str, Any] = copy.deepcopy(parts.metadata)
        if tctx.task_template.type != "raw-container":
            metadata["annotations"][PRIMARY_ANNOTATION] = parts.primary_name
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": parts.spec}

    # ---------------------------------------------------------------- phase
    def get_task_phase(self, tctx: TaskExecutionContext, resource: Resource) -> PhaseInfo:
        status = resource.get("status") or {}
        phase = status.get("phase", "")
        info = TaskInfo(log_path=str(tctx.log_path), custom={"podPhase": phase})
        if phase == "Succeeded":
            oom = _first_oom(status)
            if oom:
                return PhaseInfo.retryable_failure("OOMKilled", "Pod reported success despite being OOMKilled", info)
            return PhaseInfo.success(info)
        if phase == "Failed":
            return self._failure(resource, info)
        if phase == "Pending":
            return self._pending(resource, info)
        if phase == "Unschedulable":
            return PhaseInfo.queued(reason="pod unschedulable", info=info)
        if phase == "Unknown":
            return PhaseInfo.undefined()
        return self._running(resource, info)

    def _running(self, resource: Resource, info: TaskInfo) -> PhaseInfo:
        status = resource.get("status") or {}
        primary = ((resource.get("metadata") or {}).get("annotations") or {}).get(PRIMARY_ANNOTATION)
        statuses = status.get("containerStatuses") or []
        if primary:
            mine = next((c for c in statuses if c.get("name") == primary), None)
            if mine is None:
                in_spec = any(c.get("name") == primary for c in (resource.get("spec") or {}).get("containers", []))
                if in_spec:
                    return PhaseInfo.running(info=info)
                return PhaseInfo.failure("PrimaryContainerNotFound",
                                         f"Primary container [{primary}] not found in pod's spec", info)
            terminated = (mine.get("state") or {}).get("terminated")
            if not terminated:
                return PhaseInfo.running(info=info)
            reason = terminated.get("reason") or "Error"
            code = int(terminated.get("exitCode") or 0)
            message = terminated.get("message") or f"the primary container exited with code {code}"
            if "OOMKilled" in reason:
                return PhaseInfo.retryable_failure(reason, message, info)
            if code in SIGKILL_CODES:
                return PhaseInfo.system_retryable_failure(reason, message, info)
            if code != 0:
                return PhaseInfo.retryable_failure(reason, message, info)
            return PhaseInfo.success(info)
        everything = statuses + (status.get("initContainerStatuses") or [])
        if everything and all(((c.get("state") or {}).get("terminated") or {}).get("exitCode", 1) == 0
                              for c in everything):
            return PhaseInfo.success(info)
        return PhaseInfo.running(info=info)

    def demystify_failed_or_pending(self, pod: Resource, container: str, info: TaskInfo) -> PhaseInfo | None:
        """Flyte's ``DemystifyFailedOrPendingPod``: the verdict on a related pod (Spark driver, Ray head, Dask
        job runner) that is Failed or Pending; None for any other pod phase."""
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Failed":
            return self._failure(pod, info, primary=container)
        if phase == "Pending":
            return self._pending(pod, info)
        return None

    def _failure(self, resource: Resource, info: TaskInfo, primary: str | None = None) -> PhaseInfo:
        """Flyte's ``DemystifyFailure``."""
        status = resource.get("status") or {}
        code = status.get("reason") or "UnknownError"
        message = status.get("message") or "Pod failed. No message received from kubernetes."
        system = status.get("reason") in SYSTEM_POD_REASONS
        if primary is None:
            primary = ((resource.get("metadata") or {}).get("annotations") or {}).get(PRIMARY_ANNOTATION)
        for container in _all_container_statuses(status):
            terminated = (container.get("lastState") or {}).get("terminated") or \
                (container.get("state") or {}).get("terminated")
            if not terminated:
                continue
            exit_code = int(terminated.get("exitCode") or 0)
            reason = terminated.get("reason") or ""
            message += (f"\r\n[{container.get('name')}] terminated with exit code ({exit_code}). Reason "
                        f"[{reason}]. Message: \n{terminated.get('message') or ''}.")
            if "OOMKilled" in reason:
                code = "OOMKilled"
            elif exit_code in SIGKILL_CODES:
                code = "Interrupted"
                if container.get("name") == primary:
                    system = True
        if code == "UnknownError":
            system = True
        if system:
            return PhaseInfo.failed(PluginPhase.RETRYABLE_FAILURE, ExecutionError("Interrupted", message, SYSTEM), info)
        return PhaseInfo.failed(PluginPhase.RETRYABLE_FAILURE, ExecutionError(code, message, USER), info)

    def _pending(self, resource: Resource, info: TaskInfo) -> PhaseInfo:
        """Flyte's ``DemystifyPending``."""
        status = resource.get("status") or {}
        now = self._now()
        for condition in status.get("conditions") or []:
            kind, value = condition.get("type"), condition.get("status")
            reason_message = f"{condition.get('reason', '')}:{condition.get('message', '')}"
            if kind == "PodScheduled" and value == "False":
                return PhaseInfo.queued(reason=reason_message, info=info)
            if kind == "Unschedulable":
                return PhaseInfo.queued(reason=reason_message, info=info)
            if kind == "Ready" and value == "False":
                since = _parse_time(condition.get("lastTransitionTime")) or now
                for container in (status.get("initContainerStatuses") or []) + [
                        c for c in status.get("containerStatuses") or [] if not c.get("ready")]:
                    waiting = (container.get("state") or {}).get("waiting")
                    if waiting:
                        verdict = self._waiting(condition.get("reason", ""), waiting, now - since, info)
                        if verdict is not None:
                            return verdict
        created = _parse_time((resource.get("metadata") or {}).get("creationTimestamp"))
        timeout = self.config.pod_pending_timeout
        if timeout and created and now - created > timeout:
            return PhaseInfo.system_retryable_failure("PodPendingTimeout", f"pod pending for more than {timeout}", info)
        return PhaseInfo.queued(reason="Scheduling", info=info)

    def _waiting(self, condition_reason: str, waiting: dict, waited: dt.timedelta, info: TaskInfo) -> PhaseInfo | None:
        reason, message = waiting.get("reason", ""), waiting.get("message", "")
        if reason in ("ErrImagePull", "ContainerCreating", "PodInitializing"):
            return PhaseInfo.initializing(reason=f"[{reason}]: {message}", info=info)
        if reason == "CreateContainerError":
            if waited < self.config.create_container_error_grace:
                return PhaseInfo.initializing(reason=f"[{reason}]: {message}", info=info)
            return PhaseInfo.failure(f"{condition_reason}|{reason}", message, info)
        if reason == "CreateContainerConfigError":
            if waited < self.config.create_container_config_error_grace:
                return PhaseInfo.initializing(reason=f"[{reason}]: {message}", info=info)
            return PhaseInfo.failure(f"{condition_reason}|{reason}", message, info)
        if reason == "InvalidImageName":
            return PhaseInfo.failure(f"{condition_reason}|{reason}", message, info)
        if reason == "ImagePullBackOff":
            grace = self.config.image_pull_backoff_grace
            if waited < grace:
                return PhaseInfo.initializing(reason=f"[{reason}]: {message}", info=info)
            text = f"Grace period [{_go_duration(grace)}] exceeded|{message}"
            if "429 Too Many Requests" in message:
                return PhaseInfo.system_retryable_failure(f"{condition_reason}|{reason}", text, info)
            return PhaseInfo.retryable_failure(f"{condition_reason}|{reason}", text, info)
        return PhaseInfo.system_retryable_failure(f"{condition_reason}|{reason}", message, info)

    def is_terminal(self, resource: Resource) -> bool:
        return (resource.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    def get_completion_time(self, resource: Resource) -> str | None:
        finished = [((c.get("state") or {}).get("terminated") or {}).get("finishedAt")
                    for c in _all_container_statuses(resource.get("status") or {})]
        finished = [f for f in finished if f]
        if finished:
            return max(finished)
        md = resource.get("metadata") or {}
        return md.get("deletionTimestamp") or (resource.get("status") or {}).get("startTime") or \
            md.get("creationTimestamp")


def _all_container_statuses(status: dict) -> list[dict]:
    return ((status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
            + (status.get("ephemeralContainerStatuses") or []))


def _first_oom(status: dict) -> bool:
    for container in _all_container_statuses(status):
        terminated = (container.get("state") or {}).get("terminated") or {}
        if "OOMKilled" in (terminated.get("reason") or ""):
            return True
    return False


def _go_duration(value: dt.timedelta) -> str:
    """A duration as Go prints one (3m0s)."""
    seconds = int(value.total_seconds())
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"
