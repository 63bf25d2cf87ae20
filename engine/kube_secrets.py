"""The secret store of the Kubernetes backend: each TaskDeck secret is a Kubernetes Secret in the engine's
namespace, so the cluster keeps the values (encrypted at rest as the cluster is configured) and task pods
take them from it by ``secretKeyRef``, as Flyte's secret webhook mounts them.

A secret's Kubernetes name is derived from its scope and name (``taskdeck-secret-<digest>``: TaskDeck names
allow capitals and ``_``, Kubernetes names do not); labels carry the scope, an annotation the exact name.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib

from engine.secret_store import SecretNotFoundError, SecretStore, check_secret_scope, check_secret_value, scope_text
from engine.store.base import SecretInfo

MANAGED = "taskdeck.flyte.org/secret"
PROJECT_LABEL = "taskdeck.flyte.org/project"
DOMAIN_LABEL = "taskdeck.flyte.org/domain"
NAME_ANNOTATION = "taskdeck.flyte.org/secret-name"
UPDATED_ANNOTATION = "taskdeck.flyte.org/updated-at"
VALUE_KEY = "value"


def kube_secret_name(name: str, project: str, domain: str) -> str:
    digest = hashlib.sha256(f"{project}\0{domain}\0{name}".encode()).hexdigest()[:24]
    return f"taskdeck-secret-{digest}"


class KubernetesSecretStore(SecretStore):
    def __init__(self, api_client, namespace: str, clock=None):
        import time

        from kubernetes import client

        self.namespace = namespace
        self._core = client.CoreV1Api(api_client)
        self.clock = clock or time.time

    async def _call(self, fn, *args, **kwargs):
        from kubernetes.client.rest import ApiException

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                raise SecretNotFoundError("not found") from None
            raise OSError(f"the cluster refused {getattr(fn, '__name__', 'the call')}: {exc.status} {exc.reason}") \
                from None

    async def put(self, name: str, value: bytes, *, project: str = "", domain: str = "") -> SecretInfo:
        check_secret_scope(name, project, domain)
        check_secret_value(value)
        now = self.clock()
        kube_name = kube_secret_name(name, project, domain)
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": kube_name, "namespace": self.namespace,
                             "labels": {MANAGED: "true", PROJECT_LABEL: project, DOMAIN_LABEL: domain},
                             "annotations": {NAME_ANNOTATION: name, UPDATED_ANNOTATION: str(now)}},
                "data": {VALUE_KEY: base64.b64encode(value).decode()}}
        from kubernetes.client.rest import ApiException

        try:
            created = await asyncio.to_thread(self._core.create_namespaced_secret, self.namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                raise OSError(f"the cluster refused the secret: {exc.status} {exc.reason}") from None
            created = await self._call(self._core.patch_namespaced_secret, kube_name, self.namespace,
                                       {"metadata": {"annotations": body["metadata"]["annotations"]},
                                        "data": body["data"]}, _content_type="application/merge-patch+json")
        return self._info(created)

    async def delete(self, name: str, *, project: str = "", domain: str = "") -> None:
        check_secret_scope(name, project, domain)
        try:
            await self._call(self._core.delete_namespaced_secret, kube_secret_name(name, project, domain),
                             self.namespace)
        except SecretNotFoundError:
            raise SecretNotFoundError(f"no secret {name!r} in {scope_text(project, domain)}") from None

    async def list(self, *, project: str | None = None, domain: str | None = None) -> list[SecretInfo]:
        found = await self._call(self._core.list_namespaced_secret, self.namespace, label_selector=f"{MANAGED}=true")
        infos = [self._info(item) for item in found.items]
        if project is not None:  # what a task of project/domain can see: its scope and the wider ones
            infos = [i for i in infos if i.project in ("", project) and i.domain in ("", domain or "")]
        return sorted(infos, key=lambda i: (i.project, i.domain, i.name))

    async def reference(self, name: str, *, project: str, domain: str) -> tuple[str, str]:
        """(the Kubernetes Secret, its key) a task of ``project``/``domain`` gets for ``name``: the most specific
        scope that has it; SecretNotFoundError when none does."""
        for scope in ((project, domain), (project, ""), ("", "")):
            kube_name = kube_secret_name(name, *scope)
            try:
                await self._call(self._core.read_namespaced_secret, kube_name, self.namespace)
            except SecretNotFoundError:
                continue
            return kube_name, VALUE_KEY
        raise SecretNotFoundError(f"no secret {name!r} for project {project!r}, domain {domain!r} (nor project-wide "
                                  "or global)")

    async def resolve(self, name: str, *, project: str, domain: str) -> bytes:
        for scope in ((project, domain), (project, ""), ("", "")):
            try:
                secret = await self._call(self._core.read_namespaced_secret, kube_secret_name(name, *scope),
                                          self.namespace)
            except SecretNotFoundError:
                continue
            data = (secret.data or {}).get(VALUE_KEY)
            if data is not None:
                return base64.b64decode(data)
        raise SecretNotFoundError(f"no secret {name!r} for project {project!r}, domain {domain!r} (nor project-wide "
                                  "or global)")

    @staticmethod
    def _info(secret) -> SecretInfo:
        md = secret.metadata
        labels, annotations = md.labels or {}, md.annotations or {}
        created = md.creation_timestamp
        created_at = created.timestamp() if isinstance(created, dt.datetime) else 0.0
        try:
            updated_at = float(annotations.get(UPDATED_ANNOTATION, created_at))
        except ValueError:
            updated_at = created_at
        return SecretInfo(name=annotations.get(NAME_ANNOTATION, md.name), project=labels.get(PROJECT_LABEL, ""),
                          domain=labels.get(DOMAIN_LABEL, ""), created_at=created_at, updated_at=updated_at)
