"""The Pod plugin: the Pod Flyte builds for a container task (checked against the Kubernetes schema) and
``DemystifyPodStatus`` row by row, on constructed Pod statuses."""

from __future__ import annotations

import datetime as dt

import pytest

from engine.phases import PluginPhase
from engine.plugins.pod import PodPlugin
from engine.plugins.resource_manager import ResourcePluginManager
from test_dask import _tctx

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
PRIMARY = "rabc-a0-0"


def _pod(phase: str, *, statuses=None, init=None, conditions=None, reason=None, message=None, primary=True,
         created=None) -> dict:
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": PRIMARY, "annotations": {"primary_container_name": PRIMARY} if primary else {},
                        "creationTimestamp": created},
           "spec": {"containers": [{"name": PRIMARY, "image": "img"}]},
           "status": {"phase": phase, "containerStatuses": statuses or [], "initContainerStatuses": init or [],
                      "conditions": conditions or []}}
    if reason:
        pod["status"]["reason"] = reason
    if message:
        pod["status"]["message"] = message
    return pod


def _terminated(code: int, reason: str = "", name: str = PRIMARY, last: bool = False) -> dict:
    state = {"terminated": {"exitCode": code, "reason": reason}}
    return {"name": name, "ready": False, **({"lastState": state, "state": {}} if last else {"state": state})}


def _waiting(reason: str, message: str = "", name: str = PRIMARY) -> dict:
    return {"name": name, "ready": False, "state": {"waiting": {"reason": reason, "message": message}}}


def _not_ready(minutes_ago: float) -> list[dict]:
    at = (NOW - dt.timedelta(minutes=minutes_ago)).isoformat().replace("+00:00", "Z")
    return [{"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": at}]


ROWS = [
    # (name, pod, plugin phase, error code, error kind)
    ("succeeded", _pod("Succeeded", statuses=[_terminated(0, "Completed")]), PluginPhase.SUCCESS, None, None),
    ("succeeded but OOMKilled", _pod("Succeeded", statuses=[_terminated(0, "OOMKilled")]),
     PluginPhase.RETRYABLE_FAILURE, "OOMKilled", "USER"),
    ("failed: OOMKilled", _pod("Failed", statuses=[_terminated(137, "OOMKilled")]),
     PluginPhase.RETRYABLE_FAILURE, "OOMKilled", "USER"),
    ("failed: primary SIGKILLed (137)", _pod("Failed", statuses=[_terminated(137, "Error")], reason="Error"),
     PluginPhase.RETRYABLE_FAILURE, "Interrupted", "SYSTEM"),
    ("failed: sidecar 247, last state", _pod("Failed", statuses=[_terminated(247, "Error", name="side", last=True)],
                                               reason="Error"),
     PluginPhase.RETRYABLE_FAILURE, "Interrupted", "USER"),
    ("failed: node shutdown", _pod("Failed", reason="NodeShutdown", message="node went away"),
     PluginPhase.RETRYABLE_FAILURE, "Interrupted", "SYSTEM"),
    ("failed: no reason at all", _pod("Failed"), PluginPhase.RETRYABLE_FAILURE, "Interrupted", "SYSTEM"),
    ("failed: user exit 1", _pod("Failed", statuses=[_terminated(1, "Error")], reason="Error"),
     PluginPhase.RETRYABLE_FAILURE, "Error", "USER"),
    ("pending: not scheduled", _pod("Pending", conditions=[{"type": "PodScheduled", "status": "False",
                                                            "reason": "Unschedulable", "message": "0/3 nodes"}]),
     PluginPhase.QUEUED, None, None),
    ("pending: ErrImagePull", _pod("Pending", conditions=_not_ready(10), statuses=[_waiting("ErrImagePull")]),
     PluginPhase.INITIALIZING, None, None),
    ("pending: ContainerCreating", _pod("Pending", conditions=_not_ready(10),
                                        statuses=[_waiting("ContainerCreating")]), PluginPhase.INITIALIZING, None, None),
    ("pending: ImagePullBackOff in grace", _pod("Pending", conditions=_not_ready(1),
                                                statuses=[_waiting("ImagePullBackOff", "back-off")]),
     PluginPhase.INITIALIZING, None, None),
    ("pending: ImagePullBackOff past grace", _pod("Pending", conditions=_not_ready(4),
                                                  statuses=[_waiting("ImagePullBackOff", "back-off")]),
     PluginPhase.RETRYABLE_FAILURE, "ContainersNotReady|ImagePullBackOff", "USER"),
    ("pending: ImagePullBackOff 429", _pod("Pending", conditions=_not_ready(4),
                                           statuses=[_waiting("ImagePullBackOff", "429 Too Many Requests")]),
     PluginPhase.RETRYABLE_FAILURE, "ContainersNotReady|ImagePullBackOff", "SYSTEM"),
    ("pending: CreateContainerConfigError", _pod("Pending", conditions=_not_ready(0),
                                                 statuses=[_waiting("CreateContainerConfigError", "no secret")]),
     PluginPhase.PERMANENT_FAILURE, "ContainersNotReady|CreateContainerConfigError", "USER"),
    ("pending: CreateContainerError in grace", _pod("Pending", conditions=_not_ready(1),
                                                    statuses=[_waiting("CreateContainerError")]),
     PluginPhase.INITIALIZING, None, None),
    ("pending: CreateContainerError past grace", _pod("Pending", conditions=_not_ready(5),
                                                      statuses=[_waiting("CreateContainerError", "bad")]),
     PluginPhase.PERMANENT_FAILURE, "ContainersNotReady|CreateContainerError", "USER"),
    ("pending: InvalidImageName", _pod("Pending", conditions=_not_ready(0), statuses=[_waiting("InvalidImageName")]),
     PluginPhase.PERMANENT_FAILURE, "ContainersNotReady|InvalidImageName", "USER"),
    ("pending: CrashLoopBackOff", _pod("Pending", conditions=_not_ready(0), statuses=[_waiting("CrashLoopBackOff")]),
     PluginPhase.RETRYABLE_FAILURE, "ContainersNotReady|CrashLoopBackOff", "SYSTEM"),
    ("pending: nothing known", _pod("Pending"), PluginPhase.QUEUED, None, None),
    ("unschedulable", _pod("Unschedulable"), PluginPhase.QUEUED, None, None),
    ("unknown", _pod("Unknown"), PluginPhase.UNDEFINED, None, None),
    ("running: primary running", _pod("Running", statuses=[{"name": PRIMARY, "state": {"running": {}}}]),
     PluginPhase.RUNNING, None, None),
    ("running: primary OOMKilled", _pod("Running", statuses=[_terminated(137, "OOMKilled")]),
     PluginPhase.RETRYABLE_FAILURE, "OOMKilled", "USER"),
    ("running: primary exit 137", _pod("Running", statuses=[_terminated(137, "Error")]),
     PluginPhase.RETRYABLE_FAILURE, "Error", "SYSTEM"),
    ("running: primary exit 2", _pod("Running", statuses=[_terminated(2, "Error")]),
     PluginPhase.RETRYABLE_FAILURE, "Error", "USER"),
    ("running: primary exit 0", _pod("Running", statuses=[_terminated(0, "Completed")]), PluginPhase.SUCCESS, None,
     None),
    ("running: primary not started yet", _pod("Running", statuses=[]), PluginPhase.RUNNING, None, None),
    ("running: no primary annotation, all done", _pod("Running", statuses=[_terminated(0, name="a")], primary=False),
     PluginPhase.SUCCESS, None, None),
    ("running: no primary annotation, one running", _pod("Running", primary=False, statuses=[
        _terminated(0, name="a"), {"name": "b", "state": {"running": {}}}]), PluginPhase.RUNNING, None, None),
]


