"""``taskdeck render RUN[/ACTION]``: the object the Kubernetes backend would create for an action, built from
its TaskAction, through the client interface, the API and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.client.local import LocalClient
from engine.client.remote import RemoteClient
from engine.errors import RunNotFoundError
from engine.phases import ActionPhase
from helpers import cli, run_sdk_task, task_file
from test_dask import TASKS, _errors, daskjob_validator

pytestmark = pytest.mark.sdk
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_a_python_task_renders_as_the_pod_flyte_would_create(engine):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    result = await run_sdk_task(engine, EXAMPLES / "basics.py", "add", x=2, y=40)
    assert result.phase == ActionPhase.SUCCEEDED
    run = result.run.run_name
    pod = await LocalClient(engine.services).render(run)
    kubernetes_validate.validate(pod, "1.32", strict=True)
    assert pod["kind"] == "Pod" and pod["metadata"]["name"] == f"{run}-a0-0"
    assert pod["metadata"]["labels"]["run"] == run and pod["metadata"]["ownerReferences"][0]["uid"]
    args = pod["spec"]["containers"][0]["args"]
    assert "{{" not in " ".join(args) and args[0] == "a0"

    remote = RemoteClient(engine.url, engine.authority.owner_token)
    try:
        assert await remote.render(run, "a0") == pod
        with pytest.raises(RunNotFoundError):
            await remote.render(run, "nope")
    finally:
        await remote.close()
    code, out, err = await cli(engine.data_dir, "render", f"{run}/a0")
    assert code == 0, err
    assert yaml.safe_load(out) == pod
    code, out, err = await cli(engine.data_dir, "render", "Bad/Name")
    assert code == 2 and len(err.strip().splitlines()) == 1, err


async def test_a_dask_task_renders_as_its_daskjob(engine, tmp_path):
    tasks = task_file(tmp_path, "dask_tasks.py", TASKS, "distributed", "flyteplugins.dask")
    result = await run_sdk_task(engine, tasks, "total", timeout=180, n=3)
    assert result.phase == ActionPhase.SUCCEEDED
    job = await LocalClient(engine.services).render(result.run.run_name)
    assert job["kind"] == "DaskJob" and job["spec"]["cluster"]["spec"]["worker"]["replicas"] == 2
    assert _errors(daskjob_validator(), job) == []
