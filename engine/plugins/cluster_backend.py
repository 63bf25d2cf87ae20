"""The resource backend of a Kubernetes cluster: the plugin manager's objects (Pods, SparkApplications, RayJobs,
DaskJobs) created, read, listed and deleted through the API server with the official client.

The API server's refusals come back as the backend errors the manager branches on, as Flyte's
``launchResource`` does: 409 AlreadyExists (launched before), 403, 413, 422, 400; anything else is a
``BackendError`` the reconciler counts as a system failure. The sync client runs off the event loop.

Task pods reach the engine's controller services with their run's credential, as local task processes
do, and get the secrets their task asks for, but neither is ever a value in the pod spec (anyone who may
read pods would read them): each object gets a Secret, owned by its TaskAction (collected with it),
holding the endpoint with the credential and those secrets' values, and its containers name them by
``secretKeyRef`` (``_U_EP_OVERRIDE``, and each secret's variable as the SDK's Secret names it).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import json
import logging
import threading
from collections.abc import Callable

from engine.plugins.core import TaskExecutionContext
from engine.plugins.task_setup import SDK_DEFAULTS
from engine.plugins.resources import (
    AlreadyExistsError,
    BackendError,
    BadRequestError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    Resource,
    ResourceBackend,
    TooLargeError,
)

# kind → (group, version, plural) of the custom resources the plugins build; Pods are core/v1
CUSTOM_KINDS = {
    "SparkApplication": ("sparkoperator.k8s.io", "v1beta2", "sparkapplications"),
    "RayJob": ("ray.io", "v1", "rayjobs"),
    "RayCluster": ("ray.io", "v1", "rayclusters"),
    "DaskJob": ("kubernetes.dask.org", "v1", "daskjobs"),
}
# the kinds whose changes wake their owners (a RayCluster is the RayJob's, not a TaskAction's)
WATCHED_KINDS = {kind: where for kind, where in CUSTOM_KINDS.items() if kind != "RayCluster"}
log = logging.getLogger(__name__)

ENDPOINT_ENV = "_U_EP_OVERRIDE"
ENDPOINT_KEY = "endpoint"
_ERRORS = {409: AlreadyExistsError, 404: NotFoundError, 403: ForbiddenError, 413: TooLargeError, 422: InvalidError,
           400: BadRequestError}


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def pod_specs(resource) -> list[dict]:
    """Every pod spec in an object (a Pod's; the templates of a RayJob, DaskJob, SparkApplication's driver
    and executor): the dicts that hold ``containers``."""
    found: list[dict] = []
    if isinstance(resource, dict):
        if isinstance(resource.get("containers"), list):
            found.append(resource)
        for value in resource.values():
            found += pod_specs(value)
    elif isinstance(resource, list):
        for value in resource:
            found += pod_specs(value)
    return found


SECRET_VOLUME = "flyte-secrets"
SECRET_FILES_DIR = "/etc/flyte/secrets"  # Flyte's mount path for file secrets (the one the SDK allows)


def pod_parts(resource) -> list[tuple[dict, list[dict]]]:
    """(where the volumes go, the containers that get the environment and the mounts) of each pod an object
    makes: its pod specs with their containers, and a SparkApplication's spec with its driver and executor
    (whose ``env`` and ``volumeMounts`` the operator gives their pods, ``spec.volumes`` the volumes)."""
    parts = [(spec, spec["containers"] + (spec.get("initContainers") or [])) for spec in pod_specs(resource)]
    if resource.get("kind") == "SparkApplication":
        spec = resource.get("spec") or {}
        containers = [part for part in (spec.get("driver"), spec.get("executor")) if isinstance(part, dict)]
        if containers:
            parts.append((spec, containers))
    return parts


def task_secret_name(resource_name: str) -> str:
    return f"{resource_name[:63 - len('-task')].rstrip('-')}-task"


class ClusterResourceBackend(ResourceBackend):
    """Objects in the cluster ``api_client`` reaches (a ``kubernetes.client.ApiClient``).

    ``endpoint_for(tctx)``: the engine endpoint, with the run's credential, the action's pods use (None: they
    get none)."""

    serves_pod_logs = True

    def __init__(self, api_client, endpoint_for: Callable[[TaskExecutionContext], str | None] | None = None,
                 namespace: str | None = None, owns_client: bool = True, storage_env: dict[str, str] | None = None):
        from kubernetes import client  # imported here: the embedded default never loads it

        self._api_client = api_client
        self._owns_client = owns_client  # False: the engine's, shared with its store, closed by the engine
        self.namespace = namespace  # a list without one (garbage collection) stays in it: a Role suffices
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._endpoint_for = endpoint_for
        # how pods reach the raw-data object store (the SDK's variables, credentials among them): from the Secret
        self._storage_env = dict(storage_env or {})

    async def _give_task_secret(self, resource: Resource, tctx: TaskExecutionContext) -> None:
        endpoint = self._endpoint_for(tctx) if self._endpoint_for is not None else None
        parts = pod_parts(resource)
        if (endpoint is None and not tctx.secret_env and not self._storage_env and not tctx.secret_files) \
                or not parts:
            return
        values = {f"env.{k}": v for k, v in self._storage_env.items()}
        # the task's secrets kept in Kubernetes Secrets are taken from those; only the rest are copied here
        values.update({f"env.{k}": v for k, v in tctx.secret_env.items() if k not in tctx.secret_refs})
        if endpoint is not None:
            values[ENDPOINT_KEY] = endpoint
        md = resource["metadata"]
        name = task_secret_name(md["name"])
        secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                  "metadata": {"name": name, "namespace": md.get("namespace") or "default",
                               "labels": {"flyte.org/managed": "true"},
                               "ownerReferences": [{"apiVersion": "flyte.org/v1", "kind": "TaskAction",
                                                    "name": tctx.metadata.owner_name, "uid": tctx.metadata.owner_uid}]},
                  "data": {k: base64.b64encode(v.encode()).decode() for k, v in sorted(values.items())}}
        if values:
            try:
                await self._call(self._core.create_namespaced_secret, secret["metadata"]["namespace"], secret)
            except AlreadyExistsError:  # an earlier try of this attempt: its values may be older (a rotated secret)
                await self._call(self._core.patch_namespaced_secret, name, secret["metadata"]["namespace"],
                                 {"data": secret["data"]}, _content_type="application/merge-patch+json")
        given = [{"name": k, "value": v} for k, v in sorted(self._engine_env(tctx).items())]
        given += [{"name": key.removeprefix("env."), "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
                  for key in sorted(values) if key.startswith("env.")]
        given += [{"name": var, "valueFrom": {"secretKeyRef": {"name": ref[0], "key": ref[1]}}}
                  for var, ref in sorted(tctx.secret_refs.items())]
        if endpoint is not None:
            given.append({"name": ENDPOINT_ENV, "valueFrom": {"secretKeyRef": {"name": name, "key": ENDPOINT_KEY}}})
        names = {e["name"] for e in given}
        if tctx.secret_files:
            self._mount_secret_files(parts, tctx.secret_files)
        for _, containers in parts:
            for container in containers:
                container["env"] = [e for e in container.get("env") or [] if e.get("name") not in names] + \
                    copy.deepcopy(given)

    @staticmethod
    def _mount_secret_files(parts: list[tuple[dict, list[dict]]], files: list[tuple[str, str, str]]) -> None:
        """The task's file secrets as one read-only projected volume of their Kubernetes Secrets at
        /etc/flyte/secrets (``<group>/<key>``, or ``<key>``), in every container of the object's pods."""
        sources: dict[str, list[dict]] = {}
        for path, secret, key in files:
            sources.setdefault(secret, []).append({"key": key, "path": path, "mode": 0o400})
        volume = {"name": SECRET_VOLUME, "projected": {"defaultMode": 0o400, "sources": [
            {"secret": {"name": secret, "items": items}} for secret, items in sorted(sources.items())]}}
        for spec, containers in parts:
            spec["volumes"] = [v for v in spec.get("volumes") or [] if v.get("name") != SECRET_VOLUME] + [volume]
            for container in containers:
                mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") != SECRET_VOLUME]
                container["volumeMounts"] = mounts + [{"name": SECRET_VOLUME, "mountPath": SECRET_FILES_DIR,
                                                       "readOnly": True}]

    @staticmethod
    def _engine_env(tctx: TaskExecutionContext) -> dict[str, str]:
        """What the SDK in a pod needs to talk to this engine as a task process does: how (plaintext, the
        ActionsService), its enqueue rate; with the data on a path both see (no object store), the
        directories it writes made as it writes."""
        env = {**SDK_DEFAULTS, **{k: v for k, v in tctx.runtime_env.items() if k != ENDPOINT_ENV}}
        if "://" not in tctx.output_prefix:
            env["FSSPEC_FILE_AUTO_MKDIR"] = "true"
        return env

    async def _call(self, fn, *args, **kwargs):
        from kubernetes.client.rest import ApiException

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as exc:
            try:
                message = json.loads(exc.body or "{}").get("message") or exc.reason
            except ValueError:
                message = exc.reason
            raise _ERRORS.get(exc.status, BackendError)(f"{exc.status} {message}") from None
        except Exception as exc:  # unreachable, timed out: the reconciler retries it as a system failure
            raise BackendError(f"the Kubernetes API server cannot be reached: {exc}") from exc

    def _where(self, resource: Resource) -> tuple[str, str, str, tuple[str, str, str] | None]:
        md = resource.get("metadata") or {}
        kind = resource["kind"]
        if kind == "Pod":
            return kind, md.get("namespace") or "default", md.get("name") or "", None
        if kind not in CUSTOM_KINDS:
            raise InvalidError(f"no cluster kind {resource.get('apiVersion')}/{kind} is known to this backend")
        return kind, md.get("namespace") or "default", md.get("name") or "", CUSTOM_KINDS[kind]

    def _plain(self, obj) -> Resource:
        return obj if isinstance(obj, dict) else self._api_client.sanitize_for_serialization(obj)

    async def create(self, resource: Resource, tctx: TaskExecutionContext) -> Resource:
        kind, namespace, _, custom = self._where(resource)
        await self._give_task_secret(resource, tctx)
        if custom is None:
            return self._plain(await self._call(self._core.create_namespaced_pod, namespace, resource))
        group, version, plural = custom
        return await self._call(self._custom.create_namespaced_custom_object, group, version, namespace, plural,
                                resource)

    async def get(self, identity: Resource) -> Resource:
        kind, namespace, name, custom = self._where(identity)
        if custom is None:
            return self._plain(await self._call(self._core.read_namespaced_pod, name, namespace))
        group, version, plural = custom
        return await self._call(self._custom.get_namespaced_custom_object, group, version, namespace, plural, name)

    async def delete(self, identity: Resource) -> None:
        kind, namespace, name, custom = self._where(identity)
        if custom is None:
            await self._call(self._core.delete_namespaced_pod, name, namespace)
            return
        group, version, plural = custom
        await self._call(self._custom.delete_namespaced_custom_object, group, version, namespace, plural, name)

    async def list(self, api_version: str, kind: str, namespace: str | None, labels: dict[str, str]) -> list[Resource]:
        selector = _selector(labels)
        namespace = namespace or self.namespace
        if kind == "Pod":
            if namespace:
                found = await self._call(self._core.list_namespaced_pod, namespace, label_selector=selector)
            else:
                found = await self._call(self._core.list_pod_for_all_namespaces, label_selector=selector)
            return [self._plain(p) for p in found.items]
        if kind not in CUSTOM_KINDS:
            return []
        group, version, plural = CUSTOM_KINDS[kind]
        if namespace:
            found = await self._call(self._custom.list_namespaced_custom_object, group, version, namespace, plural,
                                     label_selector=selector)
        else:
            found = await self._call(self._custom.list_cluster_custom_object, group, version, plural,
                                     label_selector=selector)
        return found.get("items") or []

    def watch_pods(self, on_change: Callable[[str], None]) -> None:
        """Call ``on_change(task_action_name)`` (on the calling loop) whenever one of the engine's objects
        changes (its Pods, SparkApplications, RayJobs, DaskJobs), as Flyte's plugin manager enqueues the owner
        from its informers: an end is seen at once, not at the next periodic check. One watch thread per
        kind (the client is sync) until ``close``; a kind the cluster does not serve is retried slowly."""
        loop = asyncio.get_running_loop()
        self._watching = threading.Event()
        listers = {"Pod": lambda **kw: self._core.list_namespaced_pod(self.namespace or "default", **kw)}
        for kind, (group, version, plural) in WATCHED_KINDS.items():
            listers[kind] = functools.partial(self._custom.list_namespaced_custom_object, group, version,
                                              self.namespace or "default", plural)
        self._watch_threads = [threading.Thread(target=self._watch_kind, args=(kind, lister, loop, on_change,
                                                                                self._watching),
                                                name=f"watch-{kind.lower()}", daemon=True)
                               for kind, lister in listers.items()]
        for thread in self._watch_threads:
            thread.start()

    def _watch_kind(self, kind: str, lister, loop, on_change, stopping: threading.Event) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        version = None
        while not stopping.is_set():
            stream = watch.Watch()
            try:
                kwargs = {"resource_version": version} if version else {}
                for event in stream.stream(lister, label_selector="flyte.org/managed=true", timeout_seconds=5,
                                           **kwargs):
                    obj = event["object"]
                    meta = (obj.get("metadata") or {}) if isinstance(obj, dict) else None
                    if meta is not None:  # a custom object: a plain dict
                        version = meta.get("resourceVersion")
                        owners = [(r.get("kind"), r.get("name")) for r in meta.get("ownerReferences") or []]
                    else:
                        version = obj.metadata.resource_version
                        owners = [(r.kind, r.name) for r in obj.metadata.owner_references or []]
                    for owner_kind, owner in owners:
                        if owner_kind == "TaskAction" and not loop.is_closed():
                            loop.call_soon_threadsafe(on_change, owner)
                    if stopping.is_set():
                        break
            except ApiException as exc:
                version = None if exc.status == 410 else version
                # 404: the cluster serves no such kind (its operator is not installed): look again later
                stopping.wait(30.0 if exc.status == 404 else 0.5)
            except Exception as exc:  # the server unreachable for a moment: the periodic checks go on meanwhile
                log.debug("%s watch interrupted: %s", kind, exc)
                stopping.wait(1.0)
            finally:
                stream.stop()

    async def events_of(self, identity: Resource) -> list[dict]:
        """The Kubernetes Events about an object, oldest first (what `kubectl describe` lists)."""
        kind, namespace, name, _ = self._where(identity)
        found = await self._call(self._core.list_namespaced_event, namespace,
                                 field_selector=f"involvedObject.name={name},involvedObject.kind={kind}")
        events = [self._plain(e) for e in found.items]
        events.sort(key=lambda e: e.get("lastTimestamp") or e.get("firstTimestamp") or e.get("eventTime") or "")
        return [{"type": e.get("type") or "", "reason": e.get("reason") or "", "message": e.get("message") or "",
                 "count": e.get("count") or 1, "at": e.get("lastTimestamp") or e.get("firstTimestamp") or "",
                 "from": (e.get("source") or {}).get("component") or e.get("reportingComponent") or ""}
                for e in events]

    async def pod_log(self, identity: Resource, container: str | None = None) -> str | None:
        kind, namespace, name, _ = self._where(identity)
        if kind != "Pod":
            return None
        extra = {"container": container} if container else {}
        return await self._call(self._core.read_namespaced_pod_log, name, namespace, **extra)

    async def close(self) -> None:
        watching = getattr(self, "_watching", None)
        if watching is not None:
            watching.set()
            for thread in self._watch_threads:
                await asyncio.to_thread(thread.join, 10)
            self._watching = None
        if self._owns_client:
            await asyncio.to_thread(self._api_client.close)
