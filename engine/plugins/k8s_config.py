"""The cluster configuration Flyte's k8s plugins read (``flytek8s/config/config.go``, the Spark, Ray and Dask
plugin configs, the executor's default service account), in Flyte's own key names so an existing
``values.yaml`` section pastes in:

    plugins:
      k8s: {default-tolerations: [...], interruptible-tolerations: [...], interruptible-node-selector-requirement: {...}, ...}
      spark: {spark-history-server-url: ...}
      ray: {logsSidecar: {...}}
      dask: {logs: {templates: [{displayName: ..., templateUris: [...], linkType: dashboard}]}}
    executor: {defaultK8sServiceAccount: ...}

Everything is empty by default, as in Flyte: only what a cluster configures is added to the objects.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from engine.errors import ConfigFileError

_K8S_KEYS = {
    "default-tolerations": "default_tolerations",
    "default-node-selector": "default_node_selector",
    "default-affinity": "default_affinity",
    "default-labels": "default_labels",
    "default-annotations": "default_annotations",
    "default-env-vars": "default_env_vars",
    "scheduler-name": "scheduler_name",
    "interruptible-tolerations": "interruptible_tolerations",
    "interruptible-node-selector": "interruptible_node_selector",
    "interruptible-node-selector-requirement": "interruptible_node_selector_requirement",
    "non-interruptible-node-selector-requirement": "non_interruptible_node_selector_requirement",
    "resource-tolerations": "resource_tolerations",
    "add-tolerations-for-extended-resources": "add_tolerations_for_extended_resources",
}
_DICT_FIELDS = ("default_node_selector", "default_labels", "default_annotations", "default_env_vars",
                "interruptible_node_selector", "resource_tolerations")
_LIST_FIELDS = ("default_tolerations", "interruptible_tolerations", "add_tolerations_for_extended_resources")
_OBJECT_FIELDS = ("default_affinity", "interruptible_node_selector_requirement",
                  "non_interruptible_node_selector_requirement", "ray_logs_sidecar")


class K8sConfigError(ConfigFileError):
    pass


@dataclasses.dataclass(frozen=True)
class K8sConfig:
    default_tolerations: list[dict] = dataclasses.field(default_factory=list)
    default_node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    default_affinity: dict | None = None
    default_labels: dict[str, str] = dataclasses.field(default_factory=dict)
    default_annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    default_env_vars: dict[str, str] = dataclasses.field(default_factory=dict)
    scheduler_name: str = ""
    interruptible_tolerations: list[dict] = dataclasses.field(default_factory=list)
    interruptible_node_selector: dict[str, str] = dataclasses.field(default_factory=dict)  # deprecated in Flyte
    interruptible_node_selector_requirement: dict | None = None
    non_interruptible_node_selector_requirement: dict | None = None
    resource_tolerations: dict[str, list[dict]] = dataclasses.field(default_factory=dict)
    add_tolerations_for_extended_resources: list[str] = dataclasses.field(default_factory=list)
    default_service_account: str = ""  # empty: Kubernetes gives the namespace's `default`
    spark_history_server_url: str = ""
    ray_logs_sidecar: dict | None = None  # a Container, added to head pods beside a shared /tmp/ray
    dask_dashboard_template: str = ""  # the URI of the DASHBOARD log link; its path is the dashboard prefix

    @classmethod
    def from_mapping(cls, data: Any) -> K8sConfig:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise K8sConfigError("the Kubernetes configuration must be a mapping")
        plugins = _section(data, "plugins")
        values: dict[str, Any] = {}
        k8s = _section(plugins, "k8s")
        unknown = sorted(set(k8s) - set(_K8S_KEYS))
        if unknown:
            raise K8sConfigError(f"unknown plugins.k8s keys: {', '.join(unknown)} (known: {', '.join(sorted(_K8S_KEYS))})")
        for key, field in _K8S_KEYS.items():
            if key in k8s:
                values[field] = k8s[key]
        values["default_service_account"] = _section(data, "executor").get("defaultK8sServiceAccount", "")
        values["spark_history_server_url"] = _section(plugins, "spark").get("spark-history-server-url", "")
        values["ray_logs_sidecar"] = _section(plugins, "ray").get("logsSidecar")
        templates = _section(_section(plugins, "dask"), "logs").get("templates") or []
        for template in templates if isinstance(templates, list) else []:
            if isinstance(template, dict) and str(template.get("linkType", "")).lower() == "dashboard":
                uris = template.get("templateUris") or []
                values["dask_dashboard_template"] = uris[0] if isinstance(uris, list) and uris else str(uris)
                break
        return cls(**_checked(values))

    @classmethod
    def from_file(cls, path: str | Path) -> K8sConfig:
        import yaml  # the kubernetes client brings PyYAML

        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise K8sConfigError(f"cannot read the Kubernetes configuration {path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise K8sConfigError(f"{path} is not valid {'JSON' if str(path).endswith('.json') else 'YAML'}: "
                                 f"{str(exc).splitlines()[0]}") from None
        return cls.from_mapping(data)


def _section(data: dict, key: str) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise K8sConfigError(f"{key} must be a mapping")
    return value


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    for field in _DICT_FIELDS:
        if field in values and not isinstance(values[field], dict):
            raise K8sConfigError(f"{field.replace('_', '-')} must be a mapping")
    for field in _LIST_FIELDS:
        if field in values and not isinstance(values[field], list):
            raise K8sConfigError(f"{field.replace('_', '-')} must be a list")
    for field in _OBJECT_FIELDS:
        if values.get(field) is not None and not isinstance(values[field], dict):
            raise K8sConfigError(f"{field.replace('_', '-')} must be a mapping")
    for field in ("scheduler_name", "default_service_account", "spark_history_server_url", "dask_dashboard_template"):
        if field in values and not isinstance(values[field], str):
            raise K8sConfigError(f"{field.replace('_', '-')} must be a string")
    return values
