"""The plugin manager over resource plugins (Flyte's ``executor/pkg/plugin/k8s/plugin_manager.go``).

It owns the lifecycle; the resource plugin only builds objects and reads phases:

* not started: build the resource, add Flyte's metadata (name = generated name, namespace, labels,
  annotations, controller owner reference), create it. AlreadyExists is fine (launched before);
  Forbidden → retryable; 413 → EntityTooLarge, 422 → InvalidResource, 400 → BadRequest (permanent);
  anything else a system error, retried. Then Queued "task submitted to K8s".
* started: get the resource. Gone → SystemRetryableFailure ResourceDeletedExternally; a deletion
  timestamp on a live phase → UnexpectedObjectDeletion. A success still reads error.pb, and a success
  whose outputs are incomplete is not one (the outcome rules of the process plugins).
* abort: delete it (NotFound is fine). finalize: delete it unless the plugin keeps it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from pathlib import Path

from engine.phases import PluginPhase
from engine.plugins.core import PhaseInfo, Plugin, PluginError, TaskExecutionContext, TaskInfo, Transition
from engine.plugins.k8s_config import K8sConfig
from engine.plugins.outcome import read_outcome, read_stored_outcome
from engine.plugins.pod import PodPlugin
from engine.plugins.podspec import secret_metadata
from engine.plugins.resources import (
    AlreadyExistsError,
    BackendError,
    BadRequestError,
    BusyError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    Resource,
    ResourceBackend,
    ResourcePlugin,
    TooLargeError,
    identity_of,
)

log = logging.getLogger(__name__)

STATE_VERSION = 1
DEFAULT_ANNOTATIONS = {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"}
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def sanitize_label_value(value: str) -> str:
    """Flyte's ``SanitizeLabelValue``: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends ("" stays "")."""
    if not value:
        return ""
    value = re.sub(r"[^a-zA-Z0-9._-]", "-", value)[:63]
    if not value[0].isalnum() or not value[0].isascii():
        value = "x" + value[1:]
    if not value[-1].isalnum() or not value[-1].isascii():
        value = value[:-1] + "x"
    return value


def dns_name(name: str, max_length: int | None = None) -> str:
    name = name.lower()
    if not _DNS_SUBDOMAIN.match(name):
        name = re.sub(r"[^a-z0-9.-]+", "-", name).strip("-.") or "x"
    limit = min(max_length or 253, 253)
    return name[:limit].rstrip("-.")


