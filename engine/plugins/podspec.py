"""Flyte's ``flytek8s.ToK8sPodSpec``: the pod a task's resources are built from.

``BuildRawPod``: a container target becomes one container named with the generated name; a k8s_pod target
(the SDK's ``pod_template=``) is its own pod spec with its volumes, affinity, tolerations, node selector and
side containers, and its metadata. ``ApplyFlytePodConfiguration``: template variables substituted in every
container's command and args, Flyte's env added to each, the task's resources merged into the primary;
then ``UpdatePod``: restart policy, tolerations (per requested resource, interruptible, default, then the
pod's own), service account, scheduler, node selector, default affinity and the (non-)interruptible node
selector requirement AND-ed into every required term; tolerations for configured extended resources.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from typing import Any

from flyteidl2.core import tasks_pb2

from engine.plugins.core import PluginError, TaskExecutionContext
from engine.plugins.k8s_config import K8sConfig
from engine.plugins.task_setup import substitute_template, template_values
from engine.plugins.task_target import pod_target, primary_container

_RESOURCE_NAMES = {tasks_pb2.Resources.CPU: "cpu", tasks_pb2.Resources.MEMORY: "memory",
                   tasks_pb2.Resources.GPU: "nvidia.com/gpu", tasks_pb2.Resources.EPHEMERAL_STORAGE:
                   "ephemeral-storage"}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SECRET_LABEL = "inject-flyte-secrets"
SECRET_ANNOTATION_PREFIX = "flyte.secrets/s"
_BASE32_ALPHABET = "abcdefghijklmnopqrstuvwxyz123456"  # Flyte's encoding.Base32Encoder, unpadded


@dataclasses.dataclass
class PodParts:
    """A pod spec, the metadata the task's pod template gives the object, and which container is the task's."""

    spec: dict[str, Any]
    metadata: dict[str, dict[str, str]]
    primary_name: str

    @property
    def primary(self) -> dict[str, Any]:
        return next(c for c in self.spec["containers"] if c.get("name") == self.primary_name)

    def rename_primary(self, name: str) -> dict[str, Any]:
        primary = self.primary
        primary["name"] = self.primary_name = name
        return primary

    def copy(self) -> PodParts:
        return PodParts(copy.deepcopy(self.spec), copy.deepcopy(self.metadata), self.primary_name)


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


def flyte_env(tctx: TaskExecutionContext, config: K8sConfig | None = None) -> list[dict[str, Any]]:
    """``DecorateEnvVars``: the execution's identity, the TaskAction's env (ACTION_NAME, RUN_NAME, _U_RUN_BASE,
    _U_ORG_NAME, its env vars) and the configured defaults. No engine credential: a cluster's pods
    authenticate their own way."""
    md = tctx.metadata
    task_id = tctx.task_template.id
    env: list[dict[str, Any]] = [
        {"name": "FLYTE_INTERNAL_EXECUTION_ID", "value": md.run_name},
        {"name": "FLYTE_INTERNAL_EXECUTION_PROJECT", "value": md.project},
        {"name": "FLYTE_INTERNAL_EXECUTION_DOMAIN", "value": md.domain},
        {"name": "_F_PN", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "FLYTE_ATTEMPT_NUMBER", "value": str(md.retry_attempt)},
    ]
    if task_id.name:
        for prefix in ("FLYTE_INTERNAL_TASK_", "FLYTE_INTERNAL_"):
            env += [{"name": f"{prefix}PROJECT", "value": task_id.project},
                    {"name": f"{prefix}DOMAIN", "value": task_id.domain},
                    {"name": f"{prefix}NAME", "value": task_id.name},
                    {"name": f"{prefix}VERSION", "value": task_id.version}]
    own = {k: v for k, v in md.environment.items() if k != "_U_EP_OVERRIDE"}
    env += [{"name": k, "value": v} for k, v in sorted(own.items())]
    env += [{"name": k, "value": v} for k, v in sorted((config.default_env_vars if config else {}).items())]
    return env


def secret_metadata(template: tasks_pb2.TaskTemplate) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) that hand the task's secret requests to Flyte's pod webhook: each secret as a
    reference (``flyte.secrets/s<i>``, its text proto base32-encoded as Flyte's marshaller does), never a value."""
    secrets = template.security_context.secrets
    if not secrets:
        return {}, {}
    annotations = {f"{SECRET_ANNOTATION_PREFIX}{i}": _base32(_text_proto(s)) for i, s in enumerate(secrets)}
    return {SECRET_LABEL: "true"}, annotations


