"""A kubelet simulator for the API server emulator: it really runs each Pod's primary container on this
machine, as a node would run it, and reports through the API what a kubelet reports.

- It watches the namespace's Pods with the official client (list + watch, over HTTP).
- A new Pod is "scheduled" (``spec.nodeName``, condition PodScheduled), then its first container's
  ``command`` + ``args`` (``args`` alone when there is no command: Flyte's images have no entrypoint) run
  as a process in its own process group, in a fresh directory (or ``workingDir``), with the container's
  environment resolved as a kubelet resolves it: ``value``, ``valueFrom.fieldRef`` (metadata.name,
  metadata.namespace, metadata.uid, spec.nodeName, spec.serviceAccountName) and ``valueFrom.secretKeyRef``
  (read from the API: a missing Secret or key is CreateContainerConfigError, as on a node); plus PATH
  and HOME, which an image would supply.
- Status through the status subresource: Pending → Running (``containerStatuses[].state.running``,
  ``startTime``) → Succeeded / Failed with ``state.terminated`` (exitCode, reason Completed / Error /
  OOMKilled for 137, startedAt, finishedAt).
- Its stdout and stderr are the Pod's log (``pods/NAME/log`` on the emulator).
- A Pod that is deleted has its process group killed (SIGTERM, then SIGKILL after the grace period).
- Node failures: ``shut_down_node()`` is the kubelet's graceful node shutdown (each running container
  stopped, its Pod ``Failed`` with reason ``Terminated`` and the kubelet's message); ``lose_node()`` is a node
  that vanishes (its processes die, nothing more is reported: the Pods stay ``Running`` in the API), after
  which the node lifecycle controller's eviction and the pod GC delete its Pods. Pods made afterwards run on
  a fresh node (the simulator's next node name).

- Secret volumes (``secret``, and ``projected`` with secret sources) are materialized from the API and
  bind-mounted read-only at their ``mountPath`` in a mount namespace of the container's own (``unshare``;
  needs root: elsewhere such a Pod fails with CreateContainerConfigError, saying so). The mount point is
  made on this machine if missing, as a container runtime makes it in the image's root.

Not simulated: images (the command runs from this machine's PATH), resources and limits, probes, init
containers, sidecars beyond the first container, restarts (restartPolicy is taken as Never), volumes other
than Secrets.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

BIN = str(Path(sys.executable).parent)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigError(Exception):
    """What makes a kubelet refuse to start a container (CreateContainerConfigError)."""


class KubeletSimulator:
    def __init__(self, emulator, namespace: str = "flyte", node: str = "sim-node-1", grace_seconds: float = 2.0):
        self.emulator = emulator
        self.namespace = namespace
        self.node = node
        self.grace_seconds = grace_seconds
        self.api_client = client.ApiClient(client.Configuration(host=emulator.url))
        self.core = client.CoreV1Api(self.api_client)
        self.root = Path(tempfile.mkdtemp(prefix="kubelet-"))
        self.processes: dict[str, subprocess.Popen] = {}
        self.pods: dict = {}  # name → the Pod as the node first saw it
        self.started: list[str] = []  # pod names, in the order their containers started
        self.environments: dict[str, dict[str, str]] = {}  # pod → the environment its container got
        self.nodes: dict[str, str] = {}  # pod → the node its latest container runs or ran on
        self.placements: list[tuple[str, str]] = []  # (pod, node) per container started, in order
        self._ending: dict[str, tuple[str, str] | None] = {}  # pod → the node failure that ended it (None: lost)
        self._stop = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread = threading.Thread(target=self._loop, name="kubelet-simulator", daemon=True)

    def __enter__(self) -> KubeletSimulator:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        self._thread.join(10)
        for process in list(self.processes.values()):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.api_client.close()

    # ------------------------------------------------------------------ the watch
    def _loop(self) -> None:
        version = None
        while not self._stop.is_set():
            self._watch = watch.Watch()
            try:
                kwargs = {"resource_version": version} if version else {}
                for event in self._watch.stream(self.core.list_namespaced_pod, self.namespace, timeout_seconds=5,
                                                **kwargs):
                    pod = event["object"]
                    version = pod.metadata.resource_version
                    if event["type"] == "DELETED" or pod.metadata.deletion_timestamp:
                        self._kill(pod.metadata.name)
                        if event["type"] == "DELETED":  # a Pod of that name made later is another Pod
                            self.processes.pop(pod.metadata.name, None)
                    elif event["type"] == "ADDED" and pod.metadata.name not in self.processes \
                            and not (pod.status and pod.status.phase in ("Succeeded", "Failed")):
                        threading.Thread(target=self._run, args=(pod,), daemon=True).start()
                    if self._stop.is_set():
                        break
            except ApiException as exc:
                if exc.status == 410:
                    version = None
                    continue
                time.sleep(0.2)
            except Exception:  # the emulator stopping under the watch
                time.sleep(0.2)

    # ------------------------------------------------------------------ one pod
    def _event(self, pod, reason: str, message: str, component: str = "kubelet", kind: str = "Normal") -> None:
        """A Kubernetes Event about the pod, as the scheduler or a kubelet records one."""
        now = _now()
        try:
            self.core.create_namespaced_event(self.namespace, {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{pod.metadata.name}.{reason.lower()}.{time.monotonic_ns()}"},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod.metadata.name,
                                   "namespace": self.namespace, "uid": pod.metadata.uid},
                "reason": reason, "message": message, "type": kind, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now,
                "source": {"component": component, "host": self.node}})
        except ApiException:
            pass

    def _status(self, name: str, status: dict) -> None:
        """Report on the pod this node runs under that name, not on a later one of the same name."""
        uid = self.pods[name].metadata.uid
        try:
            if self.core.read_namespaced_pod(name, self.namespace).metadata.uid != uid:
                return
            self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})
        except ApiException:
            pass  # deleted meanwhile

    def _environment(self, pod, container) -> dict[str, str]:
        env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": os.environ.get("HOME", "/root"),
               "LANG": "C.UTF-8"}
        fields = {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace,
                  "metadata.uid": pod.metadata.uid, "spec.nodeName": self.node,
                  "spec.serviceAccountName": pod.spec.service_account_name or "default"}
        for item in container.env or []:
            if item.value_from is None:
                env[item.name] = item.value or ""
            elif item.value_from.field_ref is not None:
                env[item.name] = fields.get(item.value_from.field_ref.field_path, "")
            elif item.value_from.secret_key_ref is not None:
                ref = item.value_from.secret_key_ref
                try:
                    secret = self.core.read_namespaced_secret(ref.name, pod.metadata.namespace)
                except ApiException:
                    raise ConfigError(f'secret "{ref.name}" not found') from None
                if ref.key not in (secret.data or {}):
                    raise ConfigError(f"couldn't find key {ref.key} in Secret {pod.metadata.namespace}/{ref.name}")
                env[item.name] = base64.b64decode(secret.data[ref.key]).decode()
        return env

    def _run(self, pod) -> None:
        name = pod.metadata.name
        self.pods[name] = pod
        container = pod.spec.containers[0]
        self._status(name, {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]})
        self._event(pod, "Scheduled", f"Successfully assigned {self.namespace}/{name} to {self.node}",
                    "default-scheduler")
        self._ending.pop(name, None)  # a new Pod of that name (a relaunch): what ended the last is not its end
        try:  # what a kubelet resolves before the container can start: its environment, its Secret volumes
            env = self._environment(pod, container)
            argv = self._with_secret_volumes(pod, container, list(container.command or []) + list(container.args or []))
        except ConfigError as exc:
            self._event(pod, "Failed", f"Error: {exc}", kind="Warning")
            self._status(name, {"phase": "Pending", "containerStatuses": [{
                "name": container.name, "ready": False, "restartCount": 0, "image": container.image,
                "imageID": "", "state": {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}}]})
            return
        work = Path(container.working_dir) if container.working_dir else self.root / name
        work.mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"{name}.log"
        started = _now()
        with open(log_path, "wb") as log:
            try:
                process = subprocess.Popen(argv, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True)
            except OSError as exc:
                log.write(f"exec failed: {exc}\n".encode())
                process = None
        self.emulator.server.pod_logs[(self.namespace, name)] = str(log_path)
        if process is None:
            self._terminated(name, container, 128, "StartError", started)
            return
        self.processes[name] = process
        self._event(pod, "Started", f"Started container {container.name}")
        self.started.append(name)
        self.environments[name] = env
        self._status(name, {"phase": "Running", "startTime": started, "conditions": [
            {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": container.name, "ready": True, "restartCount": 0,
                                   "image": container.image, "imageID": "", "state": {"running": {"startedAt": started}}}]})
        self.nodes[name] = self.node
        self.placements.append((name, self.node))
        code = process.wait()
        if code < 0:  # killed by a signal: a container runtime reports 128 + the signal
            code = 128 - code
        if name in self._ending:  # a node failure ended it
            ending = self._ending[name]
            if ending is not None:  # a graceful shutdown: the kubelet says why
                reason, message = ending
                self._status(name, {"phase": "Failed", "reason": reason, "message": message, "containerStatuses": [{
                    "name": container.name, "ready": False, "restartCount": 0, "image": container.image,
                    "imageID": "", "state": {"terminated": {"exitCode": code, "reason": "Error", "startedAt": started,
                                                            "finishedAt": _now()}}}]})
            return  # a lost node reports nothing
        self._terminated(name, container, code, "Completed" if code == 0 else "OOMKilled" if code == 137 else "Error",
                         started)

    def _terminated(self, name: str, container, code: int, reason: str, started: str) -> None:
        self._status(name, {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [{
            "name": container.name, "ready": False, "restartCount": 0, "image": container.image, "imageID": "",
            "state": {"terminated": {"exitCode": code, "reason": reason, "startedAt": started,
                                     "finishedAt": _now()}}}]})

    def _secret_files(self, volume, namespace: str) -> dict[str, tuple[bytes, int]]:
        """path → (bytes, mode) of a secret or projected-secret volume, as a kubelet writes it."""
        sources = []
        if volume.secret is not None:
            sources.append((volume.secret.secret_name, volume.secret.items, volume.secret.default_mode))
        if volume.projected is not None:
            for source in volume.projected.sources or []:
                if source.secret is not None:
                    sources.append((source.secret.name, source.secret.items, volume.projected.default_mode))
        files = {}
        for secret_name, items, mode in sources:
            try:
                secret = self.core.read_namespaced_secret(secret_name, namespace)
            except ApiException:
                raise ConfigError(f'secret "{secret_name}" not found') from None
            data = secret.data or {}
            for item in items or [client.V1KeyToPath(key=k, path=k) for k in data]:
                if item.key not in data:
                    raise ConfigError(f"couldn't find key {item.key} in Secret {namespace}/{secret_name}")
                files[item.path] = (base64.b64decode(data[item.key]), item.mode or mode or 0o644)
        return files

    def _with_secret_volumes(self, pod, container, argv: list[str]) -> list[str]:
        """``argv`` run with the container's Secret volumes mounted where it asks, in a mount namespace."""
        volumes = {v.name: v for v in pod.spec.volumes or [] if v.secret is not None or v.projected is not None}
        mounts = [m for m in container.volume_mounts or [] if m.name in volumes]
        if not mounts:
            return argv
        if os.geteuid() != 0:
            raise ConfigError("the kubelet simulator mounts Secret volumes only as root")
        script = []
        for mount in mounts:
            host = self.root / f"{pod.metadata.name}.volumes" / mount.name
            for path, (data, mode) in self._secret_files(volumes[mount.name], pod.metadata.namespace).items():
                target = host / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                target.chmod(mode)
            os.makedirs(mount.mount_path, exist_ok=True)  # the mount point, as the image's root would have it
            script.append(f"mount --bind {shlex.quote(str(host))} {shlex.quote(mount.mount_path)} && "
                          f"mount -o remount,bind,ro {shlex.quote(mount.mount_path)}")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                " && ".join(script) + ' && exec "$@"', "sh", *argv]

    # ------------------------------------------------------------------ node failures
    def _running(self) -> list[str]:
        return [n for n, p in self.processes.items() if p.poll() is None and self.nodes.get(n) == self.node]

    def shut_down_node(self) -> list[str]:
        """The kubelet's graceful node shutdown: every running Pod stopped and reported Failed (Terminated);
        the Pods it ended. Later Pods run on the next node."""
        ended = self._running()
        for name in ended:
            self._ending[name] = ("Terminated", "Pod was terminated in response to imminent node shutdown.")
            self._kill(name)
        self._next_node()
        return ended

    def lose_node(self, eviction_seconds: float = 1.0) -> list[str]:
        """A node that vanishes: its processes die unreported (the Pods stay Running in the API); after
        ``eviction_seconds`` the eviction and the pod GC delete them (force, as for a node that is gone)."""
        lost = self._running()
        for name in lost:
            self._ending[name] = None
            os.killpg(self.processes[name].pid, signal.SIGKILL)
        self._next_node()

        def evict() -> None:
            time.sleep(eviction_seconds)
            for name in lost:
                try:
                    self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
                except ApiException:
                    pass

        threading.Thread(target=evict, daemon=True).start()
        return lost

    def _next_node(self) -> None:
        prefix, _, number = self.node.rpartition("-")
        self.node = f"{prefix}-{int(number) + 1}" if number.isdigit() else f"{self.node}-2"

    def _kill(self, name: str) -> None:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        self._event(self.pods[name], "Killing", f"Stopping container {self.pods[name].spec.containers[0].name}")
        try:
            process.wait(self.grace_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
