"""An emulator of the Kubernetes API server, for the Kubernetes backend's tests: real HTTP, the real clients.

No real kube-apiserver can run here (../shared/reference/k8s-backend.md §1), so the backend is tested against
this, with the semantics a controller's correctness depends on, and no more. What it does, as the API server:

- discovery (``/version``, ``/api``, ``/apis``, group and version resource lists) so kubectl works;
- create → 201 with uid, resourceVersion (one increasing integer, as an opaque string), creationTimestamp,
  generation 1, the namespace from the path; ``generateName``; 409 AlreadyExists; 422 Invalid (no name, or
  the CRD's OpenAPI schema refuses the object; unknown fields are pruned, as fieldValidation=Warn does);
  the status of a kind with a status subresource is dropped on create (a Pod's is set to Pending, as the
  pod strategy sets it);
- get, list (``<Kind>List`` with the list's resourceVersion; ``labelSelector`` with ``=``, ``==``, ``!=``,
  ``in``, ``notin``, ``key``, ``!key``; ``fieldSelector`` on metadata.name/namespace, status.phase and an
  Event's involvedObject.name/kind), across namespaces too;
- watch: newline-delimited events; resourceVersion ""/"0" → ADDED for what exists, then live; N → the
  events after N from a bounded history, or one ERROR event with a 410 Expired Status when N is older;
  ``timeoutSeconds`` ends the stream; ``allowWatchBookmarks`` → a BOOKMARK before it ends; an object that
  stops (starts) matching the selector is seen as DELETED (ADDED);
- PUT replace and PATCH (merge-patch; strategic merge on core kinds only; anything else 415), checked against
  a given ``metadata.resourceVersion`` (409 Conflict); a no-op write changes nothing; generation follows spec;
  the status subresource: writes to the object keep its status, writes to ``/status`` change only status;
- delete: with finalizers → deletionTimestamp (MODIFIED), gone when the last finalizer is removed; no new
  finalizer on a terminating object (422); preconditions (uid, resourceVersion) → 409; dependents (by
  ``ownerReferences[].uid``) are collected in the background, as the cluster's garbage collector does;
- every namespace exists (reads of ``/api/v1/namespaces[/NAME]`` answer Active ones);
- errors as ``Status`` objects (404 NotFound, 409, 410, 415, 422, 400 BadRequest).

Not emulated: server-side apply, CEL rules, admission, defaulting, dryRun, paging (``limit``), field managers.
Faults can be injected: ``server.fail_next(method, plural, code)`` answers the next such request with ``code``.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import copy
import dataclasses
import datetime as dt
import json
import re
import threading
import uuid
from pathlib import Path

import jsonschema
import yaml
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
TASKACTION_CRD = ROOT / "engine" / "crd" / "flyte.org_taskactions.yaml"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = True
    schema: dict | None = None  # an OpenAPI v3 structural schema (CRDs): validated and pruned
    short_names: tuple[str, ...] = ()
    builtin: bool = True  # a kind of Kubernetes itself (strategic merge patches), not a custom resource
    validator: jsonschema.Draft202012Validator | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


def _json_schema(s):
    """OpenAPI v3 structural schema → JSON Schema (CEL rules are not evaluated)."""
    if isinstance(s, list):
        return [_json_schema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: (_json_schema(v) if k in ("items", "additionalProperties", "allOf", "anyOf", "oneOf", "not") else v)
           for k, v in s.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if "properties" in s:
        out["properties"] = {k: _json_schema(v) for k, v in s["properties"].items()}
    if s.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if out.get("format") == "byte":
        out.pop("format")  # base64 text; the apiserver checks it, jsonschema knows no such format
        out["pattern"] = r"^[A-Za-z0-9+/]*={0,2}$"
    return out


def _prune(obj, schema: dict, top: bool = True):
    """Drop fields the schema does not declare, as the apiserver prunes them (fieldValidation=Warn)."""
    if not isinstance(obj, dict) or not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        if isinstance(obj, list) and isinstance(schema, dict) and isinstance(schema.get("items"), dict):
            for item in obj:
                _prune(item, schema["items"], False)
        return
    properties = schema.get("properties")
    extra = schema.get("additionalProperties")
    for key in list(obj):
        if top and key in ("apiVersion", "kind", "metadata"):
            continue
        if properties is not None and key in properties:
            _prune(obj[key], properties[key], False)
        elif isinstance(extra, dict):
            _prune(obj[key], extra, False)
        elif properties is not None or extra is False:
            del obj[key]


def taskaction_kind() -> Kind:
    crd = yaml.safe_load(TASKACTION_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return Kind("flyte.org", version["name"], crd["spec"]["names"]["plural"], crd["spec"]["names"]["kind"],
                status_subresource="status" in version.get("subresources", {}),
                schema=version["schema"]["openAPIV3Schema"], builtin=False)


def core_kinds() -> list[Kind]:
    """Kubernetes' own kinds the backend and its installer use (not schema-checked here: the tests check what
    they build with kubernetes-validate)."""
    return [Kind("", "v1", "pods", "Pod", short_names=("po",)),
            Kind("", "v1", "events", "Event", status_subresource=False),
            Kind("", "v1", "secrets", "Secret", status_subresource=False),
            Kind("", "v1", "serviceaccounts", "ServiceAccount", status_subresource=False),
            Kind("", "v1", "services", "Service"),
            Kind("apps", "v1", "deployments", "Deployment"),
            Kind("rbac.authorization.k8s.io", "v1", "roles", "Role", status_subresource=False),
            Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", status_subresource=False),
            Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                 namespaced=False),
            Kind("coordination.k8s.io", "v1", "leases", "Lease", status_subresource=False)]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, name: str = "", kind: str = ""):
        super().__init__(message)
        self.code, self.reason, self.message, self.name, self.kind = code, reason, message, name, kind

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "details": {"name": self.name, "kind": self.kind}, "code": self.code}

    def response(self) -> web.Response:
        return web.json_response(self.status(), status=self.code)


_SELECTOR_TERM = re.compile(r"^\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*)|\s+(in|notin)\s*"
                            r"\(([^)]*)\))?\s*$")


def parse_label_selector(text: str) -> list[tuple[str, str, object]]:
    """``a=b,c!=d,e in (f,g),h,!i`` → [(key, op, value)]; raises ApiError 400 when malformed."""
    terms: list[tuple[str, str, object]] = []
    for part in re.split(r",(?![^(]*\))", text or ""):
        if not part.strip():
            continue
        match = _SELECTOR_TERM.match(part)
        if not match:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
        bang, key, op, value, set_op, values = match.groups()
        if bang:
            if op or set_op:
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
            terms.append((key, "!exists", None))
        elif op:
            terms.append((key, "!=" if op == "!=" else "=", value))
        elif set_op:
            terms.append((key, set_op, {v.strip() for v in values.split(",") if v.strip()}))
        else:
            terms.append((key, "exists", None))
    return terms


def labels_match(labels: dict, terms) -> bool:
    for key, op, value in terms:
        present = key in labels
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "in" and labels.get(key) not in value:
            return False
        if op == "notin" and present and labels[key] in value:
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
    return True


def parse_field_selector(text: str) -> list[tuple[str, bool, str]]:
    terms = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        match = re.match(r"^\s*([a-zA-Z.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not match or match.group(1) not in ("metadata.name", "metadata.namespace", "status.phase",
                                               "involvedObject.name", "involvedObject.kind"):  # events'

            raise ApiError(400, "BadRequest", f"field label not supported: {part.strip()}")
        terms.append((match.group(1), match.group(2) != "!=", match.group(3)))
    return terms


def fields_match(obj: dict, terms) -> bool:
    for path, equal, value in terms:
        current = obj
        for step in path.split("."):
            current = current.get(step) if isinstance(current, dict) else None
        if (str(current or "") == value) != equal:
            return False
    return True


def merge_patch(target, patch):
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class Store:
    """Objects by (plural, namespace, name), the event history, and the watchers' wake-up."""

    def __init__(self, history: int):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.rv = 0
        self.log: list[tuple[int, str, str, dict, dict | None]] = []  # by resourceVersion, the last `history`
        self.history = history
        self.changed = asyncio.Condition()

    def bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    async def record(self, plural: str, event: str, obj: dict, before: dict | None = None) -> None:
        self.log.append((self.rv, plural, event, copy.deepcopy(obj), before))
        if len(self.log) > self.history:  # a list, not a deque: a watcher's position is found by bisection
            del self.log[:len(self.log) - self.history]
        async with self.changed:
            self.changed.notify_all()


