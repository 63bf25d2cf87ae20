"""`taskdeck --backend kubernetes`: the engine keeps its TaskActions on a Kubernetes API server (here the
emulator, tests/kube_apiserver.py) and real flyte SDK tasks run through it as on the embedded default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from kube_apiserver import EmulatorThread

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.sdk


def taskdeck(data: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_a_real_sdk_run_keeps_its_task_actions_on_the_cluster(tmp_path):
    with EmulatorThread() as emulator:
        kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", "flyte")
        data = tmp_path / "data"
        engine = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data), "--headless",
                                   "--backend", "kubernetes", "--kubeconfig", str(kubeconfig), "--namespace", "team-a",
                                   "--allow-dir", str(ROOT)], cwd=ROOT, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.time() + 60
            while not (data / "engine.json").exists():
                assert engine.poll() is None, engine.stderr.read()
                assert time.time() < deadline, "the engine did not start"
                time.sleep(0.1)
            done = taskdeck(data, "run", "--json", "examples/basics.py", "add", "--x", "2", "--y", "40")
            assert done.returncode == 0, done.stdout + done.stderr
            result = json.loads(done.stdout)
            assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 42}
            api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=emulator.url)))
            listed = api.list_namespaced_custom_object("flyte.org", "v1", "team-a", "taskactions",
                                                       label_selector=f"flyte.org/run={result['run']}")
            [resource] = listed["items"]
            conditions = {c["type"]: c["status"] for c in resource["status"]["conditions"]}
            assert conditions["Succeeded"] == "True" and resource["spec"]["actionName"] == "a0"
            shown = taskdeck(data, "get", "actions", result["run"], "--json")
            assert shown.returncode == 0 and json.loads(shown.stdout)[0]["phase"] == "SUCCEEDED", shown.stderr
        finally:
            engine.terminate()
            engine.wait(30)


def test_a_cluster_that_cannot_be_reached_is_one_clear_line(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "gone",
                                      "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
                                      "users": [{"name": "u", "user": {}}],
                                      "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}]}))
    done = taskdeck(tmp_path / "data", "--headless", "--backend", "kubernetes", "--kubeconfig", str(kubeconfig),
                    timeout=60)
    assert done.returncode != 0 and "cannot be reached" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    misused = taskdeck(tmp_path / "data", "--headless", "--namespace", "x")
    assert misused.returncode == 2 and "--backend kubernetes" in misused.stderr
    bad = taskdeck(tmp_path / "data", "--headless", "--backend", "kubernetes", "--kubeconfig", str(kubeconfig),
                   "--namespace", "Not_A_Label")
    assert bad.returncode == 2 and "namespace" in bad.stderr
