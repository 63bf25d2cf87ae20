"""`taskdeck --backend kubernetes --tasks-on pods`: the plugin manager runs container tasks as Pods on the
cluster (here the API server emulator, with tests/kubelet.py really running each Pod's container on this
machine). Real flyte SDK tasks, shipped as a code bundle by `taskdeck run`, run in their Pods and reach the
engine with their run's credential from a Secret; the Pod's log is the attempt's log."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from engine.auth import CREDENTIAL_PATH
from kube_apiserver import EmulatorThread
from kubelet import KubeletSimulator

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.sdk


def taskdeck(data: Path, *args: str, timeout: float = 240, input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, input=input_text)


async def cluster_object(data: Path, run: str, action: str = "a0"):
    from engine.client import connect

    remote = connect(data)
    try:
        return await remote.cluster_object(run, action)
    finally:
        await remote.close()


def start_engine(data: Path, kubeconfig: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    with contextlib.suppress(FileNotFoundError):
        (data / "engine.json").unlink()  # a killed engine's: wait for the new one's
    engine = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data), "--headless",
                               "--backend", "kubernetes", "--kubeconfig", str(kubeconfig), "--tasks-on", "pods",
                               "--allow-dir", str(ROOT), "--lease-seconds", "1", *extra], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=open(data.parent / "engine.log", "a"),
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline = time.time() + 60
    while not (data / "engine.json").exists():
        assert engine.poll() is None, (data.parent / "engine.log").read_text()
        assert time.time() < deadline, "the engine did not start"
        time.sleep(0.1)
    return engine


def run_until_pods(data: Path, kubelet: KubeletSimulator, count: int, *args: str) -> subprocess.Popen:
    """`taskdeck run --json ARGS` in the background, once the node has started ``count`` Pods."""
    running = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data), "run", "--json", *args],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(kubelet.started) < count:
        if time.time() > deadline or running.poll() is not None:
            running.kill()
            raise AssertionError(f"{count} pods never started: {kubelet.started}")
        time.sleep(0.1)
    return running


@pytest.fixture
def cluster(tmp_path):
    """An engine on the emulator running its tasks as Pods, and a node running them."""
    with EmulatorThread() as emulator, KubeletSimulator(emulator, namespace="team-a") as kubelet:
        kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", "team-a")
        data = tmp_path / "data"
        engine = start_engine(data, kubeconfig)
        try:
            yield data, emulator, kubelet, client.CoreV1Api(client.ApiClient(client.Configuration(host=emulator.url)))
        finally:
            if engine.poll() is None:
                engine.terminate()
                engine.wait(30)


def test_a_real_sdk_task_runs_in_its_pod_with_its_credential_from_a_secret(cluster):
    data, emulator, kubelet, core = cluster
    done = taskdeck(data, "run", "--json", "examples/basics.py", "add", "--x", "2", "--y", "40")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 42}
    [pod_name] = [name for name in kubelet.started if result["run"] in name]
    env = kubelet.environments[pod_name]
    assert f"{CREDENTIAL_PATH}tdr_" in env["_U_EP_OVERRIDE"]  # the node resolved it from the Secret
    secrets = core.list_namespaced_secret("team-a").items
    [secret] = [s for s in secrets if s.metadata.name.startswith(result["run"])]
    assert base64.b64decode(secret.data["endpoint"]).decode() == env["_U_EP_OVERRIDE"]
    assert secret.metadata.owner_references[0].kind == "TaskAction"
    # the pod spec names the Secret, never the credential
    spec_text = json.dumps(emulator.server.store.objects.get(("pods", "team-a", pod_name), {}))
    assert env["_U_EP_OVERRIDE"].rsplit("/", 1)[-1] not in spec_text
    logs = taskdeck(data, "logs", result["run"])  # the Pod's log (pods/NAME/log) is the attempt's log
    assert logs.returncode == 0, logs.stderr
    assert "Flyte runtime completed for action a0" in logs.stdout, logs.stdout
    # what the console's `y` shows: the Pod as the cluster has it now, and the Events about it
    live = asyncio.run(cluster_object(data, result["run"]))
    assert live["kind"] == "Pod" and live["name"] == pod_name
    assert live["object"]["status"]["phase"] == "Succeeded"
    assert [e["reason"] for e in live["events"]] == ["Scheduled", "Started"]
    assert live["events"][0]["from"] == "default-scheduler"


def test_a_secret_is_a_kubernetes_secret_the_tasks_pod_takes_by_reference(cluster):
    """On this backend the secret store is the namespace's Secrets: `taskdeck secret create` makes one (the
    engine's database never holds the value), and the Pod's variable refers to it, no copy, no value in the spec."""
    data, emulator, kubelet, core = cluster
    canary = "canary-" + "7f3a9c" * 4
    made = taskdeck(data, "secret", "create", "pod-canary", "--value-file", "-", input_text=canary)
    assert made.returncode == 0, made.stderr
    [stored] = [s for s in core.list_namespaced_secret("team-a", label_selector="taskdeck.flyte.org/secret=true").items]
    assert base64.b64decode(stored.data["value"]).decode() == canary
    assert stored.metadata.annotations["taskdeck.flyte.org/secret-name"] == "pod-canary"
    listed = taskdeck(data, "secret", "list")
    assert listed.returncode == 0 and "pod-canary" in listed.stdout and canary not in listed.stdout, listed
    result = run_json(data, "tests/programs/pod_tasks.py", "key_length")
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": len(canary)}, result
    [pod_name] = [n for n in kubelet.started if result["run"] in n]
    assert kubelet.environments[pod_name]["API_KEY"] == canary
    pod = emulator.server.store.objects[("pods", "team-a", pod_name)]
    assert canary not in json.dumps(pod)
    [api_key] = [e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "API_KEY"]
    assert api_key["valueFrom"]["secretKeyRef"] == {"name": stored.metadata.name, "key": "value"}
    [own] = [s for s in core.list_namespaced_secret("team-a").items if s.metadata.name.startswith(result["run"])]
    assert "env.API_KEY" not in (own.data or {})  # not copied into the object's own Secret
    assert not any(canary.encode() in path.read_bytes() for path in data.glob("*.db*"))
    deleted = taskdeck(data, "secret", "delete", "pod-canary")
    assert deleted.returncode == 0, deleted.stderr
    assert not core.list_namespaced_secret("team-a", label_selector="taskdeck.flyte.org/secret=true").items
    missing = taskdeck(data, "run", "tests/programs/pod_tasks.py", "key_length")  # refused before it starts
    assert missing.returncode != 0 and "asks for secret 'pod-canary'" in missing.stderr, missing.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the kubelet simulator mounts Secret volumes only as root (unshare)")
def test_a_secret_asked_for_as_a_file_is_mounted_from_its_kubernetes_secret(cluster):
    """flyte.Secret(key, mount=/etc/flyte/secrets): a read-only projected volume of the store's Secret at
    Flyte's path, in the Pod only (the node mounts it in the container's own mount namespace)."""
    data, emulator, kubelet, core = cluster
    canary = "file-canary-" + "9b2e" * 5
    made = taskdeck(data, "secret", "create", "pod-file-canary", "--value-file", "-", input_text=canary)
    assert made.returncode == 0, made.stderr
    result = run_json(data, "tests/programs/pod_tasks.py", "file_key_length")
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": len(canary)}, result
    [pod_name] = [n for n in kubelet.started if result["run"] in n]
    pod = emulator.server.store.objects[("pods", "team-a", pod_name)]
    assert canary not in json.dumps(pod)
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == "flyte-secrets"]
    [source] = volume["projected"]["sources"]
    assert source["secret"]["name"].startswith("taskdeck-secret-")
    assert source["secret"]["items"] == [{"key": "value", "path": "pod-file-canary", "mode": 0o400}]
    assert {"name": "flyte-secrets", "mountPath": "/etc/flyte/secrets", "readOnly": True} in \
        pod["spec"]["containers"][0]["volumeMounts"]
    assert not os.path.exists("/etc/flyte/secrets/pod-file-canary")  # in the container's mounts, not the host's
    import kubernetes_validate

    kubernetes_validate.validate({k: v for k, v in pod.items() if k != "status"}, "1.32", strict=True)


def _outward_address() -> str | None:
    """This machine's address on its network (not the loopback), or None without one."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("10.255.255.255", 1))  # no packet is sent: the route picks the interface
            address = sock.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_pods_reach_an_engine_listening_beyond_the_loopback_at_its_advertised_address(tmp_path):
    """--listen 0.0.0.0:PORT --advertise-url http://ADDRESS:PORT: a parent in its Pod launches its children
    over Connect at that address (its Host accepted because it is the advertised one); a request there
    without a credential is refused."""
    import socket
    import urllib.error
    import urllib.request

    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no address beyond the loopback")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with EmulatorThread() as emulator, KubeletSimulator(emulator, namespace="team-a") as kubelet:
        kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", "team-a")
        data = tmp_path / "data"
        engine = start_engine(data, kubeconfig, "--listen", f"0.0.0.0:{port}", "--advertise-url",
                              f"http://{address}:{port}")
        try:
            result = run_json(data, "examples/fanout.py", "sum_of_squares", "--n", "2")
            assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 1}, result
            pods = [n for n in kubelet.started if result["run"] in n]
            assert len(pods) == 3 and all(
                kubelet.environments[p]["_U_EP_OVERRIDE"].startswith(f"http://{address}:{port}/") for p in pods)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://{address}:{port}/runs", timeout=10)
            assert refused.value.code == 401
        finally:
            engine.terminate()
            engine.wait(30)


