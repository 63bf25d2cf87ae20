"""The engine: store, controller (reconciler + workers), plugins, runs service and API server,
all as asyncio work on one event loop. The console embeds it; ``taskdeck --headless`` runs it alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
from pathlib import Path

from engine import pygc
from engine.connect import ControllerServices
from engine.controller import ControllerManager
from engine.gc import DEFAULT_INTERVAL_SECONDS, DEFAULT_TTL_SECONDS, GarbageCollector
from engine.plugins.container import LocalContainerPlugin
from engine.plugins.registry import PluginRegistry
from engine.plugins.sleep import SleepPlugin
from engine.reconciler import DEFAULT_MAX_SYSTEM_FAILURES, DEFAULT_REQUEUE_SECONDS, TaskActionReconciler
from engine.runs import RunsService
from engine.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

LOCK_FILE = "engine.lock"
PORT_FILE = "engine.port"  # kept across restarts: running tasks hold this port in _U_EP_OVERRIDE
ENDPOINT_FILE = "engine.json"
DB_FILE = "taskdeck.db"


def default_data_dir() -> Path:
    if os.environ.get("TASKDECK_DATA_DIR"):
        return Path(os.environ["TASKDECK_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "taskdeck"


class EngineAlreadyRunningError(RuntimeError):
    pass


@dataclasses.dataclass
class EngineConfig:
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    workers: int = 64
    requeue_after: float = DEFAULT_REQUEUE_SECONDS
    max_system_failures: int = DEFAULT_MAX_SYSTEM_FAILURES
    max_processes: int = 16
    commit_in_thread: bool = False  # True: SQLite commits in a writer thread instead of on the loop
    gc_ttl_seconds: float = DEFAULT_TTL_SECONDS  # terminated TaskActions are removed after this
    gc_interval_seconds: float = DEFAULT_INTERVAL_SECONDS  # 0 disables the collector
    use_actions_service: bool = True  # task processes use ActionsService (_U_USE_ACTIONS=1), as Flyte's do
    serve: bool = True  # the local HTTP API (and, later, the SDK's controller services)
    tune_python_gc: bool = True  # see engine/pygc.py
    host: str = "127.0.0.1"
    port: int = 0


class DataDirLock:
    """One engine per data directory: an exclusive flock, released by the kernel if the engine dies."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = read_endpoint(self.path.parent)
            pid = f" (pid {owner['pid']})" if owner else ""
            raise EngineAlreadyRunningError(
                f"another TaskDeck engine{pid} is already serving {self.path.parent}; "
                "stop it or use another --data-dir"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_endpoint(data_dir: Path) -> dict | None:
    """The live engine serving ``data_dir`` ({pid, url}), or None when none holds the lock."""
    lock_path = data_dir / LOCK_FILE
    if not lock_path.exists():
        return None
    fd = os.open(lock_path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: an engine is live
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    try:
        return json.loads((data_dir / ENDPOINT_FILE).read_text())
    except (OSError, ValueError):
        return None


class Engine:
    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.data_dir = Path(self.config.data_dir).expanduser().resolve()
        self.store = SqliteStore(self.data_dir / DB_FILE, inline_commits=not self.config.commit_in_thread)
        self.registry = PluginRegistry()
        self.container_plugin = LocalContainerPlugin(max_processes=self.config.max_processes)
        self.registry.register(self.container_plugin)
        self.registry.register(SleepPlugin())
        self.runtime_env: dict[str, str] = {}
        self.reconciler = TaskActionReconciler(
            self.store, self.registry, self.data_dir, self._enqueue,
            runtime_env=self.runtime_env,
            max_system_failures=self.config.max_system_failures,
            requeue_after=self.config.requeue_after,
        )
        self.manager = ControllerManager(self.store, self.reconciler.reconcile, workers=self.config.workers)
        self.runs = RunsService(self.store, self.data_dir)
        self.controller_services = ControllerServices(self)
        self.gc = GarbageCollector(self.store, self.config.gc_ttl_seconds, self.config.gc_interval_seconds)
        self._lock = DataDirLock(self.data_dir)
        self._server = None
        self.url: str | None = None
        self.started = False
        self._gc_tuned = False

    def _enqueue(self, name: str) -> None:
        self.manager.queue.add(name)

    async def start(self) -> None:
        self._lock.acquire()
        try:
            await self.store.start()
            await self.manager.start()
            await self.gc.start()
            if self.config.serve:
                self.url = await self._start_server()
                # Task processes reach the SDK's controller services here (flyte-sdk-client §4.4).
                self.runtime_env.update({"_U_EP_OVERRIDE": self.url, "_U_INSECURE": "true"})
                if self.config.use_actions_service:
                    self.runtime_env["_U_USE_ACTIONS"] = "1"
                (self.data_dir / ENDPOINT_FILE).write_text(json.dumps({"pid": os.getpid(), "url": self.url}))
        except BaseException:
            await self._shutdown()
            raise
        self.started = True
        if self.config.tune_python_gc:
            pygc.engine_started()
            self._gc_tuned = True
        log.info("engine started on %s (data dir %s)", self.url or "no API", self.data_dir)

    async def _start_server(self) -> str:
        """Serve on the port this data directory used before when possible, so task processes that
        outlived the previous engine (and hold its address) reach this one."""
        from engine.api import ApiServer

        port_file = self.data_dir / PORT_FILE
        candidates = [self.config.port]
        if not self.config.port and port_file.exists():
            try:
                candidates.insert(0, int(port_file.read_text().strip()))
            except ValueError:
                pass
        last_error: Exception | None = None
        for port in candidates:
            self._server = ApiServer(self, self.config.host, port)
            try:
                url = await self._server.start()
            except (OSError, SystemExit, RuntimeError) as exc:  # uvicorn exits when the port is taken
                last_error = exc
                self._server = None
                continue
            port_file.write_text(url.rsplit(":", 1)[1])
            return url
        raise RuntimeError(f"could not start the engine's server: {last_error}")

    async def stop(self) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self.started = False
        self.controller_services.closing.set()  # end the SDK's watch streams so the server can stop
        if self._server is not None:
            await self._server.stop()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / ENDPOINT_FILE).unlink()
        await self.gc.stop()
        await self.manager.stop()
        for plugin in self.registry.plugins:
            await plugin.close()
        await self.store.close()
        self._lock.release()
        if self._gc_tuned:
            self._gc_tuned = False
            pygc.engine_stopped()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

