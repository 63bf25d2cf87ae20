"""TaskActions as ``flyte.org/v1`` custom resources on a Kubernetes API server, behind the store interface.

The official ``kubernetes`` client is synchronous; its calls run off the event loop (``asyncio.to_thread``)
and one informer thread lists and watches the namespace, as client-go's reflector does: it resumes from the
last resourceVersion it saw (bookmarks included) when a watch ends, and when the server answers 410 Gone
it lists again and turns the difference into events, so watchers miss nothing and see nothing twice.

Reads (``peek``, ``get``, ``list``) come from the informer's cache, with one addition: an object this store
wrote is read back as the write returned it until the informer has seen that write (read-your-writes,
without ordering resourceVersions, which stay opaque). Watchers see only what the informer saw, in the
server's order. ``delete`` cascades through owner references at once, as the SQLite store does (the
cluster's garbage collector would do it only after the owner is gone); the collector stays the backstop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable

from engine.errors import AlreadyExistsError, StorageUnavailableError
from engine.model import API_VERSION, DEFAULT_NAMESPACE, KIND, TaskAction, TaskActionStatus
from engine.store.base import (
    ConflictError,
    EventRecord,
    GoneError,
    QueueWatch,
    NotFoundError,
    OwnerGoneError,
    ResourceStore,
    WatchEvent,
    labels_match,
)

log = logging.getLogger(__name__)

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "taskactions"
WATCH_SECONDS = 30  # a server-side timeout per watch request: the informer resumes after it
META_FIELDS = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
               "labels", "annotations", "finalizers", "ownerReferences")
INITIAL_STATUS = "taskdeck.flyte.org/initial-status"
SEEN_VERSIONS = 65_536  # (name, resourceVersion) pairs the informer delivered, kept to place late write replies


@dataclasses.dataclass(frozen=True)
class _Pending:
    """A write of this store the informer has not seen yet: the object as written, or (``obj`` None) a
    tombstone for the incarnation ``uid`` of the name, deleted."""

    rv: str
    obj: TaskAction | None
    uid: str

    def seen(self, obj: TaskAction, deleted: bool) -> bool:
        """Whether the informer's ``obj`` makes this write old news."""
        if self.obj is not None:
            return obj.resource_version == self.rv
        if deleted:
            return obj.metadata.uid == self.uid
        return obj.metadata.uid != self.uid  # a new incarnation, created after the deletion


