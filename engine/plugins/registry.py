"""Plugins keyed by task type, with a default (Flyte's executor/pkg/plugin/registry.go)."""

from __future__ import annotations

import logging

from engine.plugins.core import Plugin

log = logging.getLogger(__name__)


class PluginNotFoundError(LookupError):
    pass


class PluginRegistry:
    def __init__(self) -> None:
        self._by_type: dict[str, Plugin] = {}
        self._default: Plugin | None = None
        self._plugins: dict[str, Plugin] = {}

    def register(self, plugin: Plugin) -> None:
        self._plugins[plugin.id] = plugin
        for task_type in plugin.task_types:
            if task_type in self._by_type and self._by_type[task_type] is not plugin:
                log.warning("task type %r: plugin %r replaces %r", task_type, plugin.id, self._by_type[task_type].id)
            self._by_type[task_type] = plugin
        if plugin.is_default:
            self._default = plugin

    def set_default_for(self, task_type: str, plugin_id: str) -> None:
        """Config override: task type → plugin id (tasks.task-plugins.default-for-task-types)."""
        self._by_type[task_type] = self._plugins[plugin_id]

    def resolve(self, task_type: str) -> Plugin:
        plugin = self._by_type.get(task_type) or self._default
        if plugin is None:
            raise PluginNotFoundError(f"no plugin handles task type {task_type!r} and there is no default plugin")
        return plugin

    @property
    def plugins(self) -> list[Plugin]:
        return list(self._plugins.values())
