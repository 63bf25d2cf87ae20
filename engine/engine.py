"""The engine: store, controller (reconciler + workers), plugins, runs service and API server,
all as asyncio work on one event loop. The console embeds it; ``taskdeck --headless`` runs it alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from flyteidl2.task import task_definition_pb2

from engine import pygc
from engine.auth import Authority, endpoint_with_credential, write_private
from engine.http_gate import LOOPBACK_HOSTS
from engine.connect import ControllerServices
from engine.tls import ensure_certificate, loopback_names
from engine.datadir import DB_FILE, ENDPOINT_FILE, FLYTE_PORT_FILE, PORT_FILE, DataDirLock, default_data_dir, prepare_data_dir
from engine.feed import ChangeFeed
from engine.controller import ControllerManager
from engine.gc import DEFAULT_INTERVAL_SECONDS, DEFAULT_TTL_SECONDS, GarbageCollector
from engine.plugins.container import LocalContainerPlugin
from engine.plugins.dask import DaskPlugin
from engine.plugins.k8s_config import K8sConfig
from engine.render import KubernetesRenderer
from engine.projects import ProjectsService
from engine.quotas import ResourceManager
from engine.tasks import TasksService
from engine.triggers import TriggersService
from engine.secret_store import EmbeddedSecretStore, SecretStore
from engine.uploads import UploadStore
from engine.plugins.local_backend import LocalResourceBackend
from engine.plugins.local_dask import LocalDaskOperator
from engine.plugins.local_ray import LocalRayOperator
from engine.plugins.local_spark import LocalSparkOperator
from engine.plugins.spark import SparkPlugin
from engine.plugins.ray import RayPlugin
from engine.plugins.registry import PluginRegistry, discover_plugins
from engine.plugins.resource_manager import ResourcePluginManager
from engine.plugins.reusable import ReusableTaskPlugin
from engine.plugins.slots import default_capacity
from engine.plugins.sleep import SleepPlugin
from engine.reconciler import DEFAULT_MAX_SYSTEM_FAILURES, DEFAULT_REQUEUE_SECONDS, TaskActionReconciler
from engine.http_gate import DEFAULT_MAX_BODY_BYTES
from engine.logs import LogService
from engine.data_store import check_raw_data_prefix, open_data_store
from engine.names import check_advertise_url, check_listen_host, check_namespace
from engine.runs import RunsService
from engine.services import EngineServices
from engine.storage_health import StorageHealth
from engine.store.base import EngineStore
from engine.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

BACKENDS = ("embedded", "kubernetes")

class _PrivateFiles:
    """While an engine runs, what it (and every task process it starts) creates is private: umask 077."""

    holders = 0
    saved: int | None = None

    @classmethod
    def acquire(cls) -> None:
        if cls.holders == 0:
            cls.saved = os.umask(0o077)
        cls.holders += 1

    @classmethod
    def release(cls) -> None:
        cls.holders -= 1
        if cls.holders == 0 and cls.saved is not None:
            os.umask(cls.saved)


@dataclasses.dataclass
class EngineConfig:
    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    workers: int = 64
    requeue_after: float = DEFAULT_REQUEUE_SECONDS
    max_system_failures: int = DEFAULT_MAX_SYSTEM_FAILURES
    max_processes: int = dataclasses.field(default_factory=default_capacity)  # task processes computing at once
    task_start: str = "fork"  # "fork": SDK tasks fork from a warm fork server; "exec": a fresh interpreter each
    reuse: bool = True  # ReusePolicy tasks run on pools of reusable workers (False: a fresh process each)
    max_clusters: int | None = None  # local Dask/Ray clusters at once (None: a quarter of max_processes, at least 1)
    # task type → plugin id, over the plugins' own claims (Flyte's tasks.task-plugins.default-for-task-types)
    plugin_for_task_types: dict[str, str] = dataclasses.field(default_factory=dict)
    k8s_config: Path | None = None  # Flyte's k8s plugin settings (tolerations, ...), for rendered resources
    project_quotas: dict[str, int] = dataclasses.field(default_factory=dict)  # "project/domain" → running actions
    max_catch_up: int = 10  # missed trigger occurrences fired after downtime (the most recent ones)
    queue_quotas: dict[str, int] = dataclasses.field(default_factory=dict)  # queue → running actions
    commit_in_thread: bool = False  # True: SQLite commits in a writer thread instead of on the loop
    gc_ttl_seconds: float = DEFAULT_TTL_SECONDS  # terminated TaskActions are removed after this
    gc_interval_seconds: float = DEFAULT_INTERVAL_SECONDS  # 0 disables the collector
    use_actions_service: bool = True  # task processes use ActionsService (_U_USE_ACTIONS=1), as Flyte's do
    serve: bool = True  # the local HTTP API and the SDK's controller services
    tune_python_gc: bool = True  # see engine/pygc.py
    host: str = "127.0.0.1"
    port: int = 0
    flyte_port: int | None = 0  # the TLS listener for the stock flyte CLI (0: the port it had, else any; None: none)
    advertise_host: str | None = None  # a host name clients may use besides the loopback names
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # larger request bodies are refused with 413
    share_group: str | None = None  # a Unix group that may read the token (and so drive the engine)
    pass_env: tuple[str, ...] = ()  # engine environment variables task processes also get
    allowed_code_dirs: tuple[Path, ...] | None = None  # where a submitted codeDir may be (None: home)
    # "embedded": everything in the data directory's SQLite database; "kubernetes": TaskActions as custom
    # resources on a cluster (kubeconfig, its context, the namespace; in_cluster: a pod's service account)
    backend: str = "embedded"
    kubeconfig: Path | None = None
    kube_context: str | None = None
    namespace: str | None = None
    in_cluster: bool = False
    lease_seconds: float = 15.0  # the Kubernetes backend's leader lease: a dead leader's successor waits this long
    # the Kubernetes backend's runs data in PostgreSQL (postgresql://...), shared by a leader and its followers;
    # None: the data directory's SQLite database
    database: str | None = None
    # the Kubernetes backend's tasks: "processes" on this machine (the default), or "pods": container tasks as
    # Pods and Spark/Ray/Dask tasks as their operators' objects, created on the cluster by the plugin manager
    tasks_on: str = "processes"
    advertise_url: str | None = None  # how task pods reach this engine's services (default: its own URL)
    # with tasks on pods: inputs, outputs and uploads under this object store prefix (s3://bucket/path), which
    # the engine and its pods reach through the SDK's storage layer; None: the data directory
    raw_data: str | None = None

    def __post_init__(self) -> None:
        for name in ("workers", "max_processes", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")
        for name in ("requeue_after", "gc_ttl_seconds", "gc_interval_seconds"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 10 ** 9:
                raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
        if self.task_start not in ("fork", "exec"):
            raise ValueError(f"task_start must be 'fork' or 'exec', not {self.task_start!r}")
        if not isinstance(self.lease_seconds, (int, float)) or not 0.5 <= self.lease_seconds <= 3600:
            raise ValueError(f"lease_seconds must be from 0.5 to 3600, not {self.lease_seconds!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.backend == "embedded" and (self.kubeconfig or self.kube_context or self.namespace or self.in_cluster):
            raise ValueError("--kubeconfig, --context, --namespace and --in-cluster are for --backend kubernetes")
        if self.namespace is not None:
            check_namespace(self.namespace)
        if self.tasks_on not in ("processes", "pods"):
            raise ValueError(f"tasks_on must be 'processes' or 'pods', not {self.tasks_on!r}")
        if (self.tasks_on == "pods" or self.advertise_url) and self.backend != "kubernetes":
            raise ValueError("--tasks-on pods and --advertise-url are for --backend kubernetes")
        if self.advertise_url is not None:
            check_advertise_url(self.advertise_url)
            if self.advertise_host is None:  # pods name the engine so in their requests' Host: accept it
                self.advertise_host = urlsplit(self.advertise_url).hostname
        if self.host not in LOOPBACK_HOSTS:
            if self.backend != "kubernetes":
                raise ValueError("--listen on an address other than the loopback is for --backend kubernetes (task "
                                 "pods on a cluster reach the engine there); the embedded default serves this "
                                 "machine only")
            check_listen_host(self.host)
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"the port must be from 0 to 65535, not {self.port!r}")
        if self.raw_data is not None:
            if self.tasks_on != "pods":
                raise ValueError("--raw-data is for --tasks-on pods (task processes on this machine use the data "
                                 "directory)")
            self.raw_data = check_raw_data_prefix(self.raw_data)
        if self.database is not None:
            if self.backend != "kubernetes":
                raise ValueError("--database is for --backend kubernetes (the embedded default keeps its runs data "
                                 "in the data directory's SQLite database)")
            from engine.store.postgres import check_database_url  # no asyncpg import until it is used

            check_database_url(self.database)
        if not isinstance(self.max_system_failures, int) or not 0 <= self.max_system_failures <= 1000:
            raise ValueError(f"max_system_failures must be from 0 to 1000, not {self.max_system_failures!r}")


class Engine:
    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.data_dir = Path(self.config.data_dir).expanduser().resolve()
        self.elector = None  # the Kubernetes backend's leader election (engine/leader.py)
        self.rebuilt: list = []  # actions whose rows this engine rebuilt from their TaskActions (engine/takeover.py)
        self._kube_client = None
        self._pod_watch = None
        self._lease_task: asyncio.Task | None = None
        self._step_down: asyncio.Task | None = None
        self.store = self._make_store()
        self.files = open_data_store(self.data_dir, self.config.raw_data)  # inputs, outputs, uploads
        self.health = StorageHealth(self.store, self.data_dir)
        self.authority = Authority(self.data_dir, share_group=self.config.share_group)
        self.registry = PluginRegistry()
        self.container_plugin = LocalContainerPlugin(max_processes=self.config.max_processes,
                                                     pass_env=tuple(self.config.pass_env),
                                                     work_dir=self.data_dir / "work", start_mode=self.config.task_start)
        self.registry.register(self.container_plugin)
        self.reusable_plugin = ReusableTaskPlugin(self.container_plugin, self.data_dir / "work",
                                                  setup=self.container_plugin.setup, enabled=self.config.reuse,
                                                  credential=self._worker_env)
        self.authority.worker_runs = self.reusable_plugin.runs_of_worker
        self.registry.register(self.reusable_plugin)
        self.k8s = K8sConfig.from_file(self.config.k8s_config) if self.config.k8s_config else K8sConfig()
        if self.config.tasks_on == "pods":
            from engine.plugins.cluster_backend import ClusterResourceBackend
            from engine.plugins.pod import PodPlugin

            resources = ClusterResourceBackend(self._kube_client, endpoint_for=self._pod_endpoint,
                                               namespace=self.store.namespace, owns_client=False,
                                               storage_env=self.files.task_env())
            self._pod_watch = resources.watch_pods  # started with the controller: a Pod's change wakes its owner
            pods = ResourcePluginManager(PodPlugin(k8s=self.k8s), resources, k8s=self.k8s)
            self.registry.register(pods)
            for task_type in pods.task_types:
                self.registry.set_default_for(task_type, pods.id)
        else:
            resources = LocalResourceBackend(self.data_dir / "work", [
                LocalDaskOperator(self.container_plugin.setup),
                LocalRayOperator(self.container_plugin.setup, self.data_dir),
                LocalSparkOperator(self.container_plugin.setup, self.data_dir)],
                max_running=self.config.max_clusters or max(1, self.config.max_processes // 4))
        self.resource_managers = [ResourcePluginManager(p, resources, k8s=self.k8s)
                                  for p in (DaskPlugin(self.k8s), RayPlugin(self.k8s), SparkPlugin(self.k8s))]
        for manager in self.resource_managers:
            self.registry.register(manager)
        self.registry.register(SleepPlugin())
        for plugin in discover_plugins(lambda found: ResourcePluginManager(found, resources, k8s=self.k8s)):
            self.registry.register(plugin)
            if isinstance(plugin, ResourcePluginManager):
                self.resource_managers.append(plugin)
        for task_type, plugin_id in self.config.plugin_for_task_types.items():
            self.registry.set_default_for(task_type, plugin_id)
        self.runtime_env: dict[str, str] = {}
        self.secrets = self._make_secret_store()
        self.projects = ProjectsService(self.store)
        self.tasks = TasksService(self.store, self.data_dir, self.projects, files=self.files)
        self.triggers = TriggersService(self.store, self.tasks, self._start_triggered_run,
                                        max_catch_up=self.config.max_catch_up)
        passed_env = self._passed_env
        self.reconciler = TaskActionReconciler(
            self.store, self.registry, self.data_dir, self._enqueue,
            runtime_env=self.runtime_env, task_env=self._task_env, health=self.health,
            max_system_failures=self.config.max_system_failures,
            requeue_after=self.config.requeue_after, secrets=self.secrets, passed_env=passed_env,
            quotas=ResourceManager(self.config.project_quotas, self.config.queue_quotas), files=self.files,
        )
        self.manager = ControllerManager(self.store, self.reconciler.reconcile, workers=self.config.workers,
                                         is_echo=self.reconciler.is_echo)
        self.runs = RunsService(self.store, self.data_dir, report_file_fault=self.health.report_file_fault,
                                passed_env=passed_env, secrets=self.secrets,
                                plugin_for=lambda task_type: self.registry.resolve(task_type).id, files=self.files,
                                why_no_secret_files=self._why_no_secret_files)
        self.services = EngineServices(self.runs, ChangeFeed(self.store, self.health), self.health,
                                       LogService(self.data_dir), self.data_dir, self._workers,
                                       KubernetesRenderer(self.reconciler.build_context,
                                                          self.runs.task_action_named, k8s=self.k8s).render,
                                       UploadStore(self.data_dir, self.files).stage, self.secrets, self.projects, self.tasks,
                                       self.triggers, self._backend)
        if self.config.tasks_on == "pods":
            from engine.cluster_objects import ClusterObjects

            self.services.cluster_object = ClusterObjects(self.reconciler.build_context, self.runs.task_action_named,
                                                          self.registry.resolve).describe
        self.controller_services = ControllerServices(self.runs, max_body_bytes=self.config.max_body_bytes)
        self.gc = GarbageCollector(self.store, self.config.gc_ttl_seconds, self.config.gc_interval_seconds,
                                   resource_sweeps=[m.collect_garbage for m in self.resource_managers])
        self._lock = DataDirLock(self.data_dir)
        self._server = None
        self._control_plane = None
        self._private = False
        self.url: str | None = None
        self.started = False
        self._gc_tuned = False

    async def _start_triggered_run(self, task, inputs, name: str, scheduled, annotations: dict[str, str]):
        code_dir = await asyncio.to_thread(self.tasks.code_dir, task)
        spec = task_definition_pb2.TaskSpec()
        spec.ParseFromString(task.spec)
        return await self.runs.create_run(spec, inputs, project=task.project, domain=task.domain, name=name,
                                          code_dir=code_dir, annotations=annotations, run_start_time=scheduled)

    async def _why_no_secret_files(self, task_type: str) -> str | None:
        """Why tasks of this type cannot have secrets mounted as files, or None: they can. Pods (and what
        makes pods: RayJob, DaskJob, SparkApplication) get the namespace's Secrets as a volume; a local task
        process in a mount namespace of its own, where the machine allows one."""
        plugin = self.registry.resolve(task_type)
        if self.config.tasks_on == "pods" and plugin.id in ("pod", "ray", "dask", "spark"):
            return None
        if plugin.mounts_secret_values:
            return await self.container_plugin.why_no_secret_mounts()
        return (f"{task_type!r} tasks run here through the {plugin.id} plugin's local processes, which get no "
                "mounted files (tasks as Pods do: --tasks-on pods)")

    def _passed_env(self) -> frozenset[str]:
        """Engine variables task processes get (--pass-env) that are set: they stand in for missing secrets."""
        return frozenset(n for n in self.config.pass_env if n in os.environ)

    def _enqueue(self, name: str) -> None:
        self.manager.wake(name)

    def _task_env(self, project: str, domain: str, run: str) -> dict[str, str]:
        """A task process reaches the controller services with its run's credential in the endpoint."""
        if self.url is None:
            return {}
        return {"_U_EP_OVERRIDE": endpoint_with_credential(self.url, self.authority.run_token(project, domain, run))}

    def _pod_endpoint(self, tctx) -> str | None:
        """What a task pod of this action's run reaches the controller services at: the advertised address
        (or this engine's), with the run's credential."""
        base = self.config.advertise_url or self.url
        if base is None:
            return None
        md = tctx.metadata
        return endpoint_with_credential(base, self.authority.run_token(md.project, md.domain, md.run_name))

    def _worker_env(self, worker: str) -> dict[str, str]:
        """A reusable worker reaches the controller services with its own credential: it covers the runs
        whose actions the worker is running, while it runs them."""
        if self.url is None:
            return {}
        return {"_U_EP_OVERRIDE": endpoint_with_credential(self.url, self.authority.worker_token(worker))}

    def _workers(self) -> dict:
        zygotes = self.container_plugin.zygotes
        return {"pools": self.reusable_plugin.snapshot(), "forkServers": zygotes.snapshot() if zygotes else [],
                "quotas": self.reconciler.quotas.snapshot()}

    @property
    def token_path(self) -> Path:
        return self.authority.token_path

    def _backend(self) -> dict:
        describe = getattr(self.store, "describe", None)
        backend = describe() if describe is not None else {"kind": "embedded"}
        if self.elector is not None:
            backend.update(role=self.elector.role, leader=self.elector.holder,
                           rebuiltActions=[item.describe() for item in self.rebuilt[-20:]],
                           rebuiltActionCount=len(self.rebuilt))
        return backend

    def _lease_lost(self) -> None:
        """Another engine leads now: this one stops reconciling, collecting and firing triggers at once."""
        async def step_down() -> None:
            await self.triggers.stop()
            await self.gc.stop()
            await self.manager.stop()
        self._step_down = asyncio.get_running_loop().create_task(step_down(), name="lease-lost")

    def _make_secret_store(self) -> SecretStore:
        """The embedded default encrypts values in its database; the Kubernetes backend keeps them in the
        namespace's Secrets, where its pods take them from."""
        if self.config.backend != "kubernetes":
            return EmbeddedSecretStore(self.store, self.data_dir)
        from engine.kube_secrets import KubernetesSecretStore

        return KubernetesSecretStore(self._kube_client, self.store.namespace)

    def _make_store(self) -> EngineStore:
        if self.config.backend == "embedded":
            return SqliteStore(self.data_dir / DB_FILE, inline_commits=not self.config.commit_in_thread)
        from engine.store.cluster import ClusterStore
        from engine.store.kubernetes import KubernetesResourceStore, connect

        from engine.leader import LeaseElector

        api_client, namespace = connect(self.config.kubeconfig, self.config.kube_context, self.config.namespace,
                                        in_cluster=self.config.in_cluster)
        self._kube_client = api_client  # the engine's: closed after the store and the election are done with it
        identity = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        database = self._runs_database(identity)
        lease = self.config.lease_seconds
        self.elector = LeaseElector(api_client, namespace, identity, lease_seconds=lease,
                                    renew_seconds=max(lease / 3, 0.2), retry_seconds=max(lease / 7, 0.1))
        return ClusterStore(KubernetesResourceStore(api_client, namespace), database)

    def _runs_database(self, identity: str):
        if self.config.database is None:
            return SqliteStore(self.data_dir / DB_FILE, inline_commits=not self.config.commit_in_thread)
        try:
            from engine.store.postgres import PostgresRunsStore
        except ImportError:
            raise ValueError("--database postgresql://... needs asyncpg: pip install 'taskdeck[postgresql]'") from None
        return PostgresRunsStore(self.config.database, engine_id=identity)

    async def start(self) -> None:
        prepare_data_dir(self.data_dir, shared=self.config.share_group is not None)
        self._lock.acquire()
        # A killed engine leaves its engine.json. With the lock held, clients would read that stale address
        # (often this engine's own stable port) before this engine listens on it: gone until it does.
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / ENDPOINT_FILE).unlink()
        _PrivateFiles.acquire()
        self._private = True
        try:
            self.authority.load()
            self.authority.share_file(self._lock.path)  # the group tells a live engine by its lock
            if self.files.remote:  # a store that cannot be used is one clear error now, not a failed run later
                await asyncio.to_thread(self.files.probe)
            await self.store.start()
            await self.projects.ensure_default()
            if self.config.serve:  # before any launch: task processes get this address (with their credential)
                self.url = await self._start_server()
                self.runtime_env["_U_INSECURE"] = "true"
                if self.config.use_actions_service:
                    self.runtime_env["_U_USE_ACTIONS"] = "1"
                endpoint = {"pid": os.getpid(), "url": self.url}
                if self._server.tls_url:
                    endpoint.update(flyteUrl=self._server.tls_url, caFile=str(self._server.tls[0]))
                write_private(self.data_dir / ENDPOINT_FILE, json.dumps(endpoint))
                self.authority.share_file(self.data_dir / ENDPOINT_FILE)
            if self.elector is not None:  # one engine reconciles a namespace: wait for the lease
                await self.elector.acquire()
                self._lease_task = asyncio.create_task(self.elector.hold(self._lease_lost), name="lease")
                from engine.takeover import rebuild_missing_actions

                self.rebuilt = await rebuild_missing_actions(self.store)  # the dead leader's, without its database
            await self.manager.start()
            if self._pod_watch is not None:
                self._pod_watch(self._enqueue)
            await self.gc.start()
            await self.triggers.start()
        except BaseException:
            await self._shutdown()
            raise
        self.started = True
        if self.config.tune_python_gc:
            pygc.hold()
            self._gc_tuned = True
        log.info("engine started on %s (data dir %s)", self.url or "no API", self.data_dir)

    async def _start_server(self) -> str:
        """Serve on the ports this data directory used before when possible, so task processes that
        outlived the previous engine (and hold its address) reach this one, and the flyte CLI's config
        stays right."""
        from engine.api import ApiServer, TaskDeckApi
        from engine.client.local import LocalClient
        from engine.control_plane import ControlPlane

        candidates = [(self.config.port or self._remembered(PORT_FILE), self.config.flyte_port or
                       self._remembered(FLYTE_PORT_FILE))]
        if candidates[0] != (self.config.port, self.config.flyte_port or 0):
            candidates.append((self.config.port, self.config.flyte_port or 0))
        last_error: Exception | None = None
        client = LocalClient(self.services)
        api = TaskDeckApi(client, self._allowed_code_dirs())
        self._control_plane = ControlPlane(client, self.authority, self.data_dir, self.config.max_body_bytes,
                                           files=self.files)
        tls = None
        if self.config.flyte_port is not None:
            tls = await asyncio.to_thread(ensure_certificate, self.data_dir / "tls",
                                          loopback_names(self.config.advertise_host))
            self.authority.share_dir(tls[0].parent)  # a --share-group group's flyte CLI must trust the listener
            self.authority.share_file(tls[0])
        for port, flyte_port in candidates:
            self._server = ApiServer(api, self.controller_services.apps() + self._control_plane.apps(),
                                     self.authority, self.config.host, port,
                                     max_body_bytes=self.config.max_body_bytes,
                                     advertise_host=self.config.advertise_host, routes=self._control_plane.routes(),
                                     tls=tls, tls_port=flyte_port)
            try:
                url = await self._server.start()
            except (OSError, SystemExit, RuntimeError) as exc:  # uvicorn exits when the port is taken
                last_error = exc
                self._server = None
                continue
            write_private(self.data_dir / PORT_FILE, url.rsplit(":", 1)[1])
            if self._server.tls_url:
                write_private(self.data_dir / FLYTE_PORT_FILE, self._server.tls_url.rsplit(":", 1)[1])
            self._control_plane.set_plain_url(url)
            return url
        raise RuntimeError(f"could not start the engine's server: {last_error}")

    def _remembered(self, name: str) -> int:
        try:
            return int((self.data_dir / name).read_text().strip())
        except (OSError, ValueError):
            return 0

    def last_request_age(self) -> float:
        """Seconds since the API last received a request (infinite when it does not serve)."""
        if self._server is None:
            return float("inf")
        return time.monotonic() - self._server.gate.last_request

    def _allowed_code_dirs(self) -> list[Path]:
        if self.config.allowed_code_dirs is not None:
            return [Path(p).expanduser().resolve() for p in self.config.allowed_code_dirs]
        return [Path.home()]

    async def stop(self) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self.started = False
        self.controller_services.closing.set()  # end the SDK's watch streams so the server can stop
        if self._control_plane is not None:
            self._control_plane.close()
        if self._server is not None:
            await self._server.stop()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / ENDPOINT_FILE).unlink()
        await self.triggers.stop()
        await self.gc.stop()
        await self.manager.stop()
        if self._lease_task is not None:
            self._lease_task.cancel()
            self._lease_task = None
        if self.elector is not None:
            await self.elector.release()
        await self.health.close()
        for plugin in self.registry.plugins:
            await plugin.close()
        await self.store.close()
        if self._kube_client is not None:
            self._kube_client.close()
        self._lock.release()
        if self._private:
            self._private = False
            _PrivateFiles.release()
        if self._gc_tuned:
            self._gc_tuned = False
            pygc.release()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