def _text_proto(message) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(message)


def _base32(text: str) -> str:
    import base64

    standard = base64.b32encode(text.encode()).decode().rstrip("=")
    return standard.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _BASE32_ALPHABET))


def service_account(tctx: TaskExecutionContext, config: K8sConfig) -> str:
    return tctx.task_template.security_context.run_as.k8s_service_account or config.default_service_account


def to_pod_spec(tctx: TaskExecutionContext, config: K8sConfig | None = None, *,
                interruptible: bool | None = None) -> PodParts:
    """The task's pod; ``interruptible`` False builds the non-interruptible variant plugins use for drivers,
    schedulers and job runners (None: as the TaskAction says)."""
    config = config or K8sConfig()
    interruptible = tctx.metadata.interruptible if interruptible is None else interruptible
    parts = _raw_pod(tctx)
    values = template_values(tctx)
    env = flyte_env(tctx, config)
    task_resources = resource_requirements(primary_container(tctx.task_template).resources)
    for container in parts.spec.get("initContainers") or []:
        _customize(container, values, env)
    for container in parts.spec["containers"]:
        _customize(container, values, env)
        if container["name"] == parts.primary_name and task_resources:
            resources = container.setdefault("resources", {})
            for side in ("requests", "limits"):
                if task_resources.get(side):
                    resources[side] = {**resources.get(side, {}), **task_resources[side]}
    _update_pod(parts.spec, tctx, config, interruptible)
    add_extended_resource_tolerations(parts.spec, config)
    return parts


def _raw_pod(tctx: TaskExecutionContext) -> PodParts:
    template = tctx.task_template
    kind = template.WhichOneof("target")
    if kind == "container":
        container = template.container
        name = tctx.metadata.generated_name.lower()
        if not _DNS_LABEL.match(name):
            name = re.sub(r"[^a-z0-9-]+", "-", name).strip("-")[:63].rstrip("-") or "primary"
        primary: dict[str, Any] = {"name": name, "image": container.image or "ghcr.io/flyteorg/flyte",
                                   "terminationMessagePolicy": "FallbackToLogsOnError"}
        if container.command:
            primary["command"] = list(container.command)
        if container.args:
            primary["args"] = list(container.args)
        primary["env"] = [{"name": kv.key, "value": kv.value} for kv in container.env]
        resources = resource_requirements(container.resources)
        if resources:
            primary["resources"] = resources
        parts = PodParts({"containers": [primary]}, {"labels": {}, "annotations": {}}, name)
    elif kind == "k8s_pod":
        spec, name, meta = pod_target(template)
        parts = PodParts(spec, meta, name)
    else:
        raise PluginError("invalid TaskSpecification, unable to determine Pod configuration",
                          code="BadTaskSpecification")
    parts.spec["enableServiceLinks"] = False
    return parts


def _customize(container: dict, values: dict[str, str], env: list[dict]) -> None:
    for field in ("command", "args"):
        if container.get(field):
            container[field] = [substitute_template(str(a), values) for a in container[field]]
    container["env"] = list(container.get("env") or []) + copy.deepcopy(env)


def _update_pod(spec: dict, tctx: TaskExecutionContext, config: K8sConfig, interruptible: bool) -> None:
    spec.setdefault("restartPolicy", "Never")
    requested = set()
    for container in spec["containers"]:
        for side in ("requests", "limits"):
            requested.update(((container.get("resources") or {}).get(side) or {}).keys())
    tolerations = [t for name in sorted(requested) for t in config.resource_tolerations.get(name, [])]
    if interruptible:
        tolerations += config.interruptible_tolerations
    tolerations += config.default_tolerations
    tolerations = copy.deepcopy(tolerations) + list(spec.get("tolerations") or [])
    if tolerations:
        spec["tolerations"] = tolerations
    account = service_account(tctx, config)
    if account and not spec.get("serviceAccountName"):
        spec["serviceAccountName"] = account
    if config.scheduler_name and not spec.get("schedulerName"):
        spec["schedulerName"] = config.scheduler_name
    selector = {**config.default_node_selector, **(spec.get("nodeSelector") or {})}
    if interruptible:
        selector.update(config.interruptible_node_selector)
    if selector:
        spec["nodeSelector"] = selector
    if not spec.get("affinity") and config.default_affinity:
        spec["affinity"] = copy.deepcopy(config.default_affinity)
    apply_interruptible_affinity(spec, config, interruptible)