def from_api(body: dict) -> TaskAction:
    """The API's object as a TaskAction: fields the server adds (managedFields, ...) are left out; a status
    never written yet is the one it was created with (see ``to_api``)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k in META_FIELDS}
    owners = [{k: v for k, v in ref.items() if k in ("apiVersion", "kind", "name", "uid", "controller",
                                                      "blockOwnerDeletion")} for ref in meta.get("ownerReferences", [])]
    if owners:
        meta["ownerReferences"] = owners
    status = body.get("status") or {}
    if not status and INITIAL_STATUS in (meta.get("annotations") or {}):
        try:
            status = json.loads(meta["annotations"][INITIAL_STATUS])
        except ValueError:
            status = {}
    return TaskAction.from_json(json.dumps({"apiVersion": API_VERSION, "kind": KIND, "metadata": meta,
                                            "spec": body.get("spec") or {}, "status": status}))


def to_api(obj: TaskAction, namespace: str, initial_status: bool = False) -> dict:
    """The TaskAction as the API takes it. ``initial_status``: a create, whose status the server drops (it is
    a subresource); a status other than the empty one (an operator retry's attempt count) travels in an
    annotation instead, read as the status until the first status write, so no reader sees it without."""
    body = obj.to_dict()
    meta = body["metadata"]
    meta["namespace"] = namespace
    if initial_status and obj.status != TaskActionStatus():
        meta.setdefault("annotations", {})[INITIAL_STATUS] = json.dumps(body["status"], separators=(",", ":"))
    for server_set in ("uid", "creationTimestamp", "deletionTimestamp", "generation"):
        meta.pop(server_set, None)
    if not meta.get("resourceVersion"):
        meta.pop("resourceVersion", None)
    return body


def _refresh(target: TaskAction, written: TaskAction) -> TaskAction:
    """The caller's object takes the server-set fields and the stored status, as controller-runtime's."""
    target.metadata = written.metadata.copy_deep()
    target.status = written.status.copy_deep()
    return target


class KubernetesResourceStore(ResourceStore):
    """TaskActions in ``namespace`` through ``api_client`` (a ``kubernetes.client.ApiClient``)."""

    def __init__(self, api_client, namespace: str, *, history_size: int = 50_000, watch_seconds: int = WATCH_SECONDS):
        from kubernetes import client  # imported here: the embedded default never loads it

        self._api_client = api_client
        self._api = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self._watch_seconds = watch_seconds
        self._cache: dict[str, TaskAction] = {}  # what the informer has seen
        self._overlay: dict[str, _Pending] = {}  # name → what this store wrote there, until the informer sees it
        self._dependents: dict[str, set[str]] = {}  # owner uid → names
        # A write's reply can reach the loop after the informer's event for it and later ones (the reconciler
        # may act on the ADDED event before create() returns): such a reply is old news, not an overlay.
        self._seen: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        self._rv = ""
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=history_size)
        self._watches: set[QueueWatch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stream = None  # the informer's current watch
        self._stopping = threading.Event()
        self.relists = 0  # how often a 410 made the informer list again
        self.on_status_write: Callable[[list[EventRecord]], object] | None = None  # runs data first (events)
        # (old, new) for every change the informer sees (new None: deleted), the first list included
        self.on_change: Callable[[TaskAction | None, TaskAction | None], None] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            items, rv = await asyncio.to_thread(self._list_all)
        except NotFoundError:
            raise StorageUnavailableError(
                f"the cluster at {self.cluster} has no TaskAction resource (taskactions.flyte.org): install it "
                f"with `taskdeck k8s install --namespace {self.namespace}`") from None
        self._replace(items, rv, initial=True)
        self._thread = threading.Thread(target=self._inform, name="taskaction-informer", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stopping.set()
        self._interrupt_watch()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
        for watch in list(self._watches):
            watch.queue.put_nowait(None)

    def _interrupt_watch(self) -> None:
        """End the informer's blocked read of its open watch at once (a stop need not wait for its timeout)."""
        response = getattr(self._stream, "_resp", None)
        connection = getattr(response, "connection", None) or getattr(response, "_connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # ------------------------------------------------------------------ the informer (its own thread)
    def _list_all(self) -> tuple[list[dict], str]:
        listed = self._call(self._api.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL)
        return listed.get("items") or [], str((listed.get("metadata") or {}).get("resourceVersion") or "")

    def _inform(self) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        rv = self._rv
        while not self._stopping.is_set():
            stream = self._stream = watch.Watch()
            try:
                for event in stream.stream(self._api.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                           PLURAL, resource_version=rv, timeout_seconds=self._watch_seconds,
                                           allow_watch_bookmarks=True,
                                           _request_timeout=self._watch_seconds + 10):
                    if self._stopping.is_set():
                        return
                    body = event["raw_object"]
                    rv = str((body.get("metadata") or {}).get("resourceVersion") or rv)
                    if event["type"] == "ERROR":
                        if body.get("code") == 410:
                            raise ApiException(status=410, reason="Expired")
                        continue
                    self._post(self._apply_event, event["type"], body, rv)
            except ApiException as exc:
                if self._stopping.is_set():
                    return
                if exc.status == 410:
                    log.info("the TaskAction watch from resourceVersion %s expired: listing again", rv)
                    try:
                        items, listed_rv = self._list_all()
                    except Exception as err:  # noqa: BLE001 - the informer never dies: it lists again later
                        log.warning("could not list TaskActions: %s", err)
                        self._stopping.wait(1)
                        continue
                    rv = listed_rv
                    self._post(self._replace, items, rv)
                else:
                    log.warning("the TaskAction watch failed (%s): resuming", exc.status)
                    self._stopping.wait(1)
            except Exception as exc:  # a dropped connection, a timeout: resume from the last version seen
                if self._stopping.is_set():
                    return
                log.debug("the TaskAction watch ended (%s): resuming from %s", exc, rv)
                self._stopping.wait(0.2)

    def _post(self, fn, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the engine is gone
            self._stopping.set()

    # ------------------------------------------------------------------ the cache (on the event loop)
    def _apply_event(self, event_type: str, body: dict, rv: str) -> None:
        if event_type == "BOOKMARK":
            self._rv = rv
            return
        obj = from_api(body)
        self._rv = rv
        self._see(obj, event_type == "DELETED")
        self._emit(WatchEvent(event_type, obj, rv))  # type: ignore[arg-type]

    def _see(self, obj: TaskAction, deleted: bool) -> None:
        name = obj.name
        self._seen[(name, obj.resource_version)] = None
        if len(self._seen) > SEEN_VERSIONS:
            self._seen.popitem(last=False)
        pending = self._overlay.get(name)
        if pending is not None and pending.seen(obj, deleted):
            del self._overlay[name]  # the informer caught up with this store's write
        if deleted:
            old = self._cache.pop(name, None)
            if old is not None:
                self._unindex(old)
        else:
            old = self._cache.get(name)
            if old is not None:
                self._unindex(old)
            self._cache[name] = obj
            for ref in obj.metadata.owner_references:
                self._dependents.setdefault(ref.uid, set()).add(name)
        if self.on_change is not None:
            self.on_change(old, None if deleted else obj)

    def _unindex(self, obj: TaskAction) -> None:
        for ref in obj.metadata.owner_references:
            names = self._dependents.get(ref.uid)
            if names is not None:
                names.discard(obj.name)
                if not names:
                    del self._dependents[ref.uid]

    def _replace(self, items: list[dict], rv: str, initial: bool = False) -> None:
        """A fresh list: what changed since the cache's state becomes events (client-go's Replace)."""
        listed = {obj.name: obj for obj in map(from_api, items)}
        if not initial:
            self.relists += 1
            for name, old in list(self._cache.items()):
                if name not in listed:
                    self._see(old, deleted=True)
                    self._emit(WatchEvent("DELETED", old, rv))
        self._overlay.clear()  # every write made before this list is in it
        for name, obj in listed.items():
            old = self._cache.get(name)
            self._see(obj, deleted=False)
            if not initial and (old is None or old.resource_version != obj.resource_version):
                self._emit(WatchEvent("ADDED" if old is None else "MODIFIED", obj, rv))
        self._rv = rv

    def _emit(self, event: WatchEvent) -> None:
        self._history.append(event)
        for watch in self._watches:
            watch.queue.put_nowait(event)

    def _written(self, obj: TaskAction) -> TaskAction:
        if (obj.name, obj.resource_version) not in self._seen:
            self._overlay[obj.name] = _Pending(obj.resource_version, obj, obj.metadata.uid)
        return obj

    def _gone(self, name: str, uid: str) -> None:
        """The incarnation ``uid`` of ``name`` is deleted: read as gone until the informer says so."""
        cached = self._cache.get(name)
        if cached is not None and cached.metadata.uid == uid:
            self._overlay[name] = _Pending("", None, uid)
        elif name in self._overlay and self._overlay[name].uid == uid:
            del self._overlay[name]

    def _lookup(self, name: str) -> TaskAction | None:
        pending = self._overlay.get(name)
        if pending is not None:
            return pending.obj
        return self._cache.get(name)

    async def _write(self, name: str, fn, *args, **kwargs):
        """An API write of the object ``name``; a 404 means the incarnation this store knows is gone."""
        known = self._lookup(name)
        try:
            return await self._run(fn, *args, **kwargs)
        except ConflictError:
            # Someone wrote after what this store holds: read the informer's view, which converges, from now on.
            pending = self._overlay.get(name)
            if pending is not None and pending.obj is not None and pending.obj is known:
                del self._overlay[name]
            raise
        except NotFoundError:
            if known is not None:
                self._gone(name, known.metadata.uid)
            raise

    # ------------------------------------------------------------------ API calls
    def _call(self, fn, *args, **kwargs):
        from kubernetes.client.rest import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise self._translate(exc) from None
        except Exception as exc:  # connection refused, timeouts: the cluster cannot be reached
            reason = getattr(exc, "reason", None) or exc  # urllib3's MaxRetryError: why the last try failed
            raise StorageUnavailableError(f"the Kubernetes API server at {self.cluster} cannot be reached: "
                                          f"{str(reason).split(': ')[-1]}") from exc

    @staticmethod
    def _translate(exc) -> Exception:
        try:
            status = json.loads(exc.body or "{}")  # the API server's Status object
        except ValueError:
            status = {}
        message = status.get("message") or exc.reason
        if exc.status == 404:
            return NotFoundError(message)
        if exc.status == 409:
            return AlreadyExistsError(message) if status.get("reason") == "AlreadyExists" else ConflictError(message)
        if exc.status == 410:
            return GoneError(message)
        if exc.status in (400, 422):
            return ValueError(f"the API server refused the TaskAction: {message}")
        return StorageUnavailableError(f"the Kubernetes API server answered {exc.status}: {message}")

    async def _run(self, fn, *args, **kwargs):
        return await asyncio.to_thread(self._call, fn, *args, **kwargs)

    # ------------------------------------------------------------------ the store interface
    @property
    def cluster(self) -> str:
        return self._api_client.configuration.host

    @property
    def resource_version(self) -> str:
        return self._rv

    def peek(self, name: str) -> TaskAction | None:
        return self._lookup(name)

    async def get(self, name: str) -> TaskAction:
        obj = self._lookup(name)
        if obj is None:
            raise NotFoundError(f"taskaction {name!r} not found")
        return obj.copy_deep()

    async def list(self, selector: dict[str, str | None] | None = None) -> list[TaskAction]:
        names = set(self._cache) | set(self._overlay)
        objects = (self._lookup(name) for name in sorted(names))
        return [obj.copy_deep() for obj in objects if obj is not None and labels_match(obj.metadata.labels, selector)]

    async def create(self, obj: TaskAction) -> TaskAction:
        for ref in obj.metadata.owner_references:
            owner = self._lookup(ref.name)
            if owner is None or owner.metadata.uid != ref.uid or owner.metadata.deletion_timestamp is not None:
                raise OwnerGoneError(f"owner {ref.name!r} of {obj.name!r} is missing or being deleted")
        body = await self._run(self._api.create_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                               to_api(obj, self.namespace, initial_status=True))
        return _refresh(obj, self._written(from_api(body)))

    async def update(self, obj: TaskAction) -> TaskAction:
        body = await self._write(obj.name, self._api.replace_namespaced_custom_object, GROUP, VERSION,
                                 self.namespace, PLURAL, obj.name, to_api(obj, self.namespace))
        written = from_api(body)
        if written.metadata.deletion_timestamp is not None and not written.metadata.finalizers:
            self._gone(obj.name, written.metadata.uid)  # its last finalizer went: it is gone
            return _refresh(obj, written)
        return _refresh(obj, self._written(written))

    async def update_status(self, obj: TaskAction, events: list[EventRecord] | None = None,
                            labels: dict[str, str] | None = None) -> TaskAction:
        if events:
            if self.on_status_write is None:
                raise ValueError("this store records no events: give it an on_status_write")
            await self.on_status_write(events)  # type: ignore[misc]
        body = await self._write(obj.name, self._api.replace_namespaced_custom_object_status, GROUP, VERSION,
                                 self.namespace, PLURAL, obj.name, to_api(obj, self.namespace))
        written = _refresh(obj, self._written(from_api(body)))
        if labels:
            obj.metadata.resource_version = await self.patch_labels(obj.name, labels)
            obj.metadata.labels.update(labels)
        return written

    async def patch_labels(self, name: str, labels: dict[str, str]) -> str:
        body = await self._write(name, self._api.patch_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                 PLURAL, name, {"metadata": {"labels": labels}},
                                 _content_type="application/merge-patch+json")
        return self._written(from_api(body)).resource_version

    async def delete(self, name: str) -> None:
        current = self._lookup(name)
        try:
            body = await self._write(name, self._api.delete_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                     PLURAL, name)
        except NotFoundError:
            if current is None:
                raise
            body = None  # gone already (the cluster's collector was first): its dependents may not be
        if isinstance(body, dict) and body.get("kind") == KIND:
            gone = from_api(body)
            if gone.metadata.finalizers and gone.metadata.deletion_timestamp is not None:
                self._written(gone)
            else:
                self._gone(name, gone.metadata.uid)
        elif current is not None:
            self._gone(name, current.metadata.uid)
        if current is not None:
            await self._cascade(current.metadata.uid)

    async def _cascade(self, owner_uid: str) -> None:
        for child in sorted(self._dependents.get(owner_uid, set())):
            obj = self._lookup(child)
            if obj is not None and obj.metadata.deletion_timestamp is None:
                try:
                    await self.delete(child)
                except NotFoundError:
                    pass

    def watch(self, since_resource_version: str | None = None) -> AsyncIterator[WatchEvent]:
        watch = QueueWatch(self._watches)
        if since_resource_version is not None and since_resource_version != self._rv:
            history = list(self._history)
            seen = [i for i, e in enumerate(history) if e.resource_version == since_resource_version]
            if not seen:
                raise GoneError(f"resourceVersion {since_resource_version!r} is not in this store's history; "
                                "list again")
            for event in history[seen[-1] + 1:]:  # a relist's events share its version: after the last of them
                watch.queue.put_nowait(event)
        self._watches.add(watch)
        return watch


def connect(kubeconfig=None, context: str | None = None, namespace: str | None = None, *,
            in_cluster: bool = False):
    """(an ApiClient, the namespace): from a kubeconfig (``KUBECONFIG`` or ~/.kube/config when none is given)
    and its context, or from a pod's service account; the namespace defaults to the context's, else flyte."""
    from kubernetes import client, config

    try:
        if in_cluster:
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            if namespace is None:
                try:
                    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
                        namespace = f.read().strip() or None
                except OSError:
                    pass
            return client.ApiClient(configuration), namespace or DEFAULT_NAMESPACE
        path = str(kubeconfig) if kubeconfig is not None else None
        api_client = config.new_client_from_config(config_file=path, context=context)
        if namespace is None:
            contexts, active = config.list_kube_config_contexts(config_file=path)
            if context:
                active = next((c for c in contexts if c.get("name") == context), active)
            namespace = (active or {}).get("context", {}).get("namespace")
        return api_client, namespace or DEFAULT_NAMESPACE
    except (config.ConfigException, OSError, ValueError) as exc:
        raise ValueError(f"cannot reach a Kubernetes cluster with that configuration: {exc}") from None
