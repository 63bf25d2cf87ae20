"""What the Kubernetes backend would create for an action: its resource plugin's object with the plugin
manager's metadata (name, namespace, labels, owner), built from the action's TaskAction as a launch would.

Container tasks (and reusable ones) become Pods, Dask tasks DaskJobs, Spark tasks SparkApplications and
Ray tasks RayJobs; a type no resource plugin builds is named in the error. Nothing is created: this is ``taskdeck render``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from engine.errors import RunNotFoundError
from engine.model import TaskAction
from engine.plugins.core import PluginStateManager, TaskExecutionContext
from engine.plugins.dask import DaskPlugin
from engine.plugins.k8s_config import K8sConfig
from engine.plugins.pod import PodPlugin
from engine.plugins.ray import RayPlugin
from engine.plugins.resource_manager import ResourcePluginManager
from engine.plugins.resources import Resource, ResourcePlugin
from engine.plugins.spark import SparkPlugin


class UnrenderableError(LookupError):
    pass


def launch_context(find: Callable[[str, str], TaskAction | None],
                   build_context: Callable[[TaskAction], TaskExecutionContext], run: str,
                   action: str) -> TaskExecutionContext:
    """The context a launch of the action's current attempt gets (its first, when it has not started)."""
    task_action = find(run, action)
    if task_action is None:
        raise RunNotFoundError(f"action {action!r} of run {run!r} has no TaskAction (it finished and was "
                               "garbage-collected, or it is a trace or a condition)")
    tctx = build_context(task_action)
    tctx.plugin_state = PluginStateManager(None, 0)
    if tctx.metadata.attempt < 1:  # not started yet: as its first attempt will be
        tctx.metadata = dataclasses.replace(tctx.metadata, attempt=1)
    return tctx


class KubernetesRenderer:
    def __init__(self, build_context: Callable[[TaskAction], TaskExecutionContext],
                 find: Callable[[str, str], TaskAction | None], plugins: list[ResourcePlugin] | None = None,
                 k8s: K8sConfig | None = None):
        self.build_context = build_context
        self.find = find
        self.k8s = k8s or K8sConfig()
        plugins = plugins if plugins is not None else [DaskPlugin(self.k8s), SparkPlugin(self.k8s),
                                                       RayPlugin(self.k8s), PodPlugin(k8s=self.k8s)]
        self.by_type = {t: p for p in plugins for t in p.task_types}
        self.by_type.setdefault("actor", self.by_type.get("python"))  # a reusable task's worker is a Pod

    def render(self, run: str, action: str) -> Resource:
        tctx = launch_context(self.find, self.build_context, run, action)
        task_type = tctx.task_template.type
        plugin = self.by_type.get(task_type)
        if plugin is None:
            raise UnrenderableError(f"no Kubernetes resource plugin builds task type {task_type!r} (there are: "
                                    f"{', '.join(sorted(t for t in self.by_type if t))})")
        manager = ResourcePluginManager(plugin, backend=None, k8s=self.k8s)
        return manager.with_metadata(plugin.build_resource(tctx), tctx)