def test_the_embedded_default_listens_on_the_loopback_only(tmp_path):
    done = taskdeck(tmp_path / "data", "--headless", "--listen", "0.0.0.0:8080")
    assert done.returncode != 0 and "--listen on an address other than the loopback is for --backend kubernetes" \
        in done.stderr, done.stderr
    bad = taskdeck(tmp_path / "data", "--headless", "--backend", "kubernetes", "--listen", "engine:8080")
    assert bad.returncode != 0 and "--listen takes an IP address" in bad.stderr, bad.stderr


def test_a_parent_in_a_pod_launches_its_children_as_pods(cluster):
    data, emulator, kubelet, core = cluster
    done = taskdeck(data, "run", "--json", "examples/fanout.py", "sum_of_squares", "--n", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 0 + 1 + 4}, result
    assert len([n for n in kubelet.started if result["run"] in n]) == 4  # the parent and its three children


def test_a_failing_task_in_a_pod_is_a_user_failure_with_its_message(cluster):
    data, emulator, kubelet, core = cluster
    done = taskdeck(data, "run", "--json", "examples/basics.py", "boom", "--x", "7")
    result = json.loads(done.stdout)
    assert result["phase"] == "FAILED", result
    assert result["error"]["kind"] == "USER" and "boom 7" in result["error"]["message"]


