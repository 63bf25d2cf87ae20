"""Plugins keyed by task type, with a default (Flyte's executor/pkg/plugin/registry.go).

Third-party plugins install with pip: a distribution that declares an entry point in the
``taskdeck.plugins`` group names a ``Plugin`` or a ``ResourcePlugin`` (class or factory). A resource
plugin is put under the plugin manager over the engine's backend (``wrap``). An entry point that cannot be
loaded is logged and skipped: it never stops the engine.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
from collections.abc import Callable

from engine.errors import PluginNotFoundError
from engine.plugins.core import Plugin
from engine.plugins.resources import ResourcePlugin

__all__ = ["ENTRY_POINT_GROUP", "PluginNotFoundError", "PluginRegistry", "discover_plugins"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "taskdeck.plugins"


def discover_plugins(wrap: Callable[[ResourcePlugin], Plugin]) -> list[Plugin]:
    """The plugins installed packages declare, each loaded and instantiated once."""
    found: list[Plugin] = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = entry.load()
            plugin = target() if inspect.isclass(target) or callable(target) else target
            if isinstance(plugin, ResourcePlugin):
                plugin = wrap(plugin)
            if not isinstance(plugin, Plugin):
                raise TypeError(f"it made a {type(plugin).__name__}, not a Plugin or ResourcePlugin")
            if not plugin.id or not plugin.task_types:
                raise TypeError("the plugin names no id or no task types")
        except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not stop the engine
            log.warning("plugin entry point %s (%s) skipped: %s", entry.name, entry.value, exc)
            continue
        log.info("plugin %r from entry point %s handles %s", plugin.id, entry.name, ", ".join(plugin.task_types))
        found.append(plugin)
    return found


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
        if plugin_id not in self._plugins:
            raise PluginNotFoundError(f"no plugin {plugin_id!r} for task type {task_type!r}; there are "
                                      f"{', '.join(sorted(self._plugins))}")
        self._by_type[task_type] = self._plugins[plugin_id]

    def resolve(self, task_type: str) -> Plugin:
        plugin = self._by_type.get(task_type) or self._default
        if plugin is None:
            raise PluginNotFoundError(f"no plugin handles task type {task_type!r} and there is no default plugin")
        return plugin

    @property
    def plugins(self) -> list[Plugin]:
        return list(self._plugins.values())
