"""`taskdeck --backend kubernetes --tasks-on pods`: the plugin manager runs container tasks as Pods on the
cluster (here the API server emulator, with tests/kubelet.py really running each Pod's container on this
machine). Real flyte SDK tasks, shipped as a code bundle by `taskdeck run`, run in their Pods and reach the
engine with their run's credential from a Secret; the Pod's log is the attempt's log."""

from __future__ import annotations

import asyncio
import base64
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


def taskdeck(data: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


async def cluster_object(data: Path, run: str, action: str = "a0"):
    from engine.client import connect

    remote = connect(data)
    try:
        return await remote.cluster_object(run, action)
    finally:
        await remote.close()


@pytest.fixture
def cluster(tmp_path):
    """An engine on the emulator running its tasks as Pods, and a node running them."""
    with EmulatorThread() as emulator, KubeletSimulator(emulator, namespace="team-a") as kubelet:
        kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", "team-a")
        data = tmp_path / "data"
        engine = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data), "--headless",
                                   "--backend", "kubernetes", "--kubeconfig", str(kubeconfig), "--tasks-on", "pods",
                                   "--allow-dir", str(ROOT)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.time() + 60
            while not (data / "engine.json").exists():
                assert engine.poll() is None, engine.stderr.read()
                assert time.time() < deadline, "the engine did not start"
                time.sleep(0.1)
            yield data, emulator, kubelet, client.CoreV1Api(client.ApiClient(client.Configuration(host=emulator.url)))
        finally:
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
    running = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data), "run", "--json",
                                "examples/fanout.py", "nap", "--x", "1"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not kubelet.started:
            assert time.time() < deadline and running.poll() is None, "the pod never started"
            time.sleep(0.2)
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
