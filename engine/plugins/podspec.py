"""Flyte's ``flytek8s.ToK8sPodSpec``, for what the task template carries: the primary container (image, its
command and args with template variables substituted, env, resources) and the pod's restart policy.

Plugins wrap the result into their own objects. What Flyte adds from cluster configuration (tolerations,
node selectors for interruptible tasks, default resources) is empty by default and left out here.
"""

from __future__ import annotations

from typing import Any

from flyteidl2.core import tasks_pb2

from engine.plugins.core import PluginError, TaskExecutionContext
from engine.plugins.task_setup import substitute_template, template_values

PRIMARY_CONTAINER = "primary"
_RESOURCE_NAMES = {tasks_pb2.Resources.CPU: "cpu", tasks_pb2.Resources.MEMORY: "memory",
                   tasks_pb2.Resources.GPU: "nvidia.com/gpu", tasks_pb2.Resources.EPHEMERAL_STORAGE:
                   "ephemeral-storage"}


def resource_requirements(resources: tasks_pb2.Resources) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for field, entries in (("requests", resources.requests), ("limits", resources.limits)):
        values = {_RESOURCE_NAMES[e.name]: e.value for e in entries if e.name in _RESOURCE_NAMES and e.value}
        if values:
            out[field] = values
    requests, limits = out.get("requests", {}), out.get("limits", {})
    if requests or limits:  # as Flyte: each side defaults to the other for the resources it names
        out["requests"] = {**limits, **requests}
        out["limits"] = {**requests, **limits}
    return out


def task_env(tctx: TaskExecutionContext) -> list[dict[str, str]]:
    """The env Flyte injects (ACTION_NAME, RUN_NAME, _U_RUN_BASE, _U_ORG_NAME, the run's env vars) and the
    container's own; no engine credential: a cluster's pods authenticate their own way."""
    env = {kv.key: kv.value for kv in tctx.task_template.container.env}
    env.update({k: v for k, v in tctx.metadata.environment.items() if k != "_U_EP_OVERRIDE"})
    env.update({"FLYTE_INTERNAL_EXECUTION_PROJECT": tctx.metadata.project,
                "FLYTE_INTERNAL_EXECUTION_DOMAIN": tctx.metadata.domain})
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def to_pod_spec(tctx: TaskExecutionContext, container_name: str = PRIMARY_CONTAINER,
                restart_policy: str = "Never") -> dict[str, Any]:
    template = tctx.task_template
    if template.WhichOneof("target") != "container":
        raise PluginError("task template has no container target", code="BadTaskSpecification")
    container = template.container
    values = template_values(tctx)
    spec: dict[str, Any] = {"name": container_name, "image": container.image or "ghcr.io/flyteorg/flyte",
                            "env": task_env(tctx)}
    if container.command:
        spec["command"] = [substitute_template(a, values) for a in container.command]
    if container.args:
        spec["args"] = [substitute_template(a, values) for a in container.args]
    resources = resource_requirements(container.resources)
    if resources:
        spec["resources"] = resources
    return {"containers": [spec], "restartPolicy": restart_policy}
