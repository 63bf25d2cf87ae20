"""`--raw-data s3://...`: with tasks on pods, inputs, outputs and code bundles live on an object store, as on
a cluster where pods share no disk with the engine. A real S3 API server (moto's server mode) on localhost;
the engine and the SDK in each Pod (tests/kubelet.py runs them for real) reach it through the SDK's storage
layer. gs:// and abfs:// take the same path through that layer and are not tested here."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kube_apiserver import EmulatorThread
from kubelet import KubeletSimulator
from s3_server import SECRET_KEY
from test_task_pods import ROOT, run_json, start_engine

pytestmark = pytest.mark.sdk


@pytest.fixture
def s3_cluster(tmp_path, s3_server, s3_bucket):
    """An engine on the emulator, tasks as Pods, its data under s3://BUCKET/td; a node running the Pods with
    nothing but what their spec gives them (no shared data directory)."""
    with EmulatorThread() as emulator, KubeletSimulator(emulator, namespace="team-a") as kubelet:
        kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", "team-a")
        data = tmp_path / "data"
        engine = start_engine(data, kubeconfig, "--raw-data", f"s3://{s3_bucket}/td", env=s3_server.env())
        try:
            yield data, emulator, kubelet, s3_server, s3_bucket
        finally:
            if engine.poll() is None:
                engine.terminate()
                engine.wait(30)


async def wait_for_run(data, run: str) -> dict:
    from engine.client import connect

    remote = connect(data)
    try:
        return await remote.wait(run, 120)
    finally:
        await remote.close()


async def action_io(data, run: str):
    from engine.client import connect

    remote = connect(data)
    try:
        return await remote.action_io(run, "a0", 1)
    finally:
        await remote.close()


def test_a_run_keeps_its_inputs_outputs_and_code_on_the_object_store(s3_cluster):
    data, emulator, kubelet, s3, bucket = s3_cluster
    result = run_json(data, "examples/basics.py", "add", "--x", "2", "--y", "40")
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 42}, result
    run = result["run"]
    keys = s3.keys(bucket, "td/")
    base = f"td/data/flytesnacks/development/{run}"
    assert f"{base}/inputs/inputs.pb" in keys and f"{base}/a0/1/outputs.pb" in keys, keys
    bundles = [k for k in keys if k.startswith("td/uploads/flytesnacks/development/") and k.endswith(".tar.gz")]
    assert bundles, keys  # `taskdeck run` shipped its code there
    [pod_name] = [n for n in kubelet.started if run in n]
    pod = emulator.server.store.objects[("pods", "team-a", pod_name)]
    args = pod["spec"]["containers"][0]["args"]
    assert f"s3://{bucket}/{bundles[0]}" in args and f"s3://{bucket}/{base}/inputs/inputs.pb" in args, args
    # the node got the store's address and credentials from the Secret, never from the pod spec
    env = kubelet.environments[pod_name]
    assert env["FLYTE_AWS_SECRET_ACCESS_KEY"] == SECRET_KEY and env["FLYTE_AWS_ENDPOINT"] == s3.url
    assert SECRET_KEY not in json.dumps(pod)
    # nothing of the run's data was written to the engine's disk: it has the log, no inputs or outputs
    assert not (data / "data").exists() or not any((data / "data").rglob("*.pb"))
    io = asyncio.run(action_io(data, run))  # what the console's detail shows is read from the store
    assert io.inputs == {"x": 2, "y": 40} and io.outputs == {"o0": 42}, io


def test_a_parent_in_a_pod_passes_its_childrens_data_through_the_object_store(s3_cluster):
    data, emulator, kubelet, s3, bucket = s3_cluster
    result = run_json(data, "examples/fanout.py", "sum_of_squares", "--n", "3")
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 0 + 1 + 4}, result
    run = result["run"]
    assert len([n for n in kubelet.started if run in n]) == 4
    outputs = [k for k in s3.keys(bucket, f"td/data/flytesnacks/development/{run}/") if k.endswith("/outputs.pb")]
    assert len(outputs) == 4, outputs  # the parent's and each child's, all on the store


def test_a_tasks_report_is_read_from_the_object_store(s3_cluster):
    data, emulator, kubelet, s3, bucket = s3_cluster
    result = run_json(data, "tests/programs/report_tasks.py", "summarize", "--n", "5")
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 10}, result
    shown = subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data), "get", "report",
                            result["run"], "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert report["path"] == f"s3://{bucket}/td/data/flytesnacks/development/{result['run']}/a0/1/report.html"
    assert "Sum of 5 total 10" in report["summary"], report


def test_a_deployed_task_runs_from_its_bundle_on_the_object_store(s3_cluster):
    data, emulator, kubelet, s3, bucket = s3_cluster
    deployed = subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data), "deploy",
                               "examples/basics.py", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stderr
    result = run_json(data, "deployed-task", "basics.add", "--x", "20", "--y", "22")
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 42}, result
    [pod_name] = [n for n in kubelet.started if result["run"] in n]
    args = emulator.server.store.objects[("pods", "team-a", pod_name)]["spec"]["containers"][0]["args"]
    assert args[args.index("--tgz") + 1].startswith(f"s3://{bucket}/td/uploads/"), args


def test_a_task_error_is_read_from_the_object_store(s3_cluster):
    data, emulator, kubelet, s3, bucket = s3_cluster
    result = run_json(data, "examples/basics.py", "boom", "--x", "31337")
    assert result["phase"] == "FAILED", result
    assert result["error"]["kind"] == "USER" and "boom 31337" in result["error"]["message"], result
    run = result["run"]
    assert f"td/data/flytesnacks/development/{run}/a0/1/error.pb" in s3.keys(bucket, "td/")


def test_a_cached_child_is_computed_once_across_runs_with_its_outputs_on_the_store(s3_cluster, tmp_path):
    data, emulator, kubelet, s3, bucket = s3_cluster
    ledger = tmp_path / "ledger"  # the node runs on this machine: the task can append to a local file
    runs = [run_json(data, "examples/cached.py", "square_twice", "--x", "7", "--ledger", str(ledger))
            for _ in range(2)]
    assert [r["outputs"] for r in runs] == [{"o0": 49}, {"o0": 49}], runs
    assert ledger.read_text().splitlines() == ["slow_square(7)"]
    second = runs[1]["run"]
    assert len([n for n in kubelet.started if second in n]) == 1  # the parent's pod only: the child was a hit
    child_outputs = [k for k in s3.keys(bucket, f"td/data/flytesnacks/development/{second}/")
                     if k.endswith("/outputs.pb") and "/a0/" not in k]
    assert child_outputs, "the hit's outputs were copied to the child's prefix on the store"


def test_an_unusable_object_store_is_one_clear_error_at_start(tmp_path, s3_server):
    with EmulatorThread() as emulator:
        kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", "team-a")
        done = subprocess.run(
            [sys.executable, "-m", "console.cli", "--data-dir", str(tmp_path / "data"), "--headless", "--backend",
             "kubernetes", "--kubeconfig", str(kubeconfig), "--tasks-on", "pods", "--raw-data", "s3://no-such-bucket/x"],
            cwd=ROOT, capture_output=True, text=True, timeout=120, env={**s3_server_env(s3_server)})
    assert done.returncode != 0
    assert "cannot use the raw-data store s3://no-such-bucket/x" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def s3_server_env(s3_server) -> dict[str, str]:
    return {**os.environ, **s3_server.env()}


@pytest.mark.parametrize("args, message", [
    (["--raw-data", "s3://bucket/x"], "--raw-data is for --tasks-on pods"),
    (["--backend", "kubernetes", "--tasks-on", "pods", "--raw-data", "/tmp/x"], "must be an object store prefix"),
    (["--backend", "kubernetes", "--tasks-on", "pods", "--raw-data", "s3://bucket/../x"], "'..'"),
])
def test_a_bad_raw_data_option_is_refused_with_the_reason(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(tmp_path / "data"), "--headless",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_the_stock_flyte_cli_uploads_its_code_to_the_object_store(s3_cluster, tmp_path):
    """`flyte run` (unchanged) against an engine with --raw-data: its signed upload lands on the engine, which
    keeps it on the object store and gives that URI as the native URL, so the Pod fetches the code from there."""
    data, emulator, kubelet, s3, bucket = s3_cluster
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "examples" / "basics.py", project)
    deadline = time.time() + 60
    while "flyteUrl" not in (data / "engine.json").read_text():
        assert time.time() < deadline, "the engine serves no TLS listener"
        time.sleep(0.1)
    written = subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data), "flyte-config", "--write"],
                             cwd=project, capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    flyte = str(Path(sys.executable).parent / "flyte")
    out = subprocess.run([flyte, "run", "basics.py", "add", "--x", "2", "--y", "40"], cwd=project,
                         capture_output=True, text=True, timeout=180,
                         env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"})
    assert out.returncode == 0, out.stdout + out.stderr
    run = (re.search(r"Created Run: (\S+)", out.stdout) or re.search(r"/runs/([a-z0-9-]+)", out.stdout)).group(1)
    result = asyncio.run(wait_for_run(data, run))
    assert result["phase"] == "SUCCEEDED" and result["outputs"] == {"o0": 42}, result
    [pod_name] = [n for n in kubelet.started if run in n]
    args = emulator.server.store.objects[("pods", "team-a", pod_name)]["spec"]["containers"][0]["args"]
    bundle = args[args.index("--tgz") + 1]
    assert bundle.startswith(f"s3://{bucket}/td/uploads/"), args
    assert bundle.removeprefix(f"s3://{bucket}/") in s3.keys(bucket, "td/uploads/")
