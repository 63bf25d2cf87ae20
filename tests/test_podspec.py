"""ToK8sPodSpec as Flyte builds it: pod templates (volumes, affinity, tolerations, node selectors, side
containers), secrets as references, the service account, interruptible handling per plugin (drivers,
schedulers, job runners and submitters never interruptible), the cluster configuration file, and the
related-pod fail-fast of Spark, Ray and Dask. Every object is checked against its real schema."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest
from flyteidl2.core import security_pb2, tasks_pb2
from flyteidl2.plugins import ray_pb2, spark_pb2
from google.protobuf import struct_pb2, text_format
from google.protobuf.json_format import MessageToDict

import crd_schemas
from engine.phases import ActionPhase, PluginPhase
from engine.plugins.core import PluginStateManager
from engine.plugins.dask import DaskPlugin
from engine.plugins.k8s_config import K8sConfig, K8sConfigError
from engine.plugins.pod import PodPlugin
from engine.plugins.podspec import merge_overlay_pod_spec
from engine.plugins.ray import RayPlugin
from engine.plugins.resource_manager import ResourcePluginManager
from engine.plugins.resources import NotFoundError, ResourceBackend
from engine.plugins.spark import SparkPlugin
from engine.plugins.task_target import primary_container
from helpers import run_sdk_task, task_file
from test_dask import _tctx

kubernetes_validate = pytest.importorskip("kubernetes_validate")
pytest.importorskip("jsonschema")

SPOT = {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
ON_SPOT = {"key": "node-type", "operator": "In", "values": ["spot"]}
NOT_ON_SPOT = {"key": "node-type", "operator": "NotIn", "values": ["spot"]}
EVERYWHERE = {"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}
CLUSTER = K8sConfig.from_mapping({
    "plugins": {"k8s": {"interruptible-tolerations": [SPOT], "default-tolerations": [EVERYWHERE],
                        "interruptible-node-selector-requirement": ON_SPOT,
                        "non-interruptible-node-selector-requirement": NOT_ON_SPOT,
                        "default-node-selector": {"pool": "flyte"}, "default-labels": {"team": "ml"},
                        "resource-tolerations": {"nvidia.com/gpu": [{"key": "gpu", "operator": "Exists"}]}},
                "spark": {"spark-history-server-url": "https://history.example"},
                "ray": {"logsSidecar": {"name": "logs", "image": "fluent/fluent-bit:3"}},
                "dask": {"logs": {"templates": [{"displayName": "Dask dashboard", "linkType": "dashboard",
                                                 "templateUris": ["https://dash.example/{{ .namespace }}/"
                                                                  "{{ .generatedName }}/status"]}]}}},
    "executor": {"defaultK8sServiceAccount": "flyte-tasks"},
})

POD_TEMPLATE = {
    "containers": [{"name": "primary", "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
                   {"name": "proxy", "image": "envoyproxy/envoy:v1.31", "args": ["--run", "{{.runName}}"],
                    "ports": [{"containerPort": 9901.0}]}],
    "volumes": [{"name": "scratch", "emptyDir": {}}],
    "tolerations": [{"key": "own", "operator": "Exists"}],
    "nodeSelector": {"zone": "a"},
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}},
}


def _pod_task(tmp_path, *, interruptible=False, secrets=(), account="", task_type="python", custom=None):
    """A tctx whose template is what the SDK serializes for ``pod_template=PodTemplate(...)``."""
    tctx = _tctx(tmp_path, custom)
    template = tasks_pb2.TaskTemplate()
    template.ParseFromString(tctx.task_template_bytes)
    container = template.container
    template.type = task_type
    template.id.name, template.id.project, template.id.domain, template.id.version = "pkg.train", "p", "d", "v1"
    spec = json.loads(json.dumps(POD_TEMPLATE))
    spec["containers"][0].update(image=container.image, args=list(container.args),
                                 resources={"limits": {"cpu": "2"}, "requests": {"cpu": "2"}})
    template.ClearField("container")
    template.k8s_pod.pod_spec.CopyFrom(struct_pb2.Struct())
    template.k8s_pod.pod_spec.update(spec)
    template.k8s_pod.metadata.labels["from-template"] = "yes"
    template.config["primary_container_name"] = "primary"
    for secret in secrets:
        template.security_context.secrets.append(secret)
    if account:
        template.security_context.run_as.k8s_service_account = account
    tctx.task_template_bytes = template.SerializeToString()
    tctx._template = None
    tctx.metadata = dataclasses.replace(tctx.metadata, interruptible=interruptible)
    return tctx


def _render(plugin, tctx, config=CLUSTER):
    return ResourcePluginManager(plugin, backend=None, k8s=config).with_metadata(plugin.build_resource(tctx), tctx)


def _required_terms(spec):
    return spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]


def _flyte_base32_decode(text: str) -> str:
    standard = text.upper().translate(str.maketrans("123456", "234567"))
    return base64.b32decode(standard + "=" * (-len(standard) % 8)).decode()


@pytest.mark.parametrize("interruptible", [False, True], ids=["on-demand", "interruptible"])
def test_a_pod_template_task_becomes_its_pod_with_flytes_scheduling_rules(tmp_path, interruptible):
    pod = _render(PodPlugin(k8s=CLUSTER), _pod_task(tmp_path, interruptible=interruptible))
    kubernetes_validate.validate(pod, "1.32", strict=True)
    spec = pod["spec"]
    primary, proxy = spec["containers"]
    assert primary["name"] == "primary" and pod["metadata"]["annotations"]["primary_container_name"] == "primary"
    assert primary["args"][2] == str(tmp_path / "inputs.pb")  # template variables filled in every container
    assert proxy["args"] == ["--run", "rabc"] and proxy["ports"] == [{"containerPort": 9901}]
    assert any(e["name"] == "ACTION_NAME" for e in proxy["env"])  # Flyte's env in each container
    assert spec["volumes"] == POD_TEMPLATE["volumes"] and primary["volumeMounts"][0]["mountPath"] == "/scratch"
    assert spec["enableServiceLinks"] is False and spec["serviceAccountName"] == "flyte-tasks"
    assert spec["nodeSelector"] == {"pool": "flyte", "zone": "a"}
    assert pod["metadata"]["labels"]["from-template"] == "yes" and pod["metadata"]["labels"]["team"] == "ml"
    tolerations = spec["tolerations"]
    # per requested resource, interruptible, default, then the pod's own
    assert tolerations == ([SPOT] if interruptible else []) + [EVERYWHERE, {"key": "own", "operator": "Exists"}]
    wanted = ON_SPOT if interruptible else NOT_ON_SPOT
    terms = _required_terms(spec)
    assert len(terms) == 2 and all(wanted in t["matchExpressions"] for t in terms)  # AND-ed into every term
    assert not any((NOT_ON_SPOT if interruptible else ON_SPOT) in t["matchExpressions"] for t in terms)


def test_without_cluster_configuration_nothing_is_added(tmp_path):
    pod = _render(PodPlugin(), _pod_task(tmp_path, interruptible=True), K8sConfig())
    kubernetes_validate.validate(pod, "1.32", strict=True)
    assert pod["spec"]["tolerations"] == POD_TEMPLATE["tolerations"]
    assert pod["spec"]["affinity"] == POD_TEMPLATE["affinity"] and "serviceAccountName" not in pod["spec"]


def test_secrets_reach_the_pod_as_references_for_flytes_webhook(tmp_path):
    secrets = [security_pb2.Secret(group="aws", key="token", mount_requirement=security_pb2.Secret.ENV_VAR),
               security_pb2.Secret(key="db-password", env_var="DB_PASSWORD")]
    pod = _render(PodPlugin(k8s=CLUSTER), _pod_task(tmp_path, secrets=secrets, account="trainer"))
    kubernetes_validate.validate(pod, "1.32", strict=True)
    assert pod["metadata"]["labels"]["inject-flyte-secrets"] == "true"
    assert pod["spec"]["serviceAccountName"] == "trainer"  # the task's own account wins over the default
    annotations = pod["metadata"]["annotations"]
    decoded = [text_format.Parse(_flyte_base32_decode(annotations[f"flyte.secrets/s{i}"]), security_pb2.Secret())
               for i in range(2)]
    assert decoded == secrets
    assert "flyte.secrets/s2" not in annotations
    labels = pod["metadata"]["labels"]
    assert (labels["organization"], labels["project"], labels["task-name"]) == ("flyte", "p", "pkg.train")


def test_each_plugin_keeps_drivers_schedulers_and_submitters_off_interruptible_nodes(tmp_path):
    spark = _render(SparkPlugin(CLUSTER), _pod_task(tmp_path, interruptible=True, task_type="spark", custom=MessageToDict(
        spark_pb2.SparkJob(mainApplicationFile="local:///code/x.py"))))
    assert crd_schemas.errors("SparkApplication", spark) == []
    driver, executor = spark["spec"]["driver"], spark["spec"]["executor"]
    assert SPOT not in driver["tolerations"] and SPOT in executor["tolerations"]
    assert all(NOT_ON_SPOT in t["matchExpressions"] for t in _required_terms(driver))
    assert all(ON_SPOT in t["matchExpressions"] for t in _required_terms(executor))
    assert driver["nodeSelector"] == {"pool": "flyte", "zone": "a"} and driver["labels"]["team"] == "ml"

    dask = _render(DaskPlugin(CLUSTER), _pod_task(tmp_path, interruptible=True, task_type="dask",
                                                  custom={"workers": {"numberOfWorkers": 2}}))
    assert crd_schemas.errors("DaskJob", dask) == []
    cluster = dask["spec"]["cluster"]["spec"]
    for fixed in (cluster["scheduler"]["spec"], dask["spec"]["job"]["spec"]):
        assert SPOT not in fixed["tolerations"] and all(NOT_ON_SPOT in t["matchExpressions"]
                                                        for t in _required_terms(fixed))
    assert SPOT in cluster["worker"]["spec"]["tolerations"]
    assert [c["name"] for c in cluster["worker"]["spec"]["containers"]] == ["dask-worker", "proxy"]
    scheduler = cluster["scheduler"]["spec"]["containers"][0]
    assert scheduler["args"] == ["dask", "scheduler", "--dashboard-prefix", "/flyte/rabc-a0-0"]
    assert cluster["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == "rabc-a0-0"

    ray = _render(RayPlugin(CLUSTER), _pod_task(tmp_path, interruptible=True, task_type="ray", custom=MessageToDict(
        ray_pb2.RayJob(ray_cluster=ray_pb2.RayCluster(worker_group_spec=[ray_pb2.WorkerGroupSpec(
            group_name="w", replicas=1)])))))
    assert crd_schemas.errors("RayJob", ray) == []
    head = ray["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    worker = ray["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]
    submitter = ray["spec"]["submitterPodTemplate"]["spec"]
    assert SPOT in head["spec"]["tolerations"] and SPOT in worker["spec"]["tolerations"]  # follow the task
    assert submitter["tolerations"] == [EVERYWHERE] and "affinity" not in submitter  # defaults only
    assert head["metadata"]["labels"]["flyte.org/managed"] == "true"
    assert head["spec"]["serviceAccountName"] == "flyte-tasks"


def test_the_ray_logs_sidecar_reads_the_heads_ray_directory(tmp_path):
    job = _render(RayPlugin(CLUSTER), _pod_task(tmp_path, task_type="ray", custom={}))
    assert crd_schemas.errors("RayJob", job) == []
    spec = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head, sidecar = spec["containers"][0], spec["containers"][-1]
    assert head["name"] == "ray-head" and sidecar["name"] == "logs"
    assert {"name": "system-ray-state", "emptyDir": {}} in spec["volumes"]
    assert {"name": "system-ray-state", "mountPath": "/tmp/ray"} in head["volumeMounts"]
    assert {"name": "system-ray-state", "mountPath": "/tmp/ray", "readOnly": True} in sidecar["volumeMounts"]
    assert "args" not in head and "a0" in job["spec"]["entrypoint"]
    worker_env = {e["name"]: e for e in RayPlugin(CLUSTER).build_resource(_pod_task(tmp_path, task_type="ray", custom={
        "rayCluster": {"workerGroupSpec": [{"groupName": "w", "replicas": 1}]}}))["spec"]["rayClusterSpec"][
        "workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]}
    assert worker_env["MEMORY_LIMITS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.memory"


def test_a_ray_groups_own_pod_is_merged_without_escaping_the_platform_rules(tmp_path):
    overlay = struct_pb2.Struct()
    overlay.update({"containers": [{"name": "ray-head", "env": [{"name": "EXTRA", "value": "1"}]}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}]}}}})
    head_group = ray_pb2.HeadGroupSpec(k8s_pod=tasks_pb2.K8sPod(pod_spec=overlay))
    tctx = _tctx(tmp_path, MessageToDict(ray_pb2.RayJob(ray_cluster=ray_pb2.RayCluster(head_group_spec=head_group))))
    job = _render(RayPlugin(CLUSTER), tctx)
    assert crd_schemas.errors("RayJob", job) == []
    spec = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert any(e["name"] == "EXTRA" for e in spec["containers"][0]["env"])
    assert all(NOT_ON_SPOT in t["matchExpressions"] for t in _required_terms(spec))


def test_merging_an_overlay_pod_spec_follows_mergo():
    base = {"containers": [{"name": "a", "env": [{"name": "X"}], "image": "i"}], "nodeSelector": {"k": "v"}}
    merged = merge_overlay_pod_spec(base, {"containers": [{"name": "a", "image": "j", "env": [{"name": "Y"}]},
                                                          {"name": "unknown"}], "nodeSelector": {"k2": "v2"},
                                           "hostNetwork": False, "schedulerName": "s"})
    assert merged["containers"] == [{"name": "a", "env": [{"name": "X"}, {"name": "Y"}], "image": "j"}]
    assert merged["nodeSelector"] == {"k": "v", "k2": "v2"} and merged["schedulerName"] == "s"
    assert base["containers"][0]["image"] == "i"  # the base is not changed


def test_the_pod_templates_primary_container_is_what_runs_locally(tmp_path):
    container = primary_container(_pod_task(tmp_path).task_template)
    assert container.image.startswith("ghcr.io/") and list(container.args)[:2] == ["a0", "--inputs"]
    broken = _pod_task(tmp_path).task_template
    broken.config["primary_container_name"] = "missing"
    with pytest.raises(Exception, match="primary container \\[missing\\] not defined"):
        primary_container(broken)


class _Pods(ResourceBackend):
    """A backend holding one resource and the pods around it, as an API server would."""

    def __init__(self, resource, pods):
        self.resource, self.pods = resource, pods

    async def create(self, resource, tctx):
        return resource

    async def get(self, identity):
        if identity["kind"] != "Pod":
            return self.resource
        for pod in self.pods:
            if pod["metadata"]["name"] == identity["metadata"]["name"]:
                return pod
        raise NotFoundError(identity["metadata"]["name"])

    async def delete(self, identity):
        pass

    async def list(self, api_version, kind, namespace, labels):
        return [p for p in self.pods if labels.items() <= (p["metadata"].get("labels") or {}).items()]


def _failed_pod(name, container, labels=None):
    return {"metadata": {"name": name, "labels": labels or {}},
            "status": {"phase": "Failed", "reason": "", "containerStatuses": [
                {"name": container, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}


def _pending_pod(name, reason):
    return {"metadata": {"name": name}, "status": {"phase": "Pending", "conditions": [
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": "2020-01-01T00:00:00Z"}],
        "containerStatuses": [{"name": "x", "ready": False, "state": {"waiting": {"reason": reason, "message": "m"}}}]}}


@pytest.mark.parametrize("plugin, custom, resource, pods, code, phase", [
    (SparkPlugin(), MessageToDict(spark_pb2.SparkJob(mainApplicationFile="local:///x.py")),
     {"status": {"applicationState": {"state": "RUNNING"}, "driverInfo": {"podName": "drv"}}},
     [_failed_pod("drv", "spark-kubernetes-driver")], "OOMKilled", PluginPhase.RETRYABLE_FAILURE),
    (SparkPlugin(), MessageToDict(spark_pb2.SparkJob(mainApplicationFile="local:///x.py")),
     {"status": {"applicationState": {"state": "SUBMITTED"}, "driverInfo": {"podName": "drv"}}},
     [_pending_pod("drv", "InvalidImageName")], "ContainersNotReady|InvalidImageName", PluginPhase.PERMANENT_FAILURE),
    (SparkPlugin(), MessageToDict(spark_pb2.SparkJob(mainApplicationFile="local:///x.py")),
     {"status": {"applicationState": {"state": "RUNNING"}, "driverInfo": {"podName": "drv"}}},
     [], None, PluginPhase.RUNNING),  # no such pod (yet): the application's state decides
    (RayPlugin(), {}, {"status": {"jobDeploymentStatus": "Running", "rayClusterName": "rc"}},
     [_failed_pod("rc-head-x7k2p", "ray-head", {"ray.io/cluster": "rc", "ray.io/node-type": "head"})],
     "OOMKilled", PluginPhase.RETRYABLE_FAILURE),
    (DaskPlugin(), {}, {"status": {"jobStatus": "Running", "jobRunnerPodName": "runner"}},
     [_failed_pod("runner", "job-runner")], "OOMKilled", PluginPhase.RETRYABLE_FAILURE),
], ids=["spark-driver-oom", "spark-driver-bad-image", "spark-no-driver-yet", "ray-head-by-labels", "dask-runner"])
async def test_a_failing_related_pod_fails_the_task_fast(tmp_path, plugin, custom, resource, pods, code, phase):
    resource = {"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "rabc-a0-0", "namespace": "flyte"}, **resource}
    tctx = _tctx(tmp_path, custom, state=None)
    tctx.plugin_state = PluginStateManager(json.dumps({"phase": "Started"}).encode(), 1)
    manager = ResourcePluginManager(plugin, _Pods(resource, pods))
    info = await manager._check(tctx)
    assert info.phase == phase and (info.err.code if info.err else None) == code


def test_spark_history_link_once_the_application_ended(tmp_path):
    plugin = SparkPlugin(CLUSTER)
    for state, present in (("RUNNING", False), ("COMPLETED", True), ("FAILED", True)):
        info = plugin.get_task_phase(_tctx(tmp_path, None), {"metadata": {"name": "x"}, "status": {
            "applicationState": {"state": state}, "sparkApplicationId": "spark-123"}})
        links = info.info.custom["links"]
        assert (links.get("Spark History UI") == "https://history.example/history/spark-123") == present


@pytest.mark.parametrize("data, message", [
    ({"plugins": {"k8s": {"default-tolerations": {"key": "x"}}}}, "default-tolerations must be a list"),
    ({"plugins": {"k8s": {"interruptible-tolerance": []}}}, "unknown plugins.k8s keys: interruptible-tolerance"),
    ({"plugins": []}, "plugins must be a mapping"),
    ([], "must be a mapping"),
])
def test_a_bad_cluster_configuration_is_refused_with_its_key(data, message):
    with pytest.raises(K8sConfigError, match=message):
        K8sConfig.from_mapping(data)


async def test_the_engine_refuses_a_bad_configuration_file_in_one_line(tmp_path):
    import asyncio
    import sys

    bad = tmp_path / "k8s.yaml"
    bad.write_text("plugins:\n  k8s:\n    default-tolerations: 3\n")
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "console.cli", "--data-dir", str(tmp_path / "data"), "--headless",
        "--k8s-config", str(bad), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 2 and err.decode().strip().splitlines() == [
        "taskdeck: --k8s-config: default-tolerations must be a list"], err


POD_TEMPLATE_TASK = '''
import flyte
from kubernetes.client import V1Container, V1EmptyDirVolumeSource, V1PodSpec, V1Toleration, V1Volume, V1VolumeMount

template = flyte.PodTemplate(
    primary_container_name="primary",
    labels={"team": "ml"},
    pod_spec=V1PodSpec(
        containers=[V1Container(name="primary", volume_mounts=[V1VolumeMount(name="scratch", mount_path="/scratch")]),
                    V1Container(name="proxy", image="envoyproxy/envoy:v1.31")],
        volumes=[V1Volume(name="scratch", empty_dir=V1EmptyDirVolumeSource())],
        tolerations=[V1Toleration(key="gpu", operator="Exists")]),
)
env = flyte.TaskEnvironment(name="pods", pod_template=template, interruptible=True,
                            secrets=[flyte.Secret(key="token", group="aws")])


@env.task
async def shout(text: str) -> str:
    return text.upper()
'''


async def test_a_real_pod_template_task_runs_locally_and_renders_as_its_pod(tmp_path, monkeypatch):
    from engine.client.local import LocalClient
    from engine.engine import Engine, EngineConfig

    monkeypatch.setenv("AWS_TOKEN", "not-a-real-one")  # the secret it asks for, passed on by the engine

    config = tmp_path / "k8s.yaml"
    config.write_text("plugins:\n  k8s:\n    interruptible-tolerations:\n"
                      "      - {key: spot, operator: Equal, value: 'true', effect: NoSchedule}\n")
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", k8s_config=config, pass_env=("AWS_TOKEN",)))
    await engine.start()
    try:
        tasks = task_file(tmp_path, "pod_tasks.py", POD_TEMPLATE_TASK)
        result = await run_sdk_task(engine, tasks, "shout", text="hi")
        assert result.phase == ActionPhase.SUCCEEDED, result.error
        assert result.outputs == {"o0": "HI"}
        pod = await LocalClient(engine.services).render(result.run.run_name)
    finally:
        await engine.stop()
    kubernetes_validate.validate(pod, "1.32", strict=True)
    spec = pod["spec"]
    assert [c["name"] for c in spec["containers"]] == ["primary", "proxy"]
    assert spec["volumes"] == [{"name": "scratch", "emptyDir": {}}]
    assert {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"} in spec["tolerations"]
    assert {"key": "gpu", "operator": "Exists"} in spec["tolerations"]
    assert pod["metadata"]["labels"]["team"] == "ml" and pod["metadata"]["labels"]["inject-flyte-secrets"] == "true"
    assert "{{" not in " ".join(spec["containers"][0]["args"])
