"""Flyte's task-log link templates (``tasklog.TemplateLogPlugin``): ``{{ .var }}`` placeholders filled from
the attempt's identity. Only what a link configured by the cluster needs; unknown names are left as they are."""

from __future__ import annotations

import re

from engine.plugins.core import TaskExecutionContext

_PLACEHOLDER = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")


def link_values(tctx: TaskExecutionContext, pod_name: str = "") -> dict[str, str]:
    md = tctx.metadata
    task_id = tctx.task_template.id
    return {
        "namespace": md.namespace, "podName": pod_name, "generatedName": md.generated_name,
        "executionName": md.run_name, "executionProject": md.project, "executionDomain": md.domain,
        "runName": md.run_name, "actionName": md.action_name, "nodeID": md.action_name,
        "retryAttempt": str(md.retry_attempt), "taskID": task_id.name, "taskVersion": task_id.version,
        "taskProject": task_id.project, "taskDomain": task_id.domain,
    }


def render_link(template: str, tctx: TaskExecutionContext, **extra: str) -> str:
    values = {**link_values(tctx, extra.pop("pod_name", "")), **extra}
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
