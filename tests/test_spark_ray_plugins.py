"""The Spark and Ray plugins: the SparkApplication and RayJob Flyte builds (checked strictly against the
operators' CRD schemas) and their phase tables row by row."""

from __future__ import annotations

import pytest
from flyteidl2.plugins import ray_pb2, spark_pb2
from google.protobuf.json_format import MessageToDict

import crd_schemas
from engine.phases import PluginPhase
from engine.plugins.core import PluginError
from engine.plugins.ray import RayPlugin
from engine.plugins.resource_manager import ResourcePluginManager
from engine.plugins.spark import SparkPlugin
from test_dask import _tctx

pytest.importorskip("jsonschema")


def _built(tmp_path, plugin, custom, resources=None):
    tctx = _tctx(tmp_path, custom, resources)
    return ResourcePluginManager(plugin, backend=None).with_metadata(plugin.build_resource(tctx), tctx)


SPARK_JOBS = [
    spark_pb2.SparkJob(applicationType=spark_pb2.SparkApplication.PYTHON, mainApplicationFile="local:///code/x.py",
                       executorPath="/usr/bin/python3"),
    spark_pb2.SparkJob(applicationType=spark_pb2.SparkApplication.PYTHON, mainApplicationFile="local:///code/x.py",
                       sparkConf={"spark.driver.cores": "1", "spark.driver.memory": "1g", "spark.executor.cores": "2",
                                  "spark.executor.instances": "3", "spark.executor.memory": "2g"},
                       hadoopConf={"fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem"}),
    spark_pb2.SparkJob(applicationType=spark_pb2.SparkApplication.SCALA, mainClass="org.example.Main"),
]


@pytest.mark.parametrize("job", SPARK_JOBS, ids=["python", "sized", "scala"])
def test_the_sparkapplication_is_built_as_flyte_builds_it_and_validates_strictly(tmp_path, job):
    app = _built(tmp_path, SparkPlugin(), MessageToDict(job))
    assert crd_schemas.errors("SparkApplication", app) == []
    spec = app["spec"]
    assert spec["restartPolicy"] == {"type": "OnFailure", "onSubmissionFailureRetries": 14}
    assert spec["sparkConf"]["spark.kubernetes.executor.podNamePrefix"] == "rabc-a0-0"
    assert spec["driver"]["serviceAccount"] == "spark"
    assert any(e["name"] == "FLYTE_MAX_ATTEMPTS" for e in spec["driver"]["env"])
    if job.executorPath:
        assert spec["sparkConf"]["spark.pyspark.python"] == job.executorPath
    if "spark.executor.instances" in job.sparkConf:
        assert (spec["executor"]["instances"], spec["executor"]["cores"], spec["driver"]["memory"]) == (3, 2, "1g")
    if job.mainClass:
        assert spec["type"] == "Scala" and spec["mainClass"] == "org.example.Main"


def test_a_spark_job_without_an_application_is_a_bad_specification(tmp_path):
    with pytest.raises(PluginError) as caught:
        SparkPlugin().build_resource(_tctx(tmp_path, MessageToDict(spark_pb2.SparkJob())))
    assert caught.value.code == "BadTaskSpecification"


@pytest.mark.parametrize("state, phase, code", [
    ("", PluginPhase.QUEUED, None),
    ("SUBMITTED", PluginPhase.INITIALIZING, None),
    ("PENDING_SUBMISSION", PluginPhase.INITIALIZING, None),
    ("SUBMISSION_FAILED", PluginPhase.RETRYABLE_FAILURE, "DownstreamSystemError"),
    ("FAILED", PluginPhase.RETRYABLE_FAILURE, "DownstreamSystemError"),
    ("COMPLETED", PluginPhase.SUCCESS, None),
    ("RUNNING", PluginPhase.RUNNING, None),
    ("PENDING_RERUN", PluginPhase.RUNNING, None),
    ("SUCCEEDING", PluginPhase.RUNNING, None),
    ("UNKNOWN", PluginPhase.RUNNING, None),
])
def test_spark_phase_table_row_by_row(tmp_path, state, phase, code):
    resource = {"metadata": {"name": "x"}, "status": {"applicationState": {"state": state, "errorMessage": "boom"},
                                                      "driverInfo": {"webUIIngressAddress": "ui.example:4040"}}}
    info = SparkPlugin().get_task_phase(_tctx(tmp_path, None), resource)
    assert info.phase == phase and (info.err.code if info.err else None) == code
    if code:
        assert info.err.kind == "USER" and "boom" in info.err.message
    assert ("Spark Driver UI" in info.info.custom["links"]) == (state == "RUNNING")


def _ray_job(workers=(("gpu", 2, 1, 4),), params=None) -> ray_pb2.RayJob:
    cluster = ray_pb2.RayCluster(head_group_spec=ray_pb2.HeadGroupSpec(ray_start_params=params or {}))
    for name, replicas, low, high in workers:
        cluster.worker_group_spec.add(group_name=name, replicas=replicas, min_replicas=low, max_replicas=high)
    return ray_pb2.RayJob(ray_cluster=cluster, runtime_env_yaml="pip: [numpy]\n")


