"""`taskdeck k8s install|uninstall`: the manifests against the Kubernetes OpenAPI schema (kubernetes-validate),
the Role against what the engine's store really calls, and applying them through the emulator."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes import client

from engine.k8s_install import RULES, SECRET_RULES, TASK_POD_RULES, InstallError, manifests
from engine.leader import LeaseElector
from engine.model import FINALIZER
from engine.store.kubernetes import KubernetesResourceStore
from helpers import make_task_action
from kube_apiserver import ApiServer, EmulatorThread

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("in_cluster", [False, True])
def test_every_manifest_is_valid_kubernetes(in_cluster):
    objects = manifests("team-a", in_cluster=in_cluster)
    kinds = [o["kind"] for o in objects]
    assert kinds[:5] == ["CustomResourceDefinition", "Namespace", "ServiceAccount", "Role", "RoleBinding"]
    assert (kinds[5:] == ["Deployment", "Service"]) == in_cluster
    for obj in objects:
        kubernetes_validate.validate(obj, "1.32", strict=True)  # raises on an unknown field or a wrong type
    with pytest.raises(Exception):
        kubernetes_validate.validate({**objects[3], "rules": [{"verbs": "get"}]}, "1.32", strict=True)


def test_the_in_cluster_engine_listens_for_its_service_and_its_pods_and_takes_its_store_from_a_secret():
    """In the cluster the engine listens on every interface at the Service's target port; with tasks on pods
    it advertises the Service, and with --raw-data takes the store's variables from an optional Secret."""
    objects = manifests("team-a", in_cluster=True, tasks_on="pods", raw_data="s3://bucket/td/")
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    kubernetes_validate.validate(deployment, "1.32", strict=True)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[command.index("--listen") + 1] == "0.0.0.0:8080"
    assert command[command.index("--advertise-url") + 1] == "http://taskdeck-engine.team-a.svc:8080"
    assert command[command.index("--raw-data") + 1] == "s3://bucket/td"
    assert container["envFrom"] == [{"secretRef": {"name": "taskdeck-storage", "optional": True}}]
    plain = next(o for o in manifests("team-a", in_cluster=True) if o["kind"] == "Deployment")
    assert "--advertise-url" not in plain["spec"]["template"]["spec"]["containers"][0]["command"]
    with pytest.raises(InstallError, match="--raw-data is for --tasks-on pods"):
        manifests("team-a", in_cluster=True, raw_data="s3://bucket/td")
    with pytest.raises(InstallError, match="object store prefix"):
        manifests("team-a", in_cluster=True, tasks_on="pods", raw_data="/data")


async def test_the_role_grants_exactly_what_the_store_uses():
    """Every call of the store's and the leader election's whole repertoire, counted by the emulator as the API server's authorizer
    would name it, against the Role's rules: nothing missing, nothing extra."""
    with EmulatorThread(ApiServer()) as emulator:
        api_client = client.ApiClient(client.Configuration(host=emulator.url))
        store = KubernetesResourceStore(api_client, "flyte", watch_seconds=1)
        await store.start()
        try:
            root = await store.create(make_task_action(finalizers=[FINALIZER]))
            root.status.attempts = 1
            await store.update_status(root, labels={"x": "1"})
            current = await store.get(root.name)
            current.metadata.finalizers = []
            await store.update(current)
            await store.delete(root.name)
            elector = LeaseElector(api_client, "flyte", "engine-a", lease_seconds=1, renew_seconds=0.2)
            await elector.acquire()  # create
            await elector._try()  # read, renew
            await elector.release()
            await asyncio.sleep(1.5)  # the informer's watch ends (timeoutSeconds) and resumes: list + watch again
        finally:
            await store.close()
            api_client.close()
        used = {(verb, resource) for verb, resource in emulator.server.verbs}
    granted = {(verb, resource) for rule in RULES for resource in rule["resources"] for verb in rule["verbs"]}
    assert used == granted, (sorted(used - granted), sorted(granted - used))