def test_aborting_a_task_deletes_its_pod_and_the_node_stops_its_process(cluster):
    data, emulator, kubelet, core = cluster
    running = run_until_pods(data, kubelet, 1, "examples/fanout.py", "nap", "--x", "1")
    try:
        [pod_name] = kubelet.started
        run_name = pod_name.rsplit("-a0-", 1)[0]
        process = kubelet.processes[pod_name]
        done = taskdeck(data, "abort", run_name)
        assert done.returncode == 0, done.stderr
        out, _ = running.communicate(timeout=120)
        assert json.loads(out)["phase"] == "ABORTED"
        process.wait(30)  # the node killed it when its Pod was deleted
        assert "Killing" in [e["reason"] for e in kubelet_events(core, pod_name)]
        deadline = time.time() + 30
        while any(p.metadata.name == pod_name for p in core.list_namespaced_pod("team-a").items):
            assert time.time() < deadline, "the pod was not deleted"
            time.sleep(0.2)
    finally:
        if running.poll() is None:
            running.kill()


def kubelet_events(core, pod_name: str) -> list:
    return [{"reason": e.reason} for e in core.list_namespaced_event(
        "team-a", field_selector=f"involvedObject.name={pod_name}").items]


def test_pods_are_for_the_kubernetes_backend_and_the_advertised_address_is_checked(tmp_path):
    misused = taskdeck(tmp_path / "data", "--headless", "--tasks-on", "pods")
    assert misused.returncode == 2 and "--backend kubernetes" in misused.stderr
    bad = taskdeck(tmp_path / "data", "--headless", "--backend", "kubernetes", "--advertise-url", "ftp://x/y")
    assert bad.returncode == 2 and "--advertise-url must be http(s)://HOST[:PORT]" in bad.stderr


# ---------------------------------------------------------------------- the scenario suite, tasks as Pods
def run_json(data: Path, *args: str) -> dict:
    done = taskdeck(data, "run", "--json", *args)
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def test_retries_run_each_attempt_in_a_pod_of_its_own(cluster):
    data, emulator, kubelet, core = cluster
    result = run_json(data, "examples/basics.py", "always_fails", "--x", "1")
    assert result["phase"] == "FAILED" and result["error"]["kind"] == "USER", result
    pods = [n for n in kubelet.started if result["run"] in n]
    assert len(pods) == 3 and len(set(pods)) == 3, pods  # retries=2: three attempts, three Pods