def test_the_rayjobs_entrypoint_keeps_every_argument_through_kuberays_shell(tmp_path):
    """KubeRay runs the entrypoint through a shell. Flyte joins the args with spaces, so an empty one (a first
    attempt's --prev-checkpoint) vanished and shifted the rest: quoted, each stays one argument."""
    import shlex

    from flyteidl2.core import tasks_pb2

    tctx = _tctx(tmp_path, MessageToDict(_ray_job()))
    template = tasks_pb2.TaskTemplate.FromString(tctx.task_template_bytes)
    args = ["a0", "--prev-checkpoint", "{{.prevCheckpointPrefix}}", "--resolver", "R", "mod", "my tasks", "t"]
    template.container.ClearField("args")
    template.container.args.extend(args)
    tctx.task_template_bytes, tctx._template = template.SerializeToString(), None
    entrypoint = RayPlugin().build_resource(tctx)["spec"]["entrypoint"]
    assert shlex.split(entrypoint) == ["a0", "--prev-checkpoint", "", "--resolver", "R", "mod", "my tasks", "t"]


@pytest.mark.parametrize("job", [_ray_job(), _ray_job(workers=(("a", 1, 3, 1), ("b", 5, 0, 2)),
                                                      params={"num-cpus": "2"}), _ray_job(workers=())],
                         ids=["one-group", "two-groups-clamped", "head-only"])
def test_the_rayjob_is_built_as_flyte_builds_it_and_validates_strictly(tmp_path, job):
    built = _built(tmp_path, RayPlugin(), MessageToDict(job))
    assert crd_schemas.errors("RayJob", built) == []
    spec = built["spec"]
    head = spec["rayClusterSpec"]["headGroupSpec"]
    container = head["template"]["spec"]["containers"][0]
    assert container["name"] == "ray-head" and "args" not in container
    assert [p["containerPort"] for p in container["ports"]] == [6379, 10001, 8265]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0" and head["rayStartParams"]["disable-usage-stats"] == "true"
    assert spec["entrypoint"].startswith("a0 --inputs ")
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]
    assert submitter["name"] == "ray-job-submitter" and submitter["image"] == container["image"]
    for group, proto in zip(spec["rayClusterSpec"]["workerGroupSpecs"], job.ray_cluster.worker_group_spec):
        assert group["minReplicas"] == min(proto.min_replicas, proto.replicas)
        assert group["maxReplicas"] == max(proto.max_replicas, proto.replicas)
        assert group["template"]["spec"]["containers"][0]["name"] == "ray-worker"
    assert len(built["metadata"]["name"]) <= 47


@pytest.mark.parametrize("deployment, reason, phase, code, kind", [
    ("", "", PluginPhase.QUEUED, None, None),
    ("Initializing", "", PluginPhase.INITIALIZING, None, None),
    ("Running", "", PluginPhase.RUNNING, None, None),
    ("Complete", "", PluginPhase.SUCCESS, None, None),
    ("Suspending", "", PluginPhase.QUEUED, None, None),
    ("Suspended", "", PluginPhase.QUEUED, None, None),
    ("Failed", "AppFailed", PluginPhase.PERMANENT_FAILURE, "TaskFailedWithError", "USER"),
    ("Failed", "JobDeploymentStatusTransitionGracePeriodExceeded", PluginPhase.RETRYABLE_FAILURE,
     "JobDeploymentStatusTransitionGracePeriodExceeded", "SYSTEM"),
])
def test_ray_phase_table_row_by_row(tmp_path, deployment, reason, phase, code, kind):
    resource = {"metadata": {"name": "job"}, "status": {"jobDeploymentStatus": deployment, "reason": reason,
                                                        "message": "it broke"}}
    info = RayPlugin().get_task_phase(_tctx(tmp_path, None), resource)
    assert info.phase == phase and (info.err.code if info.err else None) == code
    assert (info.err.kind if info.err else None) == kind


@pytest.mark.parametrize("deployment", ["ValidationFailed", "Retrying", "Waiting"])
def test_ray_statuses_flyte_does_not_handle_are_errors(tmp_path, deployment):
    with pytest.raises(PluginError, match="unknown job deployment status"):
        RayPlugin().get_task_phase(_tctx(tmp_path, None), {"metadata": {"name": "j"},
                                                          "status": {"jobDeploymentStatus": deployment}})


@pytest.mark.parametrize("kind, reason, phase, code", [
    ("RECOVERABLE", "AppFailed", PluginPhase.RETRYABLE_FAILURE, "TaskFailedWithError"),
    ("NON_RECOVERABLE", "AppFailed", PluginPhase.PERMANENT_FAILURE, "TaskFailedWithError"),
    ("RECOVERABLE", "JobDeploymentStatusTransitionGracePeriodExceeded", PluginPhase.RETRYABLE_FAILURE,
     "TaskFailedWithError"),  # an error file wins over the grace-period rule
])
def test_a_failed_ray_job_follows_the_tasks_error_file(tmp_path, kind, reason, phase, code):
    from flyteidl2.core import execution_pb2

    tctx = _tctx(tmp_path, None)
    out = tmp_path / "out"
    out.mkdir()
    doc = execution_pb2.ErrorDocument(error=execution_pb2.ContainerError(
        code="ValueError", message="boom", kind=getattr(execution_pb2.ContainerError, kind)))
    (out / "error.pb").write_bytes(doc.SerializeToString())
    info = RayPlugin().get_task_phase(tctx, {"metadata": {"name": "j"}, "status": {
        "jobDeploymentStatus": "Failed", "reason": reason}})
    assert info.phase == phase and info.err.code == code and info.err.kind == "USER"