@pytest.mark.parametrize("pod, phase, code, kind", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_pod_phase_table_row_by_row(tmp_path, pod, phase, code, kind):
    info = PodPlugin(now=lambda: NOW).get_task_phase(_tctx(tmp_path, None), pod)
    assert info.phase == phase, info
    assert (info.err.code if info.err else None) == code
    assert (info.err.kind if info.err else None) == kind


def test_a_primary_container_missing_from_the_pod_is_a_permanent_failure(tmp_path):
    pod = _pod("Running", statuses=[{"name": "other", "state": {"running": {}}}])
    pod["spec"]["containers"] = [{"name": "other", "image": "img"}]
    info = PodPlugin().get_task_phase(_tctx(tmp_path, None), pod)
    assert info.phase == PluginPhase.PERMANENT_FAILURE and info.err.code == "PrimaryContainerNotFound"


def test_a_pod_pending_past_the_timeout_is_a_system_failure(tmp_path):
    from engine.plugins.pod import PodConfig

    created = (NOW - dt.timedelta(minutes=20)).isoformat().replace("+00:00", "Z")
    plugin = PodPlugin(PodConfig(pod_pending_timeout=dt.timedelta(minutes=10)), now=lambda: NOW)
    info = plugin.get_task_phase(_tctx(tmp_path, None), _pod("Pending", created=created))
    assert info.phase == PluginPhase.RETRYABLE_FAILURE and info.err.code == "PodPendingTimeout"


@pytest.mark.parametrize("resources", [None, {"CPU": "2", "MEMORY": "4Gi"}, {"GPU": "1", "CPU": "500m"}])
def test_the_pod_is_built_as_flyte_builds_it_and_validates_against_kubernetes(tmp_path, resources):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    tctx = _tctx(tmp_path, None, resources)
    pod = ResourcePluginManager(PodPlugin(), backend=None).with_metadata(PodPlugin().build_resource(tctx), tctx)
    kubernetes_validate.validate(pod, "1.32", strict=True)  # raises on any schema error
    container = pod["spec"]["containers"][0]
    assert container["name"] == PRIMARY and pod["spec"]["restartPolicy"] == "Never"
    assert pod["metadata"]["annotations"]["primary_container_name"] == PRIMARY
    assert container["resources"]["requests"]["cpu"] == ((resources or {}).get("CPU") or "1000m")
    assert container["args"][2] == str(tmp_path / "inputs.pb")
    broken = dict(pod, spec={**pod["spec"], "restartPolicyy": "Never"})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.32", strict=True)