def test_a_pod_deleted_under_a_running_task_is_a_system_failure_and_runs_again(cluster):
    data, emulator, kubelet, core = cluster
    running = run_until_pods(data, kubelet, 1, "tests/programs/pod_tasks.py", "sleepy", "--seconds", "4")
    [pod_name] = kubelet.started
    core.delete_namespaced_pod(pod_name, "team-a")  # someone else deletes it (a node drain, kubectl delete)
    out, err = running.communicate(timeout=180)
    result = json.loads(out)
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 4.0}, (result, err)
    assert kubelet.started.count(pod_name) == 2  # relaunched in the same attempt (a system failure)
    [action] = json.loads(taskdeck(data, "get", "actions", result["run"], "--json").stdout)
    assert action["attempts"] == 1  # not a retry: the same attempt, its Pod made again


def test_a_container_killed_as_out_of_memory_fails_as_oom(cluster):
    data, emulator, kubelet, core = cluster
    result = run_json(data, "tests/programs/pod_tasks.py", "killed")
    assert result["phase"] == "FAILED" and result["error"]["code"] == "OOMKilled", result


def test_a_cached_child_in_a_pod_is_computed_once_across_two_runs(cluster, tmp_path):
    data, emulator, kubelet, core = cluster
    ledger = tmp_path / "ledger"
    for _ in range(2):
        result = run_json(data, "examples/cached.py", "square_twice", "--x", "7", "--ledger", str(ledger))
        assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 49}, result
    assert ledger.read_text().splitlines() == ["slow_square(7)"]


def test_an_engine_killed_under_a_running_pod_is_replaced_and_the_task_runs_once(cluster, tmp_path):
    data, emulator, kubelet, core = cluster
    running = run_until_pods(data, kubelet, 1, "tests/programs/pod_tasks.py", "sleepy", "--seconds", "6")
    [pod_name] = kubelet.started
    engine_pid = json.loads((data / "engine.json").read_text())["pid"]
    os.kill(engine_pid, 9)
    running.kill()
    replacement = start_engine(data, tmp_path / "kubeconfig")
    try:
        run_name = pod_name.rsplit("-a0-", 1)[0]
        deadline = time.time() + 120
        while True:
            [run] = [r for r in json.loads(taskdeck(data, "get", "runs", "--json").stdout) if r["run"] == run_name]
            if run["phase"] in ("SUCCEEDED", "FAILED", "ABORTED"):
                break
            assert time.time() < deadline, run
            time.sleep(0.5)
        assert run["phase"] == "SUCCEEDED", run
        assert kubelet.started == [pod_name]  # the new engine found the Pod running: not started again
    finally:
        replacement.terminate()
        replacement.wait(30)


@pytest.mark.parametrize("failure", ["shutdown", "lost"])
def test_a_node_failure_under_a_running_pod_is_a_system_failure_and_the_task_runs_again(cluster, failure):
    """The node shuts down (its kubelet fails the Pod: reason Terminated) or vanishes (the Pod stays Running
    until eviction deletes it): either way a system failure, not the task's, so a task with no retries of its
    own runs again in a new Pod on another node and succeeds."""
    data, emulator, kubelet, core = cluster
    running = run_until_pods(data, kubelet, 1, "tests/programs/pod_tasks.py", "sleepy", "--seconds", "3")
    time.sleep(1)  # the task's process is up in its Pod
    [first] = kubelet.shut_down_node() if failure == "shutdown" else kubelet.lose_node()
    out, err = running.communicate(timeout=180)
    result = json.loads(out)
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 3.0}, (result, err)
    placed = [(pod, node) for pod, node in kubelet.placements if result["run"] in pod]
    assert len(placed) == 2 and placed[0][0] == first, placed  # the same attempt's Pod, made again
    assert placed[0][1] != placed[1][1], placed  # on another node
    if failure == "shutdown":  # both Pods' logs, the first one's first (a lost node's log goes with it)
        logs = taskdeck(data, "logs", result["run"]).stdout
        assert logs.count("Flyte runtime started for action a0") == 2, logs
        assert logs.index("the Pod was made again") > logs.index("Flyte runtime started for action a0"), logs
    # not the task's failure (it has no retries of its own): the engine's system failure budget took it
    said = (data.parent / "engine.log").read_text()
    expected = "[Interrupted] Pod was terminated in response to imminent node shutdown" if failure == "shutdown" \
        else "[ResourceDeletedExternally]"
    assert f"{result['run']}-a0: system failure 1/3 from plugin pod: {expected}" in said, said[-3000:]


