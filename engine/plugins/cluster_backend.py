"""The resource backend of a Kubernetes cluster: the plugin manager's objects (Pods, SparkApplications, RayJobs,
DaskJobs) created, read, listed and deleted through the API server with the official client.

The API server's refusals come back as the backend errors the manager branches on, as Flyte's
``launchResource`` does: 409 AlreadyExists (launched before), 403, 413, 422, 400; anything else is a
``BackendError`` the reconciler counts as a system failure. The sync client runs off the event loop.
"""

from __future__ import annotations

import asyncio
import json

from engine.plugins.core import TaskExecutionContext
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
_ERRORS = {409: AlreadyExistsError, 404: NotFoundError, 403: ForbiddenError, 413: TooLargeError, 422: InvalidError,
           400: BadRequestError}


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class ClusterResourceBackend(ResourceBackend):
    """Objects in the cluster ``api_client`` reaches (a ``kubernetes.client.ApiClient``)."""

    def __init__(self, api_client):
        from kubernetes import client  # imported here: the embedded default never loads it

        self._api_client = api_client
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)

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

    async def close(self) -> None:
        await asyncio.to_thread(self._api_client.close)