class ResourcePluginManager(Plugin):
    """A ``Plugin`` for the task types of one resource plugin, over one backend."""

    def __init__(self, plugin: ResourcePlugin, backend: ResourceBackend, owner_api_version: str = "flyte.org/v1",
                 k8s: K8sConfig | None = None):
        self.plugin = plugin
        self.k8s = k8s or K8sConfig()
        self.pods = PodPlugin(k8s=self.k8s)  # reads related pods (drivers, heads, job runners)
        self.backend = backend
        self.id = plugin.id
        self.task_types = plugin.task_types
        self.owner_api_version = owner_api_version

    def with_metadata(self, resource: Resource, tctx: TaskExecutionContext) -> Resource:
        md = tctx.metadata
        meta = resource.setdefault("metadata", {})
        secret_labels, secret_annotations = secret_metadata(tctx.task_template)
        meta["name"] = dns_name(md.generated_name, self.plugin.properties.generated_name_max_length)
        meta["namespace"] = md.namespace
        meta["annotations"] = {**DEFAULT_ANNOTATIONS, **self.k8s.default_annotations, **meta.get("annotations", {}),
                               **md.annotations, **secret_annotations}
        injected = {"organization": "flyte", "project": md.project, "domain": md.domain,
                    "flyte.org/managed": "true", "attempt": str(md.attempt), **secret_labels}
        for key, value in (("run", md.run_name), ("action", md.action_name),
                           ("task-name", tctx.task_template.id.name)):
            if sanitize_label_value(value):
                injected[key] = sanitize_label_value(value)
        meta["labels"] = {**self.k8s.default_labels, **meta.get("labels", {}), **md.labels, **injected}
        if not self.plugin.properties.disable_inject_owner_references:
            meta["ownerReferences"] = [{"apiVersion": self.owner_api_version, "kind": "TaskAction",
                                        "name": md.owner_name, "uid": md.owner_uid, "controller": True}]
        return resource

    def identity_for(self, tctx: TaskExecutionContext) -> Resource:
        """The name, namespace and kind of the object this plugin creates for the attempt."""
        return self._identity(tctx)

    def _identity(self, tctx: TaskExecutionContext) -> Resource:
        identity = self.plugin.build_identity_resource(tctx.metadata)
        identity["metadata"] = {"name": dns_name(tctx.metadata.generated_name,
                                                 self.plugin.properties.generated_name_max_length),
                                "namespace": tctx.metadata.namespace}
        return identity

    async def handle(self, tctx: TaskExecutionContext) -> Transition:
        state = tctx.plugin_state.get()
        if state is None or state.get("phase") != "Started":
            return Transition.of(await self._launch(tctx))
        return Transition.of(await self._check(tctx))

    async def _launch(self, tctx: TaskExecutionContext) -> PhaseInfo:
        resource = self.with_metadata(self.plugin.build_resource(tctx), tctx)
        if self.backend.serves_pod_logs:  # a relaunch's pods log anew: keep what the last ones logged
            _keep_earlier_log(Path(tctx.log_path))
        if "://" not in tctx.output_prefix:  # a local (shared) path: the attempt's directory, as a blob store has it
            try:
                os.makedirs(tctx.output_prefix, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise PluginError(f"cannot make the attempt's output directory {tctx.output_prefix}: {exc}") from exc
        try:
            await self.backend.create(resource, tctx)
        except BusyError as exc:
            return PhaseInfo.waiting_for_resources(reason=str(exc))
        except AlreadyExistsError:
            pass  # launched before and the state write was lost: it is ours
        except ForbiddenError as exc:
            return PhaseInfo.retryable_failure("RuntimeFailure", str(exc))
        except TooLargeError as exc:
            return PhaseInfo.failure("EntityTooLarge", str(exc))
        except InvalidError as exc:
            return PhaseInfo.failure("InvalidResource", str(exc))
        except BadRequestError as exc:
            return PhaseInfo.failure("BadRequest", str(exc))
        except BackendError as exc:
            raise PluginError(f"creating {resource['kind']} {resource['metadata']['name']}: {exc}") from exc
        tctx.plugin_state.put(STATE_VERSION, {"phase": "Started", "kind": resource["kind"],
                                              "name": resource["metadata"]["name"]})
        return PhaseInfo.queued(reason="task submitted to K8s")

    async def _check(self, tctx: TaskExecutionContext) -> PhaseInfo:
        identity = self._identity(tctx)
        try:
            resource = await self.backend.get(identity)
        except NotFoundError as exc:
            return PhaseInfo.system_retryable_failure(
                "ResourceDeletedExternally",
                f"resource not found, name [{identity['metadata']['namespace']}/{identity['metadata']['name']}]. "
                f"reason: {exc}")
        if resource.get("kind") == "Pod":
            await self._copy_pod_log(tctx, identity)
        else:
            await self._copy_related_logs(tctx, resource)
        failing = await self._failing_related_pod(tctx, resource)
        if failing is not None:
            return failing
        info = self.plugin.get_task_phase(tctx, resource)
        stored = tctx.files is not None and tctx.files.remote  # the attempt's files are on an object store
        if info.phase == PluginPhase.SUCCESS:
            return await read_stored_outcome(tctx, 0, info.info) if stored else read_outcome(tctx, 0, info.info)
        if info.phase.is_failure and resource.get("kind") == "Pod" and await _wrote_error_file(tctx):
            # the task said why (error.pb): that, not the exit code
            return await read_stored_outcome(tctx, None, info.info) if stored else read_outcome(tctx, None, info.info)
        if not info.phase.is_terminal and (resource.get("metadata") or {}).get("deletionTimestamp"):
            return PhaseInfo.system_retryable_failure(
                "UnexpectedObjectDeletion", f"object [{identity['metadata']['name']}] terminated unexpectedly in "
                "the background")
        return info

    async def _copy_pod_log(self, tctx: TaskExecutionContext, identity: Resource, container: str | None = None) -> None:
        """The pod's log (``kubectl logs``) into the attempt's log file, where `taskdeck logs` and the console
        read it: at each check, so it follows the pod at the reconcile's pace, and whole at the end."""
        try:
            text = await self.backend.pod_log(identity, container)
        except BackendError:
            return  # not started yet, or gone: the next check, or nothing to show
        if not text:
            return
        path = Path(tctx.log_path)
        try:
            earlier = _earlier_log(path)
            if earlier:  # this attempt's Pod was made again (a system failure): its first Pod's log stays
                text = f"{earlier.rstrip()}\n{RELAUNCH_MARK}\n{text}"
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".tmp")
            partial.write_text(text)
            os.chmod(partial, 0o600)
            partial.replace(path)
        except OSError as exc:
            log.warning("could not keep the log of pod %s: %s", identity["metadata"]["name"], exc)

    async def _copy_related_logs(self, tctx: TaskExecutionContext, resource: Resource) -> None:
        """The log of the object's pod that runs the task (its driver, job runner or submitter), as for a Pod."""
        namespace = (resource.get("metadata") or {}).get("namespace") or tctx.metadata.namespace
        for ref in self.plugin.log_pods(resource):
            name = ref.name
            if name is None:
                try:
                    found = await self.backend.list("v1", "Pod", namespace, ref.labels or {})
                except BackendError:
                    continue
                name = found[0]["metadata"]["name"] if found else None
            if name:
                await self._copy_pod_log(tctx, {"apiVersion": "v1", "kind": "Pod",
                                                "metadata": {"name": name, "namespace": namespace}}, ref.container)

    async def _failing_related_pod(self, tctx: TaskExecutionContext, resource: Resource) -> PhaseInfo | None:
        """A related pod's failure, which decides the task before the resource's own state (fail fast).
        Flyte looks Ray's head pod up as ``<cluster>-head``, a name KubeRay never gives (it adds a random
        suffix); plugins here name such pods by their labels instead."""
        namespace = (resource.get("metadata") or {}).get("namespace") or tctx.metadata.namespace
        for ref in self.plugin.related_pods(resource):
            if ref.name:
                try:
                    pods = [await self.backend.get({"apiVersion": "v1", "kind": "Pod",
                                                    "metadata": {"name": ref.name, "namespace": namespace}})]
                except NotFoundError:
                    continue
            else:
                pods = await self.backend.list("v1", "Pod", namespace, ref.labels or {})
            for pod in pods:
                verdict = self.pods.demystify_failed_or_pending(pod, ref.container, TaskInfo(log_path=str(tctx.log_path)))
                if verdict is not None and verdict.phase.is_failure:
                    return verdict
        return None

    async def abort(self, tctx: TaskExecutionContext) -> None:
        try:
            await self.backend.delete(self._identity(tctx))
        except NotFoundError:
            pass

    async def finalize(self, tctx: TaskExecutionContext) -> None:
        if self.plugin.properties.disable_delete_resource_on_finalize:
            return
        try:
            await self.backend.delete(self._identity(tctx))
        except NotFoundError:
            pass

    async def collect_garbage(self, now: dt.datetime, ttl_seconds: float) -> int:
        """Delete this plugin's terminal objects completed more than ``ttl_seconds`` ago (the plugin's
        ``GetCompletionTime``): what no finalize removed, such as objects of a plugin that keeps them."""
        identity = self.plugin.build_identity_resource(None)
        deleted = 0
        for resource in await self.backend.list(identity["apiVersion"], identity["kind"], None,
                                                {"flyte.org/managed": "true"}):
            if not self.plugin.is_terminal(resource) or (resource.get("metadata") or {}).get("deletionTimestamp"):
                continue
            completed = _parse_time(self.plugin.get_completion_time(resource))
            if completed is None or (now - completed).total_seconds() < ttl_seconds:
                continue
            try:
                await self.backend.delete(identity_of(resource))
                deleted += 1
            except NotFoundError:
                pass
        if deleted:
            log.info("garbage collection removed %d terminal %s objects", deleted, identity["kind"])
        return deleted

    async def close(self) -> None:
        await self.backend.close()


