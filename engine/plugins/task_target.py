"""What a task template runs: its ``container`` target, or the primary container of its ``k8s_pod`` target
(a task with ``pod_template=PodTemplate(...)``, whose pod spec the SDK serializes as a Struct and whose
primary container it names in ``config["primary_container_name"]``)."""

from __future__ import annotations

from typing import Any

from flyteidl2.core import literals_pb2, tasks_pb2
from google.protobuf import json_format

from engine.plugins.core import PluginError

PRIMARY_CONTAINER_KEY = "primary_container_name"


def integral(value: Any) -> Any:
    """A Struct's numbers are doubles: give back whole ones as ints (ports, replica counts, seconds)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def pod_target(template: tasks_pb2.TaskTemplate) -> tuple[dict, str, dict[str, dict[str, str]]]:
    """(the pod spec, its primary container's name, the pod's labels and annotations) of a k8s_pod target."""
    pod = template.k8s_pod
    if not pod.HasField("pod_spec"):
        raise PluginError("a pod task needs a pod spec in its k8s_pod target", code="BadTaskSpecification")
    spec = integral(json_format.MessageToDict(pod.pod_spec))
    name = pod.primary_container_name or template.config.get(PRIMARY_CONTAINER_KEY, "")
    if not name:
        raise PluginError(f"invalid TaskSpecification, config missing [{PRIMARY_CONTAINER_KEY}] key",
                          code="BadTaskSpecification")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not any(isinstance(c, dict) and c.get("name") == name
                                                   for c in containers):
        raise PluginError(f"invalid TaskSpecification, primary container [{name}] not defined",
                          code="BadTaskSpecification")
    meta = {"labels": dict(pod.metadata.labels), "annotations": dict(pod.metadata.annotations)}
    return spec, name, meta


def primary_container(template: tasks_pb2.TaskTemplate) -> tasks_pb2.Container:
    """The container the task's code runs in (image, command, args, literal env), whatever the target."""
    kind = template.WhichOneof("target")
    if kind == "container":
        return template.container
    if kind != "k8s_pod":
        raise PluginError("task template has neither a container nor a pod target", code="BadTaskSpecification")
    spec, name, _ = pod_target(template)
    found = next(c for c in spec["containers"] if isinstance(c, dict) and c.get("name") == name)
    container = tasks_pb2.Container(image=str(found.get("image") or ""),
                                    command=[str(a) for a in found.get("command") or []],
                                    args=[str(a) for a in found.get("args") or []])
    for entry in found.get("env") or []:
        if isinstance(entry, dict) and "name" in entry and "valueFrom" not in entry:
            container.env.append(literals_pb2.KeyValuePair(key=str(entry["name"]), value=str(entry.get("value", ""))))
    return container
