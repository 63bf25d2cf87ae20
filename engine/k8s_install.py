"""What `taskdeck k8s install` puts on a cluster for the Kubernetes backend, and how it applies or removes it.

The TaskAction CRD (engine/crd), a ServiceAccount with a Role allowing exactly the verbs the engine's
TaskAction store uses (engine/store/kubernetes.py: list, watch, create, update, patch, delete on taskactions;
update on their status) and its leader election (engine/leader.py: get, create, update on leases), its
RoleBinding, and, for an engine that runs in the
cluster, a Deployment of one replica and a Service in front of its API.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

from engine.data_store import check_raw_data_prefix
from engine.names import DEFAULT_NAMESPACE, InvalidNameError, check_namespace

CRD_FILE = Path(__file__).parent / "crd" / "flyte.org_taskactions.yaml"
NAME = "taskdeck-engine"
API_PORT = 8080
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")  # no spaces, no empty: a reference the kubelet can pull
# The typed clients' patch calls default to JSON Patch, which a dict body is not: say what it is.
MERGE_PATCH = "application/merge-patch+json"
# What engine/store/kubernetes.py calls, and nothing more.
RULES = [  # reads come from the informer (list, watch); no single get
    {"apiGroups": ["flyte.org"], "resources": ["taskactions"],
     "verbs": ["list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": ["flyte.org"], "resources": ["taskactions/status"], "verbs": ["update"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},  # leader
]
# What engine/kube_secrets.py calls: the backend's secret store is the namespace's Secrets (its own, by label).
SECRET_RULES = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "create", "patch", "delete"]}]
# With --tasks-on pods, what engine/plugins/cluster_backend.py calls: the tasks' objects, their logs, and the
# Secret that gives each object's pods the engine endpoint with their run's credential.
_TASK_OBJECT_VERBS = ["create", "get", "list", "delete"]
TASK_POD_RULES = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": [*_TASK_OBJECT_VERBS, "watch"]},  # watch: owners woken
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "patch"]},  # patch: a relaunch's fresh values
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},  # what the console shows of an object
    {"apiGroups": ["sparkoperator.k8s.io"], "resources": ["sparkapplications"], "verbs": [*_TASK_OBJECT_VERBS, "watch"]},
    {"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": [*_TASK_OBJECT_VERBS, "watch"]},
    {"apiGroups": ["kubernetes.dask.org"], "resources": ["daskjobs"], "verbs": [*_TASK_OBJECT_VERBS, "watch"]},
]


STORAGE_SECRET = "taskdeck-storage"  # with --raw-data in the cluster: the object store's variables, if any


class InstallError(Exception):
    pass


def manifests(namespace: str = DEFAULT_NAMESPACE, *, in_cluster: bool = False, image: str = "python:3.11-slim",
              tasks_on: str = "processes", raw_data: str | None = None) -> list[dict]:
    """The objects, in the order they are applied (uninstall removes them in reverse); ``tasks_on`` "pods":
    an engine that runs its tasks as Pods (and Spark/Ray/Dask objects), with the verbs that needs; in the
    cluster its pods reach it through the Service, and ``raw_data`` keeps their data on an object store whose
    variables (FLYTE_AWS_ENDPOINT, FLYTE_AWS_ACCESS_KEY_ID, ...) the engine takes from the Secret
    ``taskdeck-storage`` when there is one."""
    if tasks_on not in ("processes", "pods"):
        raise InstallError(f"--tasks-on must be processes or pods, not {tasks_on!r}")
    rules = RULES + SECRET_RULES + (TASK_POD_RULES if tasks_on == "pods" else [])
    try:
        check_namespace(namespace)
    except InvalidNameError as exc:
        raise InstallError(str(exc)) from None
    if raw_data is not None:
        if tasks_on != "pods":
            raise InstallError("--raw-data is for --tasks-on pods")
        try:
            raw_data = check_raw_data_prefix(raw_data)
        except ValueError as exc:
            raise InstallError(str(exc)) from None
    if in_cluster and not _IMAGE.fullmatch(image or ""):
        raise InstallError(f"--image {image!r} is not an image reference (e.g. registry/taskdeck:1.0)")
    import yaml  # here: every taskdeck command imports this module for its parser, few need yaml

    labels = {"app.kubernetes.io/name": "taskdeck", "app.kubernetes.io/component": "engine"}
    meta = {"name": NAME, "namespace": namespace, "labels": labels}
    objects = [
        yaml.safe_load(CRD_FILE.read_text()),
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": labels}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": copy.deepcopy(meta)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": copy.deepcopy(meta),
         "rules": copy.deepcopy(rules)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": copy.deepcopy(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]},
    ]
    if in_cluster:
        container = {
            "name": "engine", "image": image,
            "command": ["taskdeck", "--headless", "--backend", "kubernetes", "--in-cluster", "--namespace",
                        namespace, "--data-dir", "/var/lib/taskdeck", "--tasks-on", tasks_on,
                        "--listen", f"0.0.0.0:{API_PORT}"]  # the Service's target: every request needs its credential
                       + (["--advertise-url", f"http://{NAME}.{namespace}.svc:{API_PORT}"] if tasks_on == "pods" else [])
                       + (["--raw-data", raw_data] if raw_data else []),
            "ports": [{"name": "api", "containerPort": API_PORT}],
            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/taskdeck"}],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False},
        }
        if raw_data:
            container["envFrom"] = [{"secretRef": {"name": STORAGE_SECRET, "optional": True}}]
        objects += [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": copy.deepcopy(meta),
             "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                      "strategy": {"type": "Recreate"},  # one engine holds the data directory at a time
                      "template": {"metadata": {"labels": labels},
                                   "spec": {"serviceAccountName": NAME, "containers": [container],
                                            "volumes": [{"name": "data", "emptyDir": {}}]}}}},
            {"apiVersion": "v1", "kind": "Service", "metadata": copy.deepcopy(meta),
             "spec": {"selector": labels, "ports": [{"name": "api", "port": API_PORT, "targetPort": "api"}]}},
        ]
    return objects


def render(objects: list[dict]) -> str:
    import yaml

    return yaml.safe_dump_all(objects, sort_keys=False)


def _calls(api_client, obj: dict):
    """(create, patch, delete) for ``obj`` through the official client's typed APIs."""
    from kubernetes import client

    kind, meta = obj["kind"], obj["metadata"]
    name, namespace = meta["name"], meta.get("namespace")
    if kind == "CustomResourceDefinition":
        api = client.ApiextensionsV1Api(api_client)
        return (lambda: api.create_custom_resource_definition(obj),
                lambda: api.patch_custom_resource_definition(name, obj, _content_type=MERGE_PATCH),
                lambda: api.delete_custom_resource_definition(name))
    if kind == "Namespace":
        api = client.CoreV1Api(api_client)
        return (lambda: api.create_namespace(obj), lambda: api.patch_namespace(name, obj, _content_type=MERGE_PATCH),
                lambda: api.delete_namespace(name))
    typed = {"ServiceAccount": (client.CoreV1Api, "service_account"), "Service": (client.CoreV1Api, "service"),
             "Role": (client.RbacAuthorizationV1Api, "role"),
             "RoleBinding": (client.RbacAuthorizationV1Api, "role_binding"),
             "Deployment": (client.AppsV1Api, "deployment")}
    api_class, noun = typed[kind]
    api = api_class(api_client)
    return (lambda: getattr(api, f"create_namespaced_{noun}")(namespace, obj),
            lambda: getattr(api, f"patch_namespaced_{noun}")(name, namespace, obj, _content_type=MERGE_PATCH),
            lambda: getattr(api, f"delete_namespaced_{noun}")(name, namespace))