RELAUNCH_MARK = "--- the Pod was made again (a system failure ended the one above); its log follows ---"


def _earlier_log(path: Path) -> str:
    try:
        return path.with_suffix(".earlier").read_text()
    except OSError:
        return ""


def _keep_earlier_log(path: Path) -> None:
    """Before an attempt's object is made again, what its pods logged so far (the current log holds the earlier
    ones too): kept, to be shown before the new ones'."""
    try:
        text = path.read_text()
    except OSError:
        return  # a first launch
    if not text:
        return
    earlier = path.with_suffix(".earlier")
    try:
        partial = earlier.with_suffix(".earlier-tmp")
        partial.write_text(text)
        os.chmod(partial, 0o600)
        partial.replace(earlier)
    except OSError as exc:
        log.warning("could not keep the earlier log %s: %s", path, exc)


async def _wrote_error_file(tctx: TaskExecutionContext) -> bool:
    if tctx.files is not None and tctx.files.remote:
        try:
            return await tctx.files.aexists(f"{tctx.output_prefix.rstrip('/')}/error.pb")
        except Exception:  # noqa: BLE001 - unreadable store: the pod's own status decides
            return False
    return "://" not in tctx.output_prefix and os.path.exists(os.path.join(tctx.output_prefix, "error.pb"))


def _parse_time(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None
