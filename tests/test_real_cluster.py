"""End to end on a real Kubernetes cluster: only when KUBECONFIG points at one (`pytest -m cluster`).

Everywhere else (CI included) these are reported as skipped, never as passed: the emulator's tests
(test_kube_*.py) are what runs here. In a throwaway namespace: `taskdeck k8s install`, the TaskAction
store's writes, watch and cascade against the real API server, a real SDK run on the Kubernetes backend,
then `taskdeck k8s uninstall --delete-namespace`.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KUBECONFIG = os.environ.get("KUBECONFIG")
pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(not KUBECONFIG or not Path(KUBECONFIG).is_file(),
                                 reason="KUBECONFIG does not name a kubeconfig file: no real cluster to test against")]


def taskdeck(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "console.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def namespace():
    name = f"taskdeck-e2e-{secrets.token_hex(3)}"
    installed = taskdeck("k8s", "install", "--namespace", name)
    assert installed.returncode == 0, installed.stderr
    yield name
    taskdeck("k8s", "uninstall", "--namespace", name, "--delete-namespace")


async def test_the_store_against_a_real_api_server(namespace):
    import asyncio

    from kubernetes import config

    from engine.model import FINALIZER
    from engine.store.kubernetes import KubernetesResourceStore
    from helpers import make_task_action

    store = KubernetesResourceStore(config.new_client_from_config(), namespace)
    await store.start()
    try:
        watch = store.watch(store.resource_version)
        root = await store.create(make_task_action(finalizers=[FINALIZER]))
        child = await store.create(make_task_action(action="c1", parent=root))
        assert [(await asyncio.wait_for(watch.__anext__(), 30)).type for _ in range(2)] == ["ADDED", "ADDED"]
        root.status.attempts = 1
        await store.update_status(root)
        await store.delete(root.name)
        assert store.peek(child.name) is None
        held = await store.get(root.name)
        held.metadata.finalizers = []
        await store.update(held)
        assert store.peek(root.name) is None
    finally:
        await store.close()


def test_a_real_sdk_run_on_the_kubernetes_backend(namespace, tmp_path):
    done = taskdeck("--data-dir", str(tmp_path / "data"), "--backend", "kubernetes", "--namespace", namespace,
                    "run", "--json", "examples/basics.py", "add", "--x", "2", "--y", "40")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outputs"] == {"o0": 42}