def test_aborting_a_parent_deletes_its_childrens_pods_too(cluster):
    data, emulator, kubelet, core = cluster
    running = run_until_pods(data, kubelet, 3, "examples/fanout.py", "slow_children", "--n", "2")  # and 2 children
    try:
        run_name = kubelet.started[0].rsplit("-a0-", 1)[0]
        processes = [kubelet.processes[name] for name in kubelet.started]
        assert taskdeck(data, "abort", run_name).returncode == 0
        out, _ = running.communicate(timeout=120)
        assert json.loads(out)["phase"] == "ABORTED"
        for process in processes:
            process.wait(30)  # every Pod deleted, every container stopped
        actions = json.loads(taskdeck(data, "get", "actions", run_name, "--json").stdout)
        assert {a["phase"] for a in actions} == {"ABORTED"}, actions
    finally:
        if running.poll() is None:
            running.kill()


@pytest.mark.skipif(__import__("importlib").util.find_spec("flyteplugins.dask") is None,
                    reason="the dask extra is not installed")
def test_a_dask_task_runs_as_a_daskjob_whose_pods_the_operator_simulator_makes(tmp_path):
    """The DaskJob on the cluster, the operator simulator (tests/operators.py) making its scheduler, worker
    and job-runner Pods, the node running them: the task's Client() joins that scheduler."""
    from kube_apiserver import ApiServer, core_kinds, taskaction_kind
    from operators import DaskOperatorSimulator, operator_kinds

    server = ApiServer(kinds=[taskaction_kind(), *core_kinds(), *operator_kinds()])
    with EmulatorThread(server) as emulator, KubeletSimulator(emulator, namespace="team-a") as kubelet, \
            DaskOperatorSimulator(emulator, namespace="team-a") as operator:
        kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", "team-a")
        data = tmp_path / "data"
        engine = start_engine(data, kubeconfig)
        try:
            result = run_json(data, "examples/dask_sum.py", "total", "--n", "10")
            assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": sum(i * i for i in range(10))}, \
                (result, (tmp_path / "engine.log").read_text()[-3000:])
            [job] = list(operator.jobs)
            assert operator.jobs[job]["ended"] == "Succeeded"
            assert {f"{job}-scheduler", f"{job}-worker-0", f"{job}-worker-1", f"{job}-runner"} <= set(kubelet.started)
            runner_env = kubelet.environments[f"{job}-runner"]
            assert runner_env["DASK_SCHEDULER_ADDRESS"].startswith("tcp://127.0.0.1:")
            assert f"{CREDENTIAL_PATH}tdr_" in runner_env["_U_EP_OVERRIDE"]
            logs = taskdeck(data, "logs", result["run"])  # the job runner's log is the attempt's
            assert "Flyte runtime completed for action a0" in logs.stdout, (logs.stdout, logs.stderr)
            shown = asyncio.run(cluster_object(data, result["run"]))
            assert shown["kind"] == "DaskJob" and [e["reason"] for e in shown["events"]] == ["DaskJobCreated"]
        finally:
            engine.terminate()
            engine.wait(30)


def _with_operator(tmp_path, simulator, *run_args: str, prepare=None, inspect=None):
    """A real task run by the engine on the emulator with ``simulator`` as its operator; (the result, the
    operator, the kubelet, what the console's `y` showed of the object once the run was done, the engine's
    log). The attempt's log must be the task's own output, copied from the pod that ran it."""
    from kube_apiserver import ApiServer, core_kinds, taskaction_kind
    from operators import operator_kinds

    server = ApiServer(kinds=[taskaction_kind(), *core_kinds(), *operator_kinds()])
    with EmulatorThread(server) as emulator, KubeletSimulator(emulator, namespace="team-a") as kubelet, \
            simulator(emulator, namespace="team-a") as operator:
        kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", "team-a")
        data = tmp_path / "data"
        engine = start_engine(data, kubeconfig)
        try:
            if prepare is not None:
                prepare(data)
            result = run_json(data, *run_args)
            shown = asyncio.run(cluster_object(data, result["run"]))
            if inspect is not None:
                inspect(emulator, kubelet, result)
            logs = taskdeck(data, "logs", result["run"])  # kubectl logs of the driver / runner / submitter
            assert "Flyte runtime completed for action a0" in logs.stdout, (logs.stdout, logs.stderr)
            return result, operator, kubelet, shown, (tmp_path / "engine.log").read_text()[-3000:]
        finally:
            engine.terminate()
            engine.wait(30)


