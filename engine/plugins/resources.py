"""Seed 002's resource-plugin interface (Flyte's ``k8s.Plugin``) and the backend its resources live on.

A resource plugin turns a task into a Kubernetes-shaped object (a Pod, a DaskJob, ...) and reads a phase
from that object's status; it knows nothing else. The plugin manager (``resource_manager.py``) owns the
lifecycle over a ``ResourceBackend``: the local one here runs each object the way its operator would, on
this machine; the Kubernetes backend will be the API server. Objects are plain dicts, exactly the JSON
the API server would hold.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

from google.protobuf import json_format

from engine.plugins.core import PhaseInfo, PluginError, TaskExecutionContext, TaskExecutionMetadata

Resource = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ResourceProperties:
    """Flyte's ``k8s.PluginProperties``."""

    disable_inject_owner_references: bool = False
    disable_inject_finalizer: bool = False
    generated_name_max_length: int | None = None
    disable_delete_resource_on_finalize: bool = False


@dataclasses.dataclass(frozen=True)
class PodRef:
    """A pod of the resource whose failure decides the task before the resource's own state does (Spark's
    driver, Ray's head, Dask's job runner): by name, or by labels where the operator adds a random suffix."""

    container: str  # its primary container, whose exit decides system against user failure
    name: str | None = None
    labels: dict[str, str] | None = None


class ResourcePlugin(abc.ABC):
    """What a Flyte k8s plugin implements (``BuildIdentityResource``, ``BuildResource``, ``GetTaskPhase``,
    ``GetProperties``, ``GarbageCollectable``)."""

    id: str = ""
    task_types: tuple[str, ...] = ()
    properties = ResourceProperties()

    @abc.abstractmethod
    def build_identity_resource(self, metadata: TaskExecutionMetadata) -> Resource:
        """An object with only apiVersion and kind: what to look the resource up as."""

    @abc.abstractmethod
    def build_resource(self, tctx: TaskExecutionContext) -> Resource:
        """The full object to create (the manager adds name, namespace, labels, owner)."""

    @abc.abstractmethod
    def get_task_phase(self, tctx: TaskExecutionContext, resource: Resource) -> PhaseInfo:
        """The task's phase from the object's status."""

    def related_pods(self, resource: Resource) -> list[PodRef]:
        """Pods the manager demystifies first: a failed or failing one fails the task fast."""
        return []

    def log_pods(self, resource: Resource) -> list[PodRef]:
        """The pods whose log is the task's own output (what `kubectl logs` of them shows), copied into the
        attempt's log: Spark's driver, Dask's job runner, Ray's submitter. A Pod is its own."""
        return []

    def is_terminal(self, resource: Resource) -> bool:
        return False

    def get_completion_time(self, resource: Resource) -> str | None:
        return None


class BackendError(Exception):
    """A refused request, with the API server's status code."""

    status = 500
    reason = "InternalError"

    def __init__(self, message: str = ""):
        super().__init__(message or self.reason)


class AlreadyExistsError(BackendError):
    status, reason = 409, "AlreadyExists"


class NotFoundError(BackendError):
    status, reason = 404, "NotFound"


class ForbiddenError(BackendError):
    status, reason = 403, "Forbidden"


class InvalidError(BackendError):
    status, reason = 422, "Invalid"


class TooLargeError(BackendError):
    status, reason = 413, "RequestEntityTooLarge"


class BadRequestError(BackendError):
    status, reason = 400, "BadRequest"


class BusyError(BackendError):
    """Not now: the backend runs as many such objects as it may; the caller waits and is woken."""

    status, reason = 429, "TooManyRequests"


class ResourceBackend(abc.ABC):
    """Where resources live: create, get, delete, by (apiVersion, kind, namespace, name)."""

    @abc.abstractmethod
    async def create(self, resource: Resource, tctx: TaskExecutionContext) -> Resource: ...

    @abc.abstractmethod
    async def get(self, identity: Resource) -> Resource: ...

    @abc.abstractmethod
    async def delete(self, identity: Resource) -> None: ...

    async def list(self, api_version: str, kind: str, namespace: str, labels: dict[str, str]) -> list[Resource]:
        """Objects of a kind whose labels include ``labels`` (a backend without such objects has none)."""
        return []

    serves_pod_logs = False  # whether pod_log gives the pods' logs (a cluster), which the manager copies

    async def pod_log(self, identity: Resource, container: str | None = None) -> str | None:
        """A Pod's log as its container wrote it (``kubectl logs``), or None where there are no such pods."""
        return None

    async def close(self) -> None:
        """Release what the backend holds when the engine stops."""


def custom_config(tctx: TaskExecutionContext, message, what: str):
    """The task template's ``custom`` (the SDK plugin's job proto, as JSON) parsed into ``message``; a
    BadTaskSpecification naming ``what`` when it does not fit."""
    template = tctx.task_template
    if template.HasField("custom"):
        try:
            json_format.ParseDict(json_format.MessageToDict(template.custom), message)
        except json_format.ParseError as exc:
            raise PluginError(f"the task's {what} config is malformed: {exc}", code="BadTaskSpecification") from None
    return message


def identity_of(resource: Resource) -> Resource:
    md = resource.get("metadata") or {}
    return {"apiVersion": resource["apiVersion"], "kind": resource["kind"],
            "metadata": {"name": md.get("name"), "namespace": md.get("namespace")}}
