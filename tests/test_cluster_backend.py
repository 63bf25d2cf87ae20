"""The plugin manager over a Kubernetes cluster (engine/plugins/cluster_backend.py), through the API server
emulator: a task's Pod created owned by its TaskAction, its status (written here as a kubelet would)
mapped through the Pod phase table, AlreadyExists as launched, a vanished Pod as Flyte treats it, the
API server's refusals as Flyte's launchResource branches on them, delete on finalize, and the cluster's
garbage collector removing the Pod with its TaskAction."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from kubernetes import client

from engine.phases import PluginPhase
from engine.plugins.cluster_backend import ClusterResourceBackend
from engine.plugins.core import PluginError
from engine.plugins.pod import PodPlugin
from engine.plugins.resource_manager import ResourcePluginManager
from engine.store.kubernetes import GROUP, PLURAL, VERSION, to_api
from helpers import make_task_action
from kube_apiserver import ApiServer, EmulatorThread
from test_dask import _tctx

NS = "flyte"


@pytest.fixture
def cluster():
    with EmulatorThread(ApiServer()) as emulator:
        api_client = client.ApiClient(client.Configuration(host=emulator.url))
        owner = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, to_api(make_task_action(run="rabc"), NS))
        yield emulator, api_client, owner


def pod_task(tmp_path, owner, launched_before=None):
    """The task's context; ``launched_before``: the context of the round that launched it, whose plugin state
    this round reads (as the reconciler hands it on)."""
    state = launched_before.plugin_state._new[1] if launched_before is not None else None
    tctx = _tctx(tmp_path, None, state=state)
    tctx.metadata = dataclasses.replace(tctx.metadata, owner_uid=owner["metadata"]["uid"])
    return tctx


def kubelet_reports(api_client, name: str, status: dict) -> None:
    client.CoreV1Api(api_client).patch_namespaced_pod_status(name, NS, {"status": status})


def terminated(name: str, code: int, reason: str = "") -> dict:
    return {"phase": "Running", "containerStatuses": [
        {"name": name, "ready": False, "restartCount": 0, "image": "x", "imageID": "",
         "state": {"terminated": {"exitCode": code, "reason": reason or ("Completed" if code == 0 else "Error")}}}]}


async def test_a_pod_is_created_owned_by_its_task_action_and_its_status_is_mapped(tmp_path, cluster):
    emulator, api_client, owner = cluster
    manager = ResourcePluginManager(PodPlugin(), ClusterResourceBackend(api_client))
    first = pod_task(tmp_path, owner)
    launched = (await manager.handle(first)).info
    assert launched.phase == PluginPhase.QUEUED and launched.reason == "task submitted to K8s"
    pods = client.CoreV1Api(api_client).list_namespaced_pod(NS, label_selector="flyte.org/managed=true").items
    [pod] = pods
    assert pod.metadata.name == "rabc-a0-0" and pod.metadata.owner_references[0].uid == owner["metadata"]["uid"]
    tctx = pod_task(tmp_path, owner, launched_before=first)
    pending = (await manager.handle(tctx)).info  # Pending, as the API server makes it, until a node reports
    assert pending.phase == PluginPhase.QUEUED and pending.reason == "Scheduling"
    kubelet_reports(api_client, "rabc-a0-0", terminated("rabc-a0-0", 137, "OOMKilled"))
    oom = (await manager.handle(tctx)).info
    assert oom.phase == PluginPhase.RETRYABLE_FAILURE and oom.err.code == "OOMKilled"
    kubelet_reports(api_client, "rabc-a0-0", terminated("rabc-a0-0", 0))
    assert (await manager.handle(tctx)).info.phase == PluginPhase.SUCCESS

    lost_state = pod_task(tmp_path, owner)  # launched before and the state write was lost: it is ours
    assert (await manager.handle(lost_state)).info.reason == "task submitted to K8s"

    await manager.finalize(tctx)
    assert client.CoreV1Api(api_client).list_namespaced_pod(NS).items == []
    vanished = (await manager.handle(tctx)).info
    assert vanished.phase == PluginPhase.RETRYABLE_FAILURE and vanished.err.code == "ResourceDeletedExternally"
    assert vanished.err.kind == "SYSTEM"
    await manager.finalize(tctx)  # already gone: fine


async def test_the_api_servers_refusals_are_flytes_launch_outcomes(tmp_path, cluster):
    emulator, api_client, owner = cluster
    manager = ResourcePluginManager(PodPlugin(), ClusterResourceBackend(api_client))
    emulator.server.fail_next("POST", "pods", 403)
    forbidden = (await manager.handle(pod_task(tmp_path, owner))).info
    assert forbidden.phase == PluginPhase.RETRYABLE_FAILURE and forbidden.err.code == "RuntimeFailure"
    emulator.server.fail_next("POST", "pods", 500)
    with pytest.raises(PluginError):  # a system failure, retried by the reconciler
        await manager.handle(pod_task(tmp_path, owner))
    bad = pod_task(tmp_path, owner)
    bad.metadata = dataclasses.replace(bad.metadata, labels={"flyte.org/x": "not a label value!"})
    invalid = (await manager.handle(bad)).info
    assert invalid.phase == PluginPhase.PERMANENT_FAILURE and invalid.err.code == "InvalidResource"


async def test_deleting_the_task_action_collects_its_pod(tmp_path, cluster):
    emulator, api_client, owner = cluster
    manager = ResourcePluginManager(PodPlugin(), ClusterResourceBackend(api_client))
    await manager.handle(pod_task(tmp_path, owner))
    core = client.CoreV1Api(api_client)
    assert len(core.list_namespaced_pod(NS).items) == 1
    await asyncio.to_thread(client.CustomObjectsApi(api_client).delete_namespaced_custom_object, GROUP, VERSION, NS,
                            PLURAL, owner["metadata"]["name"])
    assert core.list_namespaced_pod(NS).items == []  # the garbage collector follows ownerReferences


async def test_a_custom_objects_status_change_wakes_its_owner_at_once(tmp_path):
    """The watch covers the operators' kinds too: a DaskJob's new status wakes its TaskAction, as a Pod's
    does, instead of waiting for the periodic check; a kind the cluster does not serve is no error."""
    from kube_apiserver import core_kinds, taskaction_kind
    from operators import operator_kinds

    # RayJobs are not served here: their watch finds no such kind and waits
    kinds = [taskaction_kind(), *core_kinds(), *[k for k in operator_kinds() if k.plural != "rayjobs"]]
    with EmulatorThread(ApiServer(kinds=kinds)) as emulator:
        api_client = client.ApiClient(client.Configuration(host=emulator.url))
        owner = client.CustomObjectsApi(api_client).create_namespaced_custom_object(
            GROUP, VERSION, NS, PLURAL, to_api(make_task_action(run="rabc"), NS))
        backend = ClusterResourceBackend(api_client, namespace=NS)
        woken = asyncio.Queue()
        backend.watch_pods(woken.put_nowait)
        custom = client.CustomObjectsApi(api_client)
        job = custom.create_namespaced_custom_object("kubernetes.dask.org", "v1", NS, "daskjobs", {
            "apiVersion": "kubernetes.dask.org/v1", "kind": "DaskJob",
            "metadata": {"name": "rabc-a0-0", "labels": {"flyte.org/managed": "true"}, "ownerReferences": [{
                "apiVersion": "flyte.org/v1", "kind": "TaskAction", "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"]}]},
            "spec": {}})
        assert await asyncio.wait_for(woken.get(), 10) == owner["metadata"]["name"]  # ADDED
        custom.patch_namespaced_custom_object_status("kubernetes.dask.org", "v1", NS, "daskjobs",
                                                     job["metadata"]["name"], {"status": {"jobStatus": "Running"}})
        assert await asyncio.wait_for(woken.get(), 10) == owner["metadata"]["name"]  # MODIFIED
        await backend.close()
        api_client.close()