def apply_interruptible_affinity(spec: dict, config: K8sConfig, interruptible: bool) -> None:
    """``ApplyInterruptibleNodeAffinity``: the configured requirement AND-ed into every required term."""
    requirement = (config.interruptible_node_selector_requirement if interruptible
                   else config.non_interruptible_node_selector_requirement)
    if requirement:
        add_required_node_selector_requirements(spec, [requirement])


def apply_platform_scheduling_constraints(spec: dict, config: K8sConfig, interruptible: bool) -> None:
    """``ApplyPlatformSchedulingConstraints``: after a custom pod spec is merged in, the default affinity's
    and the (non-)interruptible requirements again on every term, and the interruptible selector and
    tolerations; idempotent."""
    default = ((config.default_affinity or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or {}
    for term in default.get("nodeSelectorTerms") or []:
        add_required_node_selector_requirements(spec, term.get("matchExpressions") or [])
    apply_interruptible_affinity(spec, config, interruptible)
    if not interruptible:
        return
    if config.interruptible_node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **config.interruptible_node_selector}
    for toleration in config.interruptible_tolerations:
        add_toleration(spec, toleration)


def add_required_node_selector_requirements(spec: dict, requirements: list[dict]) -> None:
    if not requirements:
        return
    affinity = spec.setdefault("affinity", {})
    required = affinity.setdefault("nodeAffinity", {}).setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or []
    if not terms:
        required["nodeSelectorTerms"] = [{"matchExpressions": copy.deepcopy(requirements)}]
        return
    for term in terms:
        expressions = term.setdefault("matchExpressions", [])
        for requirement in requirements:
            if requirement not in expressions:
                expressions.append(copy.deepcopy(requirement))


def add_toleration(spec: dict, toleration: dict) -> None:
    tolerations = spec.setdefault("tolerations", [])
    if not any(_same_toleration(t, toleration) for t in tolerations):
        tolerations.append(copy.deepcopy(toleration))


def _same_toleration(a: dict, b: dict) -> bool:
    """``Toleration.MatchToleration``: same key, operator, value and effect."""
    return all((a.get(k) or "") == (b.get(k) or "") for k in ("key", "operator", "value", "effect"))


def add_extended_resource_tolerations(spec: dict, config: K8sConfig) -> None:
    """``AddTolerationsForExtendedResources``: an Exists/NoSchedule toleration per configured extended
    resource some container requests."""
    requested = set()
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        requested.update(((container.get("resources") or {}).get("requests") or {}).keys())
    for name in sorted(requested & set(config.add_tolerations_for_extended_resources)):
        add_toleration(spec, {"key": name, "operator": "Exists", "effect": "NoSchedule"})


def merge_overlay_pod_spec(base: dict, overlay: dict) -> dict:
    """``MergeOverlayPodSpecOntoBase`` (mergo with override and append-slice): the overlay's non-empty
    values win, lists are appended, and containers merge by name into the base's (an overlay container
    the base has no namesake for is dropped)."""
    merged = _merge(copy.deepcopy(base), {k: v for k, v in overlay.items() if k not in ("containers", "initContainers")})
    for field in ("containers", "initContainers"):
        if base.get(field):
            by_name = {c.get("name"): c for c in overlay.get(field) or [] if isinstance(c, dict)}
            merged[field] = [_merge(copy.deepcopy(c), by_name[c["name"]]) if c.get("name") in by_name
                             else copy.deepcopy(c) for c in base[field]]
    return merged


def _merge(base: Any, overlay: Any) -> Any:
    if isinstance(base, dict) and isinstance(overlay, dict):
        for key, value in overlay.items():
            base[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return base
    if isinstance(base, list) and isinstance(overlay, list):
        return base + copy.deepcopy(overlay)
    return copy.deepcopy(overlay) if overlay not in (None, "", 0, False, {}, []) else base
