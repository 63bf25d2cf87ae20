"""The Spark plugin (Flyte's ``plugins/k8s/spark/spark.go``): a task of type ``spark`` becomes a
SparkApplication of the spark-operator (v1beta2), and its phase is read from ``status.applicationState``.

The job's ``custom`` is the SDK's SparkJob proto as JSON (``flyteplugins-spark``: ``spark_conf``,
``hadoop_conf``, the executor's Python, the main application file).
"""

from __future__ import annotations

import time

from flyteidl2.plugins import spark_pb2

from engine.plugins.core import PhaseInfo, PluginError, TaskExecutionContext, TaskExecutionMetadata, TaskInfo
from engine.plugins.k8s_config import K8sConfig
from engine.plugins.podspec import PodParts, apply_platform_scheduling_constraints, service_account, to_pod_spec
from engine.plugins.resources import PodRef, Resource, ResourcePlugin, custom_config

API_VERSION = "sparkoperator.k8s.io/v1beta2"
KIND = "SparkApplication"
APPLICATION_TYPES = {spark_pb2.SparkApplication.PYTHON: "Python", spark_pb2.SparkApplication.JAVA: "Java",
                     spark_pb2.SparkApplication.SCALA: "Scala", spark_pb2.SparkApplication.R: "R"}
DEFAULT_SERVICE_ACCOUNT = "spark"
DRIVER_CONTAINER = "spark-kubernetes-driver"
TERMINAL_STATES = ("COMPLETED", "FAILED", "SUBMISSION_FAILED")


def spark_job(tctx: TaskExecutionContext) -> spark_pb2.SparkJob:
    job = custom_config(tctx, spark_pb2.SparkJob(), "Spark")
    if not job.mainApplicationFile and not job.mainClass:
        raise PluginError("a Spark job needs a main application file or a main class", code="BadTaskSpecification")
    return job


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


