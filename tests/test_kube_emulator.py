"""Conformance of the Kubernetes API server emulator (tests/kube_apiserver.py): each semantic it documents,
checked with the official `kubernetes` client over real HTTP, and with kubectl (client-go, a stricter
client) where it is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from kube_apiserver import ApiServer, EmulatorThread

G, V, P = "flyte.org", "v1", "taskactions"
NS = "flyte"


@pytest.fixture
def api():
    with EmulatorThread(ApiServer(history=50)) as emulator:
        config = client.Configuration(host=emulator.url)
        with client.ApiClient(config) as api_client:
            yield emulator, client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)


def task_action(name: str, labels: dict | None = None, **extra) -> dict:
    return {"apiVersion": f"{G}/{V}", "kind": "TaskAction",
            "metadata": {"name": name, "labels": labels or {}, **extra},
            "spec": {"runName": "r1", "project": "p", "domain": "d", "actionName": name.split("-")[-1]}}


def status_of(exc: ApiException) -> dict:
    return json.loads(exc.body)


def test_create_sets_server_fields_and_refuses_a_duplicate(api):
    _, custom, _ = api
    created = custom.create_namespaced_custom_object(G, V, NS, P, {**task_action("r1-a0"), "status": {"attempts": 3}})
    meta = created["metadata"]
    assert meta["namespace"] == NS and meta["uid"] and meta["generation"] == 1 and meta["creationTimestamp"]
    assert int(meta["resourceVersion"]) > 0 and "status" not in created  # status only through /status
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a0"))
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "AlreadyExists"
    generated = custom.create_namespaced_custom_object(G, V, NS, P, {**task_action("r1-x"), "metadata": {
        "generateName": "r1-x-"}})
    assert generated["metadata"]["name"].startswith("r1-x-") and len(generated["metadata"]["name"]) > 5


def test_the_crd_schema_refuses_invalid_objects_and_prunes_unknown_fields(api):
    _, custom, _ = api
    bad = task_action("r1-a1")
    bad["spec"]["runName"] = "x" * 31  # maxLength 30
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(G, V, NS, P, bad)
    assert exc.value.status == 422 and "runName" in status_of(exc.value)["message"]
    missing = task_action("r1-a2")
    del missing["spec"]["project"]
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(G, V, NS, P, missing)
    assert exc.value.status == 422 and "project" in status_of(exc.value)["message"]
    extra = task_action("r1-a3")
    extra["spec"]["noSuchField"] = 1
    assert "noSuchField" not in custom.create_namespaced_custom_object(G, V, NS, P, extra)["spec"]
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(G, V, NS, P, task_action("R1-Upper"))
    assert exc.value.status == 422


def test_stale_writes_conflict_and_no_op_writes_change_nothing(api):
    _, custom, _ = api
    created = custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a0"))
    updated = custom.replace_namespaced_custom_object(G, V, NS, P, "r1-a0", {
        **created, "spec": {**created["spec"], "shortName": "one"}})
    assert updated["metadata"]["generation"] == 2
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    with pytest.raises(ApiException) as exc:
        custom.replace_namespaced_custom_object(G, V, NS, P, "r1-a0", created)  # the old resourceVersion
    assert exc.value.status == 409 and status_of(exc.value)["reason"] == "Conflict"
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object(G, V, NS, P, "r1-a0", {"metadata": {
            "resourceVersion": created["metadata"]["resourceVersion"], "labels": {"x": "1"}}})
    assert exc.value.status == 409
    again = custom.replace_namespaced_custom_object(G, V, NS, P, "r1-a0", updated)
    assert again["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]
    patched = custom.patch_namespaced_custom_object(G, V, NS, P, "r1-a0", {"metadata": {"labels": {"x": "1"}}})
    assert patched["metadata"]["labels"] == {"x": "1"} and patched["metadata"]["generation"] == 2


def test_the_status_subresource_is_isolated(api):
    _, custom, _ = api
    created = custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a0"))
    with_status = custom.replace_namespaced_custom_object_status(G, V, NS, P, "r1-a0", {
        **created, "spec": {**created["spec"], "shortName": "ignored"}, "status": {"attempts": 2}})
    assert with_status["status"] == {"attempts": 2} and "shortName" not in with_status["spec"]
    spec_write = custom.replace_namespaced_custom_object(G, V, NS, P, "r1-a0", {
        **with_status, "status": {"attempts": 9}})
    assert spec_write["status"] == {"attempts": 2}
    merged = custom.patch_namespaced_custom_object_status(G, V, NS, P, "r1-a0", {"status": {"stateJson": "{}"}})
    assert merged["status"] == {"attempts": 2, "stateJson": "{}"}


def test_label_and_field_selectors(api):
    _, custom, _ = api
    custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a0", {"run": "r1", "root": "true"}))
    custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a1", {"run": "r1"}))
    custom.create_namespaced_custom_object(G, V, NS, P, task_action("r2-a0", {"run": "r2"}))
    custom.create_namespaced_custom_object(G, V, "other", P, task_action("r3-a0", {"run": "r3"}))

    def names(**kwargs):
        listed = custom.list_namespaced_custom_object(G, V, NS, P, **kwargs)
        assert listed["kind"] == "TaskActionList" and listed["metadata"]["resourceVersion"]
        return [o["metadata"]["name"] for o in listed["items"]]

    assert names() == ["r1-a0", "r1-a1", "r2-a0"]
    assert names(label_selector="run=r1") == ["r1-a0", "r1-a1"]
    assert names(label_selector="run==r1,!root") == ["r1-a1"]
    assert names(label_selector="run!=r1") == ["r2-a0"]
    assert names(label_selector="run in (r2, r3)") == ["r2-a0"]
    assert names(label_selector="run notin (r1),root") == []
    assert names(label_selector="root") == ["r1-a0"]
    assert names(field_selector="metadata.name=r2-a0") == ["r2-a0"]
    everywhere = custom.list_cluster_custom_object(G, V, P)
    assert len(everywhere["items"]) == 4
    with pytest.raises(ApiException) as exc:
        names(label_selector="run=(")
    assert exc.value.status == 400


def test_watch_resumes_from_a_resource_version_and_expires_old_ones(api):
    emulator, custom, _ = api
    first = custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a0"))
    since = first["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(G, V, NS, P, "r1-a0", {"metadata": {"labels": {"x": "1"}}})
    custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a1"))
    events = [(e["type"], e["object"]["metadata"]["name"]) for e in watch.Watch().stream(
        custom.list_namespaced_custom_object, G, V, NS, P, resource_version=since, timeout_seconds=1)]
    assert events == [("MODIFIED", "r1-a0"), ("ADDED", "r1-a1")]
    from_now = [(e["type"], e["object"]["metadata"]["name"]) for e in watch.Watch().stream(
        custom.list_namespaced_custom_object, G, V, NS, P, timeout_seconds=1)]
    assert from_now == [("ADDED", "r1-a0"), ("ADDED", "r1-a1")]  # "" → the current state first
    for i in range(60):  # more than the history of 50
        custom.patch_namespaced_custom_object(G, V, NS, P, "r1-a1", {"metadata": {"labels": {"n": str(i)}}})
    with pytest.raises(ApiException) as exc:
        list(watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, P, resource_version=since,
                                  timeout_seconds=1))
    assert exc.value.status == 410


def test_a_live_watch_sees_changes_and_selector_transitions(api):
    _, custom, _ = api
    custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a0", {"run": "r1"}))
    seen: list[tuple[str, str]] = []
    started = threading.Event()  # the watch is live once its first event (the existing object) arrived

    def follow():
        stream = watch.Watch().stream(custom.list_namespaced_custom_object, G, V, NS, P, label_selector="run=r1",
                                      timeout_seconds=3)
        for event in stream:
            seen.append((event["type"], event["object"]["metadata"]["name"]))
            started.set()

    thread = threading.Thread(target=follow)
    thread.start()
    assert started.wait(5)
    custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a1", {"run": "r1"}))
    custom.create_namespaced_custom_object(G, V, NS, P, task_action("r2-a0", {"run": "r2"}))
    custom.patch_namespaced_custom_object(G, V, NS, P, "r1-a1", {"metadata": {"labels": {"run": "moved"}}})
    custom.delete_namespaced_custom_object(G, V, NS, P, "r1-a0")
    thread.join(10)
    assert seen == [("ADDED", "r1-a0"), ("ADDED", "r1-a1"), ("DELETED", "r1-a1"), ("DELETED", "r1-a0")]


def test_finalizers_hold_a_deleted_object_until_released(api):
    _, custom, _ = api
    custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a0", finalizers=["flyte.org/finalizer"]))
    deleting = custom.delete_namespaced_custom_object(G, V, NS, P, "r1-a0")
    assert deleting["metadata"]["deletionTimestamp"]
    held = custom.get_namespaced_custom_object(G, V, NS, P, "r1-a0")
    assert held["metadata"]["deletionTimestamp"] == deleting["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object(G, V, NS, P, "r1-a0", {"metadata": {"finalizers": [
            "flyte.org/finalizer", "another"]}})
    assert exc.value.status == 422
    custom.patch_namespaced_custom_object(G, V, NS, P, "r1-a0", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as exc:
        custom.get_namespaced_custom_object(G, V, NS, P, "r1-a0")
    assert exc.value.status == 404 and status_of(exc.value)["reason"] == "NotFound"


def test_delete_preconditions_and_owner_garbage_collection(api):
    _, custom, core = api
    owner = custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a0"))
    reference = {"apiVersion": f"{G}/{V}", "kind": "TaskAction", "name": "r1-a0", "uid": owner["metadata"]["uid"],
                 "controller": True}
    custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a1", ownerReferences=[reference]))
    core.create_namespaced_pod(NS, client.V1Pod(metadata=client.V1ObjectMeta(name="r1-a0-0", owner_references=[
        client.V1OwnerReference(api_version=f"{G}/{V}", kind="TaskAction", name="r1-a0",
                                uid=owner["metadata"]["uid"])]),
        spec=client.V1PodSpec(containers=[client.V1Container(name="main", image="x")])))
    with pytest.raises(ApiException) as exc:
        custom.delete_namespaced_custom_object(G, V, NS, P, "r1-a0", body={"preconditions": {"uid": "not-it"}})
    assert exc.value.status == 409
    custom.delete_namespaced_custom_object(G, V, NS, P, "r1-a0")
    assert custom.list_namespaced_custom_object(G, V, NS, P)["items"] == []
    assert core.list_namespaced_pod(NS).items == []


def test_pod_status_writes_and_unsupported_patch_types(api):
    emulator, custom, core = api
    core.create_namespaced_pod(NS, {"metadata": {"name": "p-0"}, "spec": {"containers": [
        {"name": "main", "image": "x"}]}, "status": {"phase": "Running"}})
    assert core.read_namespaced_pod("p-0", NS).status.phase == "Pending"  # status only through /status; a new Pod
    # is Pending, as the API server's pod strategy makes it
    core.patch_namespaced_pod_status("p-0", NS, {"status": {"phase": "Succeeded"}})  # strategic merge: core kind
    assert core.read_namespaced_pod("p-0", NS).status.phase == "Succeeded"
    assert [p.metadata.name for p in core.list_namespaced_pod(NS, field_selector="status.phase=Succeeded").items] \
        == ["p-0"]
    custom.create_namespaced_custom_object(G, V, NS, P, task_action("r1-a0"))
    request = urllib.request.Request(f"{emulator.url}/apis/{G}/{V}/namespaces/{NS}/{P}/r1-a0", method="PATCH",
                                     headers={"Content-Type": "application/json-patch+json"},
                                     data=json.dumps([{"op": "add", "path": "/metadata/labels", "value": {}}]).encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 415  # only merge patches on custom resources, as the API server
    emulator.server.fail_next("GET", P, 500)
    with pytest.raises(ApiException) as exc:
        custom.get_namespaced_custom_object(G, V, NS, P, "r1-a0")
    assert exc.value.status == 500
    assert custom.get_namespaced_custom_object(G, V, NS, P, "r1-a0")["metadata"]["name"] == "r1-a0"


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (CI installs Debian's kubernetes-client)")
def test_kubectl_creates_lists_and_watches(api, tmp_path):
    emulator, custom, _ = api
    config = emulator.kubeconfig(tmp_path / "kubeconfig", NS)

    def kubectl(*args, stdin: str | None = None):
        return subprocess.run([KUBECTL, "--kubeconfig", str(config), *args], input=stdin, capture_output=True,
                              text=True, timeout=60)

    made = kubectl("create", "--validate=false", "-f", "-", stdin=json.dumps(task_action("r1-a0", {"run": "r1"})))
    assert made.returncode == 0, made.stderr
    listed = kubectl("get", "taskactions.flyte.org", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert [o["metadata"]["name"] for o in json.loads(listed.stdout)["items"]] == ["r1-a0"]
    one = kubectl("get", "taskactions", "-l", "run=r1", "-o", "name")
    assert one.returncode == 0 and "r1-a0" in one.stdout, one.stderr
    custom.patch_namespaced_custom_object(G, V, NS, P, "r1-a0", {"metadata": {"labels": {"x": "1"}}})
    watched = kubectl("get", "taskactions.flyte.org", "--watch", "--request-timeout=2s", "-o", "name")
    assert "r1-a0" in watched.stdout, watched.stderr
    missing = kubectl("get", "taskaction", "nope")
    assert missing.returncode != 0 and "not found" in missing.stderr
