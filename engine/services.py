"""The engine's services, bundled: what its doors (the client interface, the HTTP API) are given.

Nothing behind a door reaches past these to the store, the controller or the plugins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine.feed import ChangeFeed
from engine.logs import LogService
from engine.runs import RunsService
from engine.storage_health import StorageHealth


@dataclasses.dataclass
class EngineServices:
    runs: RunsService
    feed: ChangeFeed
    health: StorageHealth
    logs: LogService
    data_dir: Path
    # the pools of reusable workers and the fork servers, as plain data (none when no engine runs here)
    workers: Callable[[], dict[str, Any]] = lambda: {"pools": [], "forkServers": []}
    # run, action → the object the Kubernetes backend would create for it (None: no engine here to build it)
    render: Callable[[str, str], dict[str, Any]] | None = None
    # local path, project, domain → where the upload store keeps a copy (None: read-only, no engine here)
    stage: Callable[[str, str, str], str] | None = None
    secrets: Any = None  # the SecretStore: values go in, never come out; logs are masked with them
    projects: Any = None  # the ProjectsService: runs are created only in projects that exist
    tasks: Any = None  # the TasksService: registered tasks and their code bundles
    triggers: Any = None  # the TriggersService: schedules that start runs of registered tasks
    # where the TaskActions live: {"kind": "embedded"} or {"kind": "kubernetes", "cluster": URL, "namespace": NS}
    backend: Callable[[], dict[str, Any]] = lambda: {"kind": "embedded"}
    # run, action → its object on the cluster now and the Events about it (--tasks-on pods; None: none there)
    cluster_object: Callable[[str, str], Awaitable[dict[str, Any] | None]] | None = None