class SparkPlugin(ResourcePlugin):
    id = "spark"
    task_types = ("spark",)

    def build_identity_resource(self, metadata: TaskExecutionMetadata) -> Resource:
        return {"apiVersion": API_VERSION, "kind": KIND}

    def __init__(self, k8s: K8sConfig | None = None):
        self.k8s = k8s or K8sConfig()

    def build_resource(self, tctx: TaskExecutionContext) -> Resource:
        job = spark_job(tctx)
        driver_pod = to_pod_spec(tctx, self.k8s, interruptible=False)  # the driver is never interruptible
        apply_platform_scheduling_constraints(driver_pod.spec, self.k8s, False)
        executor_pod = to_pod_spec(tctx, self.k8s)
        container = executor_pod.primary
        conf = dict(job.sparkConf)
        if job.executorPath:
            conf.setdefault("spark.pyspark.python", job.executorPath)
            conf.setdefault("spark.pyspark.driver.python", job.executorPath)
        conf["spark.kubernetes.executor.podNamePrefix"] = tctx.metadata.generated_name.lower()
        conf["spark.kubernetes.driverEnv.FLYTE_START_TIME"] = str(int(time.time() * 1000))

        def pod_spec(parts: PodParts, cores_key: str, memory_key: str) -> dict:
            """Flyte's ``createSparkPodSpec``: the pod's scheduling and identity, the primary's env and image."""
            primary, pod = parts.primary, parts.spec
            spec: dict = {"env": primary["env"] + [{"name": "FLYTE_MAX_ATTEMPTS",
                                                   "value": str(tctx.metadata.max_attempts)}],
                          "image": primary["image"], "hostNetwork": bool(pod.get("hostNetwork", False)),
                          "labels": {**self.k8s.default_labels, **tctx.metadata.labels},
                          "annotations": {**self.k8s.default_annotations, **tctx.metadata.annotations}}
            for theirs, ours in (("affinity", "affinity"), ("tolerations", "tolerations"),
                                 ("nodeSelector", "nodeSelector"), ("schedulerName", "schedulerName"),
                                 ("securityContext", "podSecurityContext"), ("dnsConfig", "dnsConfig")):
                if pod.get(theirs):
                    spec[ours] = pod[theirs]
            cores = _int(conf.get(cores_key))
            if cores is not None:
                spec["cores"] = cores
            if conf.get(memory_key):
                spec["memory"] = conf[memory_key]
            return spec

        driver = {**pod_spec(driver_pod, "spark.driver.cores", "spark.driver.memory"),
                  "serviceAccount": service_account(tctx, self.k8s) or DEFAULT_SERVICE_ACCOUNT}
        executor = pod_spec(executor_pod, "spark.executor.cores", "spark.executor.memory")
        instances = _int(conf.get("spark.executor.instances"))
        if instances is not None:
            executor["instances"] = instances
        spec = {
            "type": APPLICATION_TYPES.get(job.applicationType, "Python"),
            "mode": "cluster",
            "image": container["image"],
            "arguments": container.get("args", []),
            # The CRD requires both. Go emits sparkVersion "" (no omitempty) and a null mainApplicationFile
            # for a main-class job, which the API server prunes and then refuses as missing: "" here.
            "sparkVersion": "",
            "mainApplicationFile": job.mainApplicationFile,
            "sparkConf": conf,
            "hadoopConf": dict(job.hadoopConf),
            "restartPolicy": {"type": "OnFailure", "onSubmissionFailureRetries": 14},
            "driver": driver,
            "executor": executor,
        }
        if job.mainClass:
            spec["mainClass"] = job.mainClass
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": executor_pod.metadata, "spec": spec}

    def related_pods(self, resource: Resource) -> list[PodRef]:
        driver = ((resource.get("status") or {}).get("driverInfo") or {}).get("podName")
        return [PodRef(DRIVER_CONTAINER, name=driver)] if driver else []

    def log_pods(self, resource: Resource) -> list[PodRef]:
        return self.related_pods(resource)

    def get_task_phase(self, tctx: TaskExecutionContext, resource: Resource) -> PhaseInfo:
        status = resource.get("status") or {}
        state = (status.get("applicationState") or {}).get("state", "")
        error = (status.get("applicationState") or {}).get("errorMessage", "")
        links = dict(status.get("links") or {})
        ui = (status.get("driverInfo") or {}).get("webUIIngressAddress")
        if ui and state == "RUNNING":
            links["Spark Driver UI"] = ui if "://" in ui else f"https://{ui}"
        application_id = status.get("sparkApplicationId")
        if application_id and self.k8s.spark_history_server_url and state in ("FAILED", "COMPLETED"):
            links["Spark History UI"] = f"{self.k8s.spark_history_server_url}/history/{application_id}"
        info = TaskInfo(log_path=str(tctx.log_path), custom={"applicationState": state, "links": links})
        if state == "":
            return PhaseInfo.queued(reason="job queued", info=info)
        if state in ("SUBMITTED", "PENDING_SUBMISSION"):
            return PhaseInfo.initializing(reason="job submitted", info=info)
        if state == "SUBMISSION_FAILED":
            return PhaseInfo.retryable_failure("DownstreamSystemError",
                                               f"Spark Job  Submission Failed with Error: {error}", info)
        if state == "FAILED":
            return PhaseInfo.retryable_failure("DownstreamSystemError", f"Spark Job Failed with Error: {error}", info)
        if state == "COMPLETED":
            return PhaseInfo.success(info)
        return PhaseInfo.running(info=info)

    def is_terminal(self, resource: Resource) -> bool:
        return ((resource.get("status") or {}).get("applicationState") or {}).get("state") in TERMINAL_STATES

    def get_completion_time(self, resource: Resource) -> str | None:
        status = resource.get("status") or {}
        return status.get("terminationTime") or status.get("lastSubmissionAttemptTime") or \
            (resource.get("metadata") or {}).get("creationTimestamp")
