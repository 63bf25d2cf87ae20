"""Operator simulators for the API server emulator: what an operator does with its custom resource, enough
to drive the resource through the phase table the engine's plugin reads. They prove TaskDeck's mapping and
its Pods' commands, not the operators.

``DaskOperatorSimulator`` does what the dask-kubernetes operator does with a DaskJob: it creates the
scheduler, worker and job-runner Pods from the DaskJob's templates (owned by it, labelled as the operator
labels them), which ``tests/kubelet.py`` runs for real, and moves ``status.jobStatus`` JobCreated →
ClusterCreated → Running (with ``jobRunnerPodName``) → Successful / Failed as the job runner ends. The one
liberty is the network: pods here share this machine's loopback, so the scheduler listens on a free local
port and the workers and the job runner are given ``tcp://127.0.0.1:PORT`` instead of the Service's name.
"""

from __future__ import annotations

import copy
import datetime as dt
import socket
import threading
import time

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


class DaskOperatorSimulator:
    def __init__(self, emulator, namespace: str = "flyte"):
        self.namespace = namespace
        self.api_client = client.ApiClient(client.Configuration(host=emulator.url))
        self.core = client.CoreV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.jobs: dict[str, dict] = {}  # DaskJob name → what the simulator made for it
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch_jobs, daemon=True),
                         threading.Thread(target=self._watch_pods, daemon=True)]

    def __enter__(self) -> DaskOperatorSimulator:
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
            self.custom.patch_namespaced_custom_object_status(*DASK[:2], self.namespace, DASK[2], name,
                                                              {"status": status})
        except ApiException:
            pass  # deleted meanwhile

    def _watch_jobs(self) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(self.custom.list_namespaced_custom_object, *DASK[:2],
                                                  self.namespace, DASK[2], timeout_seconds=2):
                    job = event["object"]
                    name = job["metadata"]["name"]
                    if event["type"] == "ADDED" and name not in self.jobs and not (job.get("status") or {}):
                        self._start(job)
                    if self._stop.is_set():
                        return
            except Exception:  # the emulator stopping
                time.sleep(0.2)

    def _pod(self, job: dict, name: str, component: str, spec: dict, args: list[str] | None = None,
             env: dict[str, str] | None = None) -> str:
        spec = copy.deepcopy(spec)
        container = spec["containers"][0]
        if args is not None:
            container["args"] = args
            container.pop("command", None)
        container["env"] = [e for e in container.get("env") or [] if e["name"] not in (env or {})] + [
            {"name": k, "value": v} for k, v in (env or {}).items()]
        meta = job["metadata"]
        self.core.create_namespaced_pod(self.namespace, {
            "apiVersion": "v1", "kind": "Pod", "spec": spec,
            "metadata": {"name": name, "namespace": self.namespace,
                         "labels": {"dask.org/cluster-name": meta["name"], "dask.org/component": component},
                         "ownerReferences": [{"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskJob",
                                              "name": meta["name"], "uid": meta["uid"], "controller": True}]}})
        return name

    def _start(self, job: dict) -> None:
        name = job["metadata"]["name"]
        port = _free_port()
        address = f"tcp://127.0.0.1:{port}"
        self.jobs[name] = {"address": address}
        self._status(name, jobStatus="JobCreated", startTime=_now())
        cluster = job["spec"]["cluster"]["spec"]
        self._pod(job, f"{name}-scheduler", "scheduler", cluster["scheduler"]["spec"],
                  args=["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"])
        workers = int(cluster["worker"].get("replicas") or 1)
        worker_args = [a for a in cluster["worker"]["spec"]["containers"][0].get("args") or []
                       if a not in ("--name", "$(DASK_WORKER_NAME)")]
        for i in range(workers):
            self._pod(job, f"{name}-worker-{i}", "worker", cluster["worker"]["spec"],
                      args=[*worker_args, address, "--name", f"{name}-worker-{i}", "--no-dashboard"])
        self._status(name, jobStatus="ClusterCreated")
        runner = self._pod(job, f"{name}-runner", "job-runner", job["spec"]["job"]["spec"],
                           env={"DASK_SCHEDULER_ADDRESS": address})
        self.jobs[name]["runner"] = runner
        self._status(name, jobStatus="Running", jobRunnerPodName=runner)

    def _watch_pods(self) -> None:
        while not self._stop.is_set():
            try:
                for event in watch.Watch().stream(self.core.list_namespaced_pod, self.namespace,
                                                  label_selector="dask.org/component=job-runner", timeout_seconds=2):
                    pod = event["object"]
                    phase = pod.status.phase if pod.status else None
                    job = pod.metadata.labels.get("dask.org/cluster-name")
                    if phase in ("Succeeded", "Failed") and job in self.jobs and not self.jobs[job].get("ended"):
                        self.jobs[job]["ended"] = phase
                        self._status(job, jobStatus="Successful" if phase == "Succeeded" else "Failed",
                                     endTime=_now(), message="" if phase == "Succeeded" else "the job runner failed")
                        for other in self.core.list_namespaced_pod(
                                self.namespace, label_selector=f"dask.org/cluster-name={job}").items:
                            if other.metadata.labels.get("dask.org/component") != "job-runner":
                                self.core.delete_namespaced_pod(other.metadata.name, self.namespace)
                    if self._stop.is_set():
                        return
            except Exception:
                time.sleep(0.2)
