"""What an action's task is on the cluster right now (``--tasks-on pods``): the object its plugin created,
as the API server has it (status included), and the Kubernetes Events about it (a node's Scheduled,
Started, Killing; an operator's), as `kubectl describe` shows them. For the console's `y` and the API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.model import TaskAction
from engine.plugins.core import TaskExecutionContext
from engine.plugins.resource_manager import ResourcePluginManager
from engine.plugins.resources import NotFoundError as ObjectNotFoundError
from engine.render import launch_context


class ClusterObjects:
    def __init__(self, build_context: Callable[[TaskAction], TaskExecutionContext],
                 find: Callable[[str, str], TaskAction | None], resolve: Callable[[str], Any]):
        self.build_context = build_context
        self.find = find
        self.resolve = resolve  # task type → its plugin (the registry's)

    async def describe(self, run: str, action: str) -> dict[str, Any] | None:
        """``{"object": ..., "events": [...]}`` for the action's current attempt, ``{"object": None, ...}`` when
        it has none on the cluster (not launched yet, or deleted), None when its plugin keeps none there."""
        tctx = launch_context(self.find, self.build_context, run, action)
        manager = self.resolve(tctx.task_template.type)
        if not isinstance(manager, ResourcePluginManager) or not hasattr(manager.backend, "events_of"):
            return None
        identity = manager.identity_for(tctx)
        try:
            found = await manager.backend.get(identity)
        except ObjectNotFoundError:
            found = None
        events = await manager.backend.events_of(identity)
        return {"kind": identity["kind"], "name": identity["metadata"]["name"],
                "namespace": identity["metadata"]["namespace"], "object": found, "events": events}