@pytest.mark.skipif(__import__("importlib").util.find_spec("flyteplugins.spark") is None,
                    reason="the spark extra is not installed")
def test_a_spark_task_runs_as_a_sparkapplication_whose_driver_pod_the_operator_simulator_makes(tmp_path):
    from operators import SparkOperatorSimulator

    result, operator, kubelet, shown, log = _with_operator(tmp_path, SparkOperatorSimulator,
                                                           "examples/spark_sum.py", "total", "--n", "10")
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": sum(i * i for i in range(10))}, (result, log)
    [app] = list(operator.jobs)
    assert operator.jobs[app]["ended"] == "Succeeded" and f"{app}-driver" in kubelet.started
    driver_env = kubelet.environments[f"{app}-driver"]
    assert f"{CREDENTIAL_PATH}tdr_" in driver_env["_U_EP_OVERRIDE"]  # the driver's env from the Secret
    assert "spark.sql.shuffle.partitions=4" in driver_env["PYSPARK_SUBMIT_ARGS"]  # the task's conf applied
    # what `y` shows: the SparkApplication as the cluster has it, and the operator's Events about it
    assert shown["kind"] == "SparkApplication" and shown["object"]["status"]["applicationState"]["state"] == "COMPLETED"
    assert [e["reason"] for e in shown["events"]] == ["SparkApplicationSubmitted", "SparkDriverRunning"]
    assert shown["events"][0]["from"] == "spark-operator"


@pytest.mark.skipif(__import__("importlib").util.find_spec("flyteplugins.ray") is None,
                    reason="the ray extra is not installed")
def test_a_ray_task_runs_as_a_rayjob_whose_head_and_submitter_pods_the_operator_simulator_makes(tmp_path):
    from operators import RayOperatorSimulator

    result, operator, kubelet, shown, log = _with_operator(tmp_path, RayOperatorSimulator,
                                                           "examples/ray_sum.py", "total", "--n", "10")
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": sum(i * i for i in range(10))}, (result, log)
    [job] = list(operator.jobs)
    head, submitter = operator.jobs[job]["head"], operator.jobs[job]["submitter"]
    assert kubelet.started.index(head) < kubelet.started.index(submitter)  # the job runs once the head answers
    assert kubelet.environments[submitter]["RAY_ADDRESS"].startswith("127.0.0.1:")
    assert f"{CREDENTIAL_PATH}tdr_" in kubelet.environments[submitter]["_U_EP_OVERRIDE"]
    assert shown["kind"] == "RayJob" and shown["object"]["status"]["jobDeploymentStatus"] == "Complete"
    assert [e["reason"] for e in shown["events"]] == ["Created"] and shown["events"][0]["from"] == "kuberay-operator"


@pytest.mark.skipif(__import__("importlib").util.find_spec("flyteplugins.spark") is None or os.geteuid() != 0,
                    reason="needs the spark extra, and root for the kubelet simulator's Secret volumes")
def test_a_spark_tasks_file_secret_is_mounted_in_its_driver(tmp_path):
    """A SparkApplication's file secrets: spec.volumes and the driver's and executor's volumeMounts, which the
    operator gives their pods; valid against the operator's CRD."""
    import crd_schemas
    from operators import SparkOperatorSimulator

    canary = "spark-canary-" + "4c1d" * 5

    def prepare(data):
        made = taskdeck(data, "secret", "create", "spark-file-canary", "--value-file", "-", input_text=canary)
        assert made.returncode == 0, made.stderr

    def inspect(emulator, kubelet, result):
        [app] = [o for (plural, _, _), o in emulator.server.store.objects.items() if plural == "sparkapplications"]
        assert canary not in json.dumps(app) and crd_schemas.errors("SparkApplication", app) == []
        assert [v["name"] for v in app["spec"]["volumes"]] == ["flyte-secrets"]
        for part in ("driver", "executor"):
            assert app["spec"][part]["volumeMounts"] == [
                {"name": "flyte-secrets", "mountPath": "/etc/flyte/secrets", "readOnly": True}]

    result, *_ = _with_operator(tmp_path, SparkOperatorSimulator, "tests/programs/spark_secret.py", "key_length",
                                prepare=prepare, inspect=inspect)
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": len(canary)}, result