async def test_the_task_pod_rules_are_exactly_what_running_tasks_as_pods_calls(tmp_path):
    """--tasks-on pods: every call the cluster backend makes for the tasks' objects (a Pod with its endpoint
    Secret, its log, the three operators' kinds; get, list as garbage collection does, delete), against the
    rules it adds: nothing missing, nothing extra, and all in the engine's namespace (a Role)."""
    from engine.plugins.cluster_backend import CUSTOM_KINDS, ClusterResourceBackend
    from engine.plugins.pod import PodPlugin
    from engine.plugins.resource_manager import ResourcePluginManager
    from kube_apiserver import Kind, core_kinds, taskaction_kind
    from test_dask import _tctx

    kinds = [taskaction_kind(), *core_kinds()] + [
        Kind(group, version, plural, kind, builtin=False) for kind, (group, version, plural) in CUSTOM_KINDS.items()
        if plural != "rayclusters"]
    with EmulatorThread(ApiServer(kinds=kinds)) as emulator:
        api_client = client.ApiClient(client.Configuration(host=emulator.url))
        backend = ClusterResourceBackend(api_client, endpoint_for=lambda tctx: "http://engine:8080/c/tdr_x",
                                         namespace="flyte")
        tctx = _tctx(tmp_path, None)
        pod = ResourcePluginManager(PodPlugin(), backend).with_metadata(PodPlugin().build_resource(tctx), tctx)
        changed = asyncio.Event()
        backend.watch_pods(lambda owner: changed.set() if owner == tctx.metadata.owner_name else None)
        await backend.create(pod, tctx)
        await asyncio.wait_for(changed.wait(), 10)  # the watch wakes the Pod's owner
        with pytest.raises(Exception):  # launched again (a lost state write): the Secret is refreshed, the Pod exists
            await backend.create(pod, tctx)
        await backend.get(pod)
        await backend.list("v1", "Pod", None, {"flyte.org/managed": "true"})
        emulator.server.pod_logs[("flyte", pod["metadata"]["name"])] = str(tmp_path / "pod.log")
        (tmp_path / "pod.log").write_text("hello\n")
        assert await backend.pod_log(pod) == "hello\n"
        assert await backend.events_of(pod) == []
        await backend.delete(pod)
        for kind, (group, version, plural) in CUSTOM_KINDS.items():
            if plural == "rayclusters":
                continue
            obj = {"apiVersion": f"{group}/{version}", "kind": kind, "metadata": {"name": "x", "namespace": "flyte"}}
            await backend.create(obj, tctx)
            await backend.get(obj)
            await backend.list(obj["apiVersion"], kind, None, {})
            await backend.delete(obj)
        await backend.close()
        used = {(verb, resource) for verb, resource in emulator.server.verbs}
    granted = {(verb, resource) for rule in TASK_POD_RULES for resource in rule["resources"] for verb in rule["verbs"]}
    assert used == granted, (sorted(used - granted), sorted(granted - used))
    role = next(o for o in manifests("team-a", tasks_on="pods") if o["kind"] == "Role")
    assert role["rules"] == RULES + SECRET_RULES + TASK_POD_RULES
    assert next(o for o in manifests("team-a") if o["kind"] == "Role")["rules"] == RULES + SECRET_RULES


async def test_the_secret_rules_are_exactly_what_the_kubernetes_secret_store_calls():
    """The backend's secret store (engine/kube_secrets.py), its whole repertoire, against SECRET_RULES."""
    from engine.kube_secrets import KubernetesSecretStore
    from engine.secret_store import SecretNotFoundError
    from kube_apiserver import core_kinds, taskaction_kind

    with EmulatorThread(ApiServer(kinds=[taskaction_kind(), *core_kinds()])) as emulator:
        api_client = client.ApiClient(client.Configuration(host=emulator.url))
        store = KubernetesSecretStore(api_client, "flyte")
        try:
            await store.put("token", b"one", project="p", domain="development")  # create
            await store.put("token", b"two", project="p", domain="development")  # exists: patch
            assert await store.resolve("token", project="p", domain="development") == b"two"  # get
            assert await store.reference("token", project="p", domain="development")
            assert [i.name for i in await store.list()] == ["token"]  # list
            await store.delete("token", project="p", domain="development")  # delete
            with pytest.raises(SecretNotFoundError):
                await store.resolve("token", project="p", domain="development")
        finally:
            api_client.close()
        used = {(verb, resource) for verb, resource in emulator.server.verbs}
    granted = {(verb, resource) for rule in SECRET_RULES for resource in rule["resources"] for verb in rule["verbs"]}
    assert used == granted, (sorted(used - granted), sorted(granted - used))


def taskdeck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "console.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_install_applies_idempotently_and_uninstall_removes(tmp_path):
    printed = taskdeck("k8s", "install", "--dry-run", "--namespace", "team-a", "--in-cluster")
    assert printed.returncode == 0, printed.stderr
    assert [o["kind"] for o in yaml.safe_load_all(printed.stdout)][-2:] == ["Deployment", "Service"]
    with EmulatorThread() as emulator:
        kubeconfig = str(emulator.kubeconfig(tmp_path / "kubeconfig"))
        first = taskdeck("k8s", "install", "--kubeconfig", kubeconfig, "--namespace", "team-a")
        assert first.returncode == 0, first.stderr
        assert "customresourcedefinition/taskactions.flyte.org created" in first.stdout
        assert "role/taskdeck-engine in team-a created" in first.stdout
        again = taskdeck("k8s", "install", "--kubeconfig", kubeconfig, "--namespace", "team-a")
        assert again.returncode == 0 and "role/taskdeck-engine in team-a configured" in again.stdout, again.stderr
        rbac = client.RbacAuthorizationV1Api(client.ApiClient(client.Configuration(host=emulator.url)))
        assert rbac.read_namespaced_role("taskdeck-engine", "team-a").rules[0].resources == ["taskactions"]
        own = str(emulator.kubeconfig(tmp_path / "kubeconfig-b", namespace="team-b"))
        by_context = taskdeck("k8s", "install", "--kubeconfig", own)  # no --namespace: the context's, as the engine's
        assert by_context.returncode == 0 and "role/taskdeck-engine in team-b created" in by_context.stdout
        removed = taskdeck("k8s", "uninstall", "--kubeconfig", kubeconfig, "--namespace", "team-a")
        assert removed.returncode == 0 and "rolebinding/taskdeck-engine in team-a deleted" in removed.stdout
        assert rbac.list_namespaced_role("team-a").items == []
    refused = taskdeck("k8s", "install", "--dry-run", "--namespace", "Team_A")
    assert refused.returncode == 2 and "DNS label" in refused.stderr
    for image in ("", "two words", "-flag"):
        bad_image = taskdeck("k8s", "install", "--dry-run", "--in-cluster", f"--image={image}")
        assert bad_image.returncode == 2 and "not an image reference" in bad_image.stderr, bad_image.stderr