class ApiServer:
    """The aiohttp application and its state; ``EmulatorThread`` serves it on 127.0.0.1 for sync clients."""

    def __init__(self, kinds: list[Kind] | None = None, history: int = 1000):
        self.kinds = {k.plural: k for k in (kinds if kinds is not None else [taskaction_kind(), *core_kinds()])}
        for kind in self.kinds.values():
            if kind.schema is not None:
                kind.validator = jsonschema.Draft202012Validator(_json_schema(kind.schema))
        self.store = Store(history)
        self.faults: list[tuple[str, str, int]] = []
        self.pod_logs: dict[tuple[str, str], str] = {}  # (namespace, pod) → the log file tests/kubelet.py writes
        self.verbs: collections.Counter[tuple[str, str]] = collections.Counter()  # (RBAC verb, resource)
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.dispatch)

    @staticmethod
    def _verb(request: web.Request, name: str) -> str:
        """The RBAC verb a request needs, as the API server's authorizer names it."""
        if request.method == "GET":
            if name:
                return "get"
            return "watch" if request.query.get("watch", "").lower() in ("true", "1", "t") else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(request.method, "?")

    def fail_next(self, method: str, plural: str, code: int) -> None:
        self.faults.append((method.upper(), plural, code))

    # ------------------------------------------------------------------ routing
    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except ApiError as exc:
            return exc.response()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "32", "gitVersion": "v1.32.0-taskdeck-emulator",
                                      "platform": "linux/amd64"})
        if parts in (["api"], ["apis"]) or parts[:1] in (["api"], ["apis"]) and len(parts) <= 3 and not (
                parts[0] == "api" and len(parts) == 3):
            discovery = self._discovery(parts)
            if discovery is not None:
                return web.json_response(discovery)
        if parts and parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts and parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        namespace = ""
        if group == "" and rest[0] == "namespaces" and len(rest) <= 2:
            return web.json_response(self._namespace(rest[1]) if len(rest) == 2 else {
                "kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.store.rv)},
                "items": [self._namespace(n) for n in sorted({ns for (_, ns, _) in self.store.objects} | {"default"})]})
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        kind = self.kinds.get(rest[0])
        if kind is None or kind.group != group or kind.version != version or len(rest) > 3:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({request.path})")
        name = rest[1] if len(rest) >= 2 else ""
        subresource = rest[2] if len(rest) == 3 else ""
        if subresource == "log" and kind.plural == "pods" and request.method == "GET":
            self.verbs[("get", "pods/log")] += 1
            return self._pod_log(namespace, name, request.query.get("container"))
        if subresource and (subresource != "status" or not kind.status_subresource):
            raise ApiError(404, "NotFound", f"no subresource {subresource!r} on {kind.plural}")
        self.verbs[(self._verb(request, name), f"{kind.plural}/{subresource}" if subresource else kind.plural)] += 1
        for fault in self.faults:
            if fault[:2] == (request.method, kind.plural):
                self.faults.remove(fault)
                raise ApiError(fault[2], {409: "Conflict", 410: "Expired", 500: "InternalError", 403: "Forbidden",
                                          429: "TooManyRequests"}.get(fault[2], "InternalError"), "injected fault")
        if not name:
            if request.method == "GET":
                if request.query.get("watch", "").lower() in ("true", "1", "t"):
                    return await self._watch(request, kind, namespace)
                return web.json_response(self._list(request, kind, namespace))
            if request.method == "POST":
                if not namespace and kind.namespaced:
                    raise ApiError(405, "MethodNotAllowed", "create needs a namespace")
                obj = await self._create(kind, namespace, await self._body(request))
                return web.json_response(obj, status=201)
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on a collection")
        if request.method == "GET":
            return web.json_response(self._get(kind, namespace, name))
        if request.method == "PUT":
            return web.json_response(await self._write(kind, namespace, name, subresource,
                                                        await self._body(request), None))
        if request.method == "PATCH":
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            body = await self._body(request)
            if content_type == "application/merge-patch+json" or (
                    content_type == "application/strategic-merge-patch+json" and kind.builtin):
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
                return web.json_response(await self._write(kind, namespace, name, subresource, None, body))
            if content_type == "application/json-patch+json" and not isinstance(body, list):
                raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                           f"accepted media types include: application/merge-patch+json (got {content_type!r})")
        if request.method == "DELETE":
            body = await self._body(request, optional=True)
            return web.json_response(await self._delete(kind, namespace, name, body or {}))
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported")

    def _pod_log(self, namespace: str, name: str, container: str | None) -> web.Response:
        """``pods/NAME/log``: what the node (tests/kubelet.py) recorded the pod's container writing; 400 while
        it has not started, as a kubelet answers."""
        self._get(self.kinds["pods"], namespace, name)  # 404 when there is no such pod
        path = self.pod_logs.get((namespace, name))
        if path is None or not Path(path).exists():
            raise ApiError(400, "BadRequest", f'container "{container or name}" in pod "{name}" is waiting to start: '
                           "ContainerCreating")
        return web.Response(text=Path(path).read_text(errors="replace"), content_type="text/plain")

    @staticmethod
    def _namespace(name: str) -> dict:
        return {"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": name}, "status": {"phase": "Active"}}

    def _discovery(self, parts: list[str]) -> dict | None:
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if parts == ["apis"]:
            groups = sorted({k.group for k in self.kinds.values() if k.group})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}} for g in groups]}
        if parts[0] == "api" and len(parts) == 2:
            return self._resources("", parts[1])
        if parts[0] == "apis" and len(parts) == 2:
            if not any(k.group == parts[1] for k in self.kinds.values()):
                return None
            return {"kind": "APIGroup", "apiVersion": "v1", "name": parts[1],
                    "versions": [{"groupVersion": f"{parts[1]}/v1", "version": "v1"}],
                    "preferredVersion": {"groupVersion": f"{parts[1]}/v1", "version": "v1"}}
        if parts[0] == "apis" and len(parts) == 3:
            return self._resources(parts[1], parts[2])
        return None

    def _resources(self, group: str, version: str) -> dict | None:
        kinds = [k for k in self.kinds.values() if k.group == group and k.version == version]
        if not kinds:
            return None
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources = []
        for k in kinds:
            resources.append({"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced,
                              "kind": k.kind, "verbs": verbs, "shortNames": list(k.short_names)})
            if k.status_subresource:
                resources.append({"name": f"{k.plural}/status", "singularName": "", "namespaced": k.namespaced,
                                  "kind": k.kind, "verbs": ["get", "patch", "update"]})
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": kinds[0].api_version,
                "resources": resources}

    @staticmethod
    async def _body(request: web.Request, optional: bool = False):
        text = await request.text()
        if not text and optional:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not JSON") from None

    # ------------------------------------------------------------------ verbs
    def _get(self, kind: Kind, namespace: str, name: str) -> dict:
        obj = self.store.objects.get((kind.plural, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{kind.plural}.{kind.group or "core"} "{name}" not found', name,
                           kind.plural)
        return obj

    def _list(self, request: web.Request, kind: Kind, namespace: str) -> dict:
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""))
        items = [o for (plural, ns, _), o in sorted(self.store.objects.items())
                 if plural == kind.plural and (not namespace or ns == namespace)
                 and labels_match(o["metadata"].get("labels") or {}, labels) and fields_match(o, fields)]
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)}, "items": items}

    def _validate(self, kind: Kind, obj: dict) -> None:
        name = obj["metadata"].get("name", "")
        if kind.validator is not None:
            _prune(obj, kind.schema)
            body = {k: v for k, v in obj.items() if k != "metadata"}
            problems = sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                              for e in kind.validator.iter_errors(body))
            if problems:
                raise ApiError(422, "Invalid", f'{kind.kind} "{name}" is invalid: ' + "; ".join(problems), name,
                               kind.kind)
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name) or len(name) > 253:
            raise ApiError(422, "Invalid", f'{kind.kind} "{name}" is invalid: metadata.name: Invalid value: a '
                           "lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                           "'.'", name, kind.kind)
        labels = obj["metadata"].get("labels") or {}
        for key, value in labels.items():
            if not isinstance(value, str) or len(value) > 63 or not re.fullmatch(
                    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value):
                raise ApiError(422, "Invalid", f'{kind.kind} "{name}" is invalid: metadata.labels: Invalid value: '
                               f"{value!r}", name, kind.kind)

    async def _create(self, kind: Kind, namespace: str, body) -> dict:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the object must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        name = meta.get("name") or ""
        if not name:
            raise ApiError(422, "Invalid", f"{kind.kind} is invalid: metadata.name: Required value: name or "
                           "generateName is required", "", kind.kind)
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                           "sent on the request")
        if (kind.plural, namespace, name) in self.store.objects:
            raise ApiError(409, "AlreadyExists", f'{kind.plural}.{kind.group or "core"} "{name}" already exists',
                           name, kind.plural)
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if kind.status_subresource:
            obj.pop("status", None)
        if kind.plural == "pods":  # as the API server's pod strategy does on create: Pending until a node reports
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        self._validate(kind, obj)
        meta.update({"namespace": namespace, "uid": str(uuid.uuid4()), "creationTimestamp": _now(), "generation": 1})
        for transient in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(transient, None)
        meta["resourceVersion"] = self.store.bump()
        self.store.objects[(kind.plural, namespace, name)] = obj
        await self.store.record(kind.plural, "ADDED", obj)
        return obj

    async def _write(self, kind: Kind, namespace: str, name: str, subresource: str, replacement, patch) -> dict:
        current = self._get(kind, namespace, name)
        if replacement is not None:
            if not isinstance(replacement, dict):
                raise ApiError(400, "BadRequest", "the object must be a JSON object")
            given = (replacement.get("metadata") or {}).get("resourceVersion")
            if not given:
                raise ApiError(422, "Invalid", f'{kind.kind} "{name}" is invalid: metadata.resourceVersion: '
                               "Invalid value: 0: must be specified for an update", name, kind.kind)
            wanted = copy.deepcopy(replacement)
        else:
            given = ((patch.get("metadata") or {}) if isinstance(patch.get("metadata"), dict) else {}).get(
                "resourceVersion")
            wanted = merge_patch(current, patch)
        if given and given != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural}.{kind.group or "core"} '
                           f'"{name}": the object has been modified; please apply your changes to the latest '
                           "version and try again", name, kind.plural)
        new = copy.deepcopy(current)
        if subresource == "status":
            if "status" in wanted:
                new["status"] = wanted["status"]
            else:
                new.pop("status", None)
        else:
            old_meta = current["metadata"]
            meta = dict(wanted.get("metadata") or {})
            for fixed in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp",
                          "resourceVersion"):
                if fixed in old_meta:
                    meta[fixed] = old_meta[fixed]
                else:
                    meta.pop(fixed, None)
            if old_meta.get("deletionTimestamp") and set(meta.get("finalizers") or []) - set(
                    old_meta.get("finalizers") or []):
                raise ApiError(422, "Invalid", f'{kind.kind} "{name}" is invalid: metadata.finalizers: Forbidden: no '
                               "new finalizers can be added if the object is being deleted", name, kind.kind)
            new = {k: v for k, v in wanted.items() if k not in ("metadata", "status")}
            new["metadata"] = meta
            if kind.status_subresource and "status" in current:
                new["status"] = current["status"]
            elif not kind.status_subresource and "status" in wanted:
                new["status"] = wanted["status"]
            new["apiVersion"], new["kind"] = kind.api_version, kind.kind
        self._validate(kind, new)
        if new == current:
            return current  # a no-op: no new resourceVersion, no event
        if new.get("spec") != current.get("spec"):
            new["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
        new["metadata"]["resourceVersion"] = self.store.bump()
        key = (kind.plural, namespace, name)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            del self.store.objects[key]
            await self.store.record(kind.plural, "DELETED", new, current)
            await self._collect(new["metadata"]["uid"])
            return new
        self.store.objects[key] = new
        await self.store.record(kind.plural, "MODIFIED", new, current)
        return new

    async def _delete(self, kind: Kind, namespace: str, name: str, options: dict) -> dict:
        current = self._get(kind, namespace, name)
        pre = options.get("preconditions") or {}
        if (pre.get("uid") and pre["uid"] != current["metadata"]["uid"]) or (
                pre.get("resourceVersion") and pre["resourceVersion"] != current["metadata"]["resourceVersion"]):
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.plural} "{name}": the '
                           "precondition did not hold", name, kind.plural)
        key = (kind.plural, namespace, name)
        if current["metadata"].get("finalizers"):
            if current["metadata"].get("deletionTimestamp"):
                return current
            new = copy.deepcopy(current)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["resourceVersion"] = self.store.bump()
            self.store.objects[key] = new
            await self.store.record(kind.plural, "MODIFIED", new, current)
            return new
        del self.store.objects[key]
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = self.store.bump()
        await self.store.record(kind.plural, "DELETED", gone, current)
        await self._collect(current["metadata"]["uid"])
        return gone

    async def _collect(self, owner_uid: str) -> None:
        """The garbage collector: dependents of a deleted owner are deleted (background propagation)."""
        for (plural, namespace, name), obj in list(self.store.objects.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if any(ref.get("uid") == owner_uid for ref in owners) and (plural, namespace, name) in self.store.objects:
                await self._delete(self.kinds[plural], namespace, name, {})

    # ------------------------------------------------------------------ watch
    async def _watch(self, request: web.Request, kind: Kind, namespace: str) -> web.StreamResponse:
        labels = parse_label_selector(request.query.get("labelSelector", ""))
        fields = parse_field_selector(request.query.get("fieldSelector", ""))
        since = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds") or 0) or None
        bookmarks = request.query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(event_type: str, obj: dict) -> None:
            await response.write(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")

        def visible(obj: dict | None) -> bool:
            return obj is not None and (not namespace or obj["metadata"].get("namespace") == namespace) and \
                labels_match(obj["metadata"].get("labels") or {}, labels) and fields_match(obj, fields)

        store = self.store
        if since in ("", "0"):
            last = store.rv
            for (plural, _, _), obj in sorted(store.objects.items()):
                if plural == kind.plural and visible(obj):
                    await send("ADDED", obj)
        else:
            try:
                last = int(since)
            except ValueError:
                raise ApiError(400, "BadRequest", f"invalid resource version {since!r}") from None
            oldest = store.log[0][0] if store.log else store.rv + 1
            if last < oldest - 1 and last < store.rv or last > store.rv:
                await send("ERROR", ApiError(410, "Expired", f"too old resource version: {last} "
                                                             f"({oldest - 1})").status())
                await response.write_eof()
                return response

        async def pump() -> None:
            nonlocal last
            while True:
                start = bisect.bisect_right(store.log, last, key=lambda entry: entry[0])
                snapshot = store.log[start:]  # events recorded while this sends are in the next round
                for rv, plural, event, obj, before in snapshot:
                    if rv <= last or plural != kind.plural:
                        continue
                    last = rv
                    now_visible, was_visible = visible(obj) and event != "DELETED", visible(before)
                    if event == "DELETED":
                        if was_visible or visible(obj):
                            await send("DELETED", obj)
                    elif now_visible and (was_visible or event == "ADDED"):
                        await send(event, obj)
                    elif now_visible:
                        await send("ADDED", obj)  # it starts matching the selector
                    elif was_visible:
                        await send("DELETED", obj)  # it stops matching
                if snapshot:
                    last = max(last, snapshot[-1][0])
                async with store.changed:
                    if store.rv <= last:
                        await store.changed.wait()

        try:
            await asyncio.wait_for(pump(), timeout)
        except asyncio.TimeoutError:
            if bookmarks:
                await send("BOOKMARK", {"kind": kind.kind, "apiVersion": kind.api_version,
                                        "metadata": {"resourceVersion": str(store.rv)}})
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        await response.write_eof()
        return response


class EmulatorThread:
    """The emulator on 127.0.0.1 (a free port) in a thread with its own loop: the sync client and kubectl
    talk to it as to a cluster. ``call(fn)`` runs ``fn(server)`` on its loop (to inspect or change state)."""

    def __init__(self, server: ApiServer | None = None, port: int = 0):
        self.server = server
        self.port = port
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="kube-apiserver-emulator", daemon=True)
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.server is None:
            self.server = ApiServer()
        runner = web.AppRunner(self.server.app, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the API server emulator did not start")
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def call(self, fn):
        async def run():
            result = fn(self.server)
            return await result if asyncio.iscoroutine(result) else result
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": namespace}}]}))
        return path

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def backend_config(backend: str, tmp_path: Path, request=None):
    """EngineConfig fields for ``backend``: nothing for the embedded default; for "kubernetes", an emulator
    serving for the duration and a kubeconfig pointing at it; "kubernetes+postgresql" also keeps the runs
    data in a fresh database on the suite's PostgreSQL server (``request``: the test's, for that fixture)."""
    if backend == "embedded":
        yield {}
        return
    database = request.getfixturevalue("postgres_url") if backend == "kubernetes+postgresql" else None
    with EmulatorThread() as emulator:
        yield {"backend": "kubernetes", "kubeconfig": emulator.kubeconfig(tmp_path / "kubeconfig", "flyte"),
               "database": database}


def main() -> None:
    """``python tests/kube_apiserver.py [--port N] [--history N]``: serve until interrupted; prints its URL."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description="The Kubernetes API server emulator of TaskDeck's tests.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--history", type=int, default=1000, help="watch events kept for resuming")
    args = parser.parse_args()
    emulator = EmulatorThread(ApiServer(history=args.history), port=args.port).start()
    print(emulator.url, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    emulator.stop()


if __name__ == "__main__":
    main()