def describe(obj: dict) -> str:
    namespace = obj["metadata"].get("namespace")
    return f"{obj['kind'].lower()}/{obj['metadata']['name']}" + (f" in {namespace}" if namespace else "")


def _attempt(obj: dict, call, done: str, tolerated: int, otherwise) -> str:
    """``call()``; on the ``tolerated`` status, ``otherwise()`` (a line, or None to report it); any other
    refusal is an InstallError naming the object."""
    from kubernetes.client.rest import ApiException

    try:
        call()
        return f"{describe(obj)} {done}"
    except ApiException as exc:
        if exc.status == tolerated:
            return otherwise()
        raise InstallError(f"{describe(obj)}: the API server answered {exc.status} {exc.reason}") from None


def apply(api_client, objects: list[dict]) -> list[str]:
    """Create each object, or patch it where it exists; what was done, a line each."""
    lines = []
    for obj in objects:
        create, patch, _ = _calls(api_client, obj)
        lines.append(_attempt(obj, create, "created", 409,
                              lambda: _attempt(obj, patch, "configured", -1, None)))
    return lines


def remove(api_client, objects: list[dict], keep_namespace: bool = True) -> list[str]:
    """Delete the objects in reverse order (a missing one is fine)."""
    lines = []
    for obj in reversed(objects):
        if obj["kind"] == "Namespace" and keep_namespace:
            continue
        _, _, delete = _calls(api_client, obj)
        lines.append(_attempt(obj, delete, "deleted", 404, lambda: f"{describe(obj)} not found"))
    return lines


def cluster_client(kubeconfig=None, context: str | None = None, in_cluster: bool = False):
    """An ApiClient for the cluster (as the engine's own), and the namespace its context names."""
    from engine.store.kubernetes import connect

    try:
        return connect(kubeconfig, context, None, in_cluster=in_cluster)
    except ValueError as exc:
        raise InstallError(str(exc)) from None
