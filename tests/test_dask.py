"""Dask tasks (flyteplugins-dask, task type ``dask``): the DaskJob Flyte would create, its phase table, the
plugin manager's lifecycle rules, and real runs on a local Dask cluster through the engine."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

import crd_schemas

from engine.client.local import LocalClient
from engine.phases import ActionPhase, PluginPhase
from engine.plugins.core import PluginStateManager, TaskExecutionContext, TaskExecutionMetadata
from engine.plugins.dask import DaskPlugin
from engine.plugins.resource_manager import ResourcePluginManager
from engine.plugins.resources import (
    AlreadyExistsError,
    BadRequestError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    ResourceBackend,
    TooLargeError,
)
from helpers import eventually, live_processes, run_sdk_task, start_sdk_task, task_file

def daskjob_validator():
    pytest.importorskip("jsonschema")
    return crd_schemas.validator("DaskJob")


@pytest.fixture(scope="module")
def daskjob_schema():
    return daskjob_validator()


_errors = crd_schemas.errors


def _tctx(tmp_path, custom: dict | None, resources=None, name="rabc-a0", state: bytes | None = None
          ) -> TaskExecutionContext:
    from flyteidl2.core import tasks_pb2
    from google.protobuf import struct_pb2

    template = tasks_pb2.TaskTemplate(type="dask")
    template.container.image = "ghcr.io/flyteorg/flyte:py3.11-v2.12.1"
    template.container.args.extend(["a0", "--inputs", "{{.input}}", "--outputs-path", "{{.outputPrefix}}"])
    if resources:
        for key, value in resources.items():
            template.container.resources.limits.add(name=getattr(tasks_pb2.Resources, key), value=value)
    if custom is not None:
        template.custom.CopyFrom(struct_pb2.Struct())
        template.custom.update(custom)
    md = TaskExecutionMetadata(namespace="flyte", owner_name=name, run_name="rabc", action_name="a0",
                               project="p", domain="d", attempt=1, max_attempts=1, labels={}, annotations={},
                               environment={"ACTION_NAME": "a0", "RUN_NAME": "rabc", "_U_EP_OVERRIDE": "secret"},
                               run_start_time="", owner_uid="6d1f3c2e-0000-4000-8000-000000000001")
    return TaskExecutionContext(metadata=md, task_template_bytes=template.SerializeToString(),
                                input_path=str(tmp_path / "inputs.pb"), output_prefix=str(tmp_path / "out"),
                                raw_output_prefix=str(tmp_path / "out"), checkpoint_prefix=str(tmp_path / "ck"),
                                prev_checkpoint_prefix="", log_path=tmp_path / "1.log",
                                plugin_state=PluginStateManager(state, 1), enqueue_owner=lambda: None, runtime_env={})


@pytest.mark.parametrize("custom, resources", [
    ({"workers": {"numberOfWorkers": 2}, "scheduler": {}}, None),
    ({"workers": {"numberOfWorkers": 4, "image": "my/worker:1",
                  "resources": {"limits": [{"name": "CPU", "value": "2"}, {"name": "MEMORY", "value": "4Gi"}]}},
      "scheduler": {"image": "my/scheduler:1"}}, None),
    (None, {"CPU": "1", "MEMORY": "1Gi"}),
])
def test_the_daskjob_is_built_as_flyte_builds_it_and_validates_strictly(tmp_path, daskjob_schema, custom, resources):
    manager = ResourcePluginManager(DaskPlugin(), backend=None)
    job = manager.with_metadata(DaskPlugin().build_resource(_tctx(tmp_path, custom, resources)),
                                 _tctx(tmp_path, custom, resources))
    assert _errors(daskjob_schema, job) == []
    spec = job["spec"]
    runner = spec["job"]["spec"]["containers"][0]
    assert runner["name"] == "job-runner" and spec["job"]["spec"]["restartPolicy"] == "Never"
    assert runner["args"][:3] == ["a0", "--inputs", str(tmp_path / "inputs.pb")]  # template variables filled
    assert all(e["name"] != "_U_EP_OVERRIDE" for e in runner["env"])  # the engine's credential stays local
    worker = spec["cluster"]["spec"]["worker"]
    scheduler = spec["cluster"]["spec"]["scheduler"]
    assert worker["spec"]["containers"][0]["name"] == "dask-worker"
    assert scheduler["spec"]["containers"][0]["name"] == "scheduler"
    assert [p["port"] for p in scheduler["service"]["ports"]] == [8786, 8787]
    assert job["metadata"]["name"] == "rabc-a0-0" and job["metadata"]["labels"]["flyte.org/managed"] == "true"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TaskAction"
    if custom and custom["workers"].get("image"):
        assert worker["replicas"] == 4 and worker["spec"]["containers"][0]["image"] == "my/worker:1"
        assert "--nthreads" in worker["spec"]["containers"][0]["args"]
        assert scheduler["spec"]["containers"][0]["image"] == "my/scheduler:1"


def test_a_broken_object_fails_the_schema(tmp_path, daskjob_schema):
    job = DaskPlugin().build_resource(_tctx(tmp_path, {"workers": {"numberOfWorkers": 2}}))
    job["spec"]["cluster"]["spec"]["worker"]["replicas"] = "2"
    del job["spec"]["job"]
    assert any("replicas" in e for e in _errors(daskjob_schema, job))
    assert any("'job' is a required property" in e for e in _errors(daskjob_schema, job))


@pytest.mark.parametrize("job_status, phase, reason", [
    ("", PluginPhase.INITIALIZING, "unknown"),
    ("JobCreated", PluginPhase.INITIALIZING, "job created"),
    ("ClusterCreated", PluginPhase.INITIALIZING, "cluster created"),
    ("Running", PluginPhase.RUNNING, ""),
    ("Successful", PluginPhase.SUCCESS, ""),
    ("Failed", PluginPhase.RETRYABLE_FAILURE, "Dask Job failed"),
])
def test_dask_phase_table_row_by_row(tmp_path, job_status, phase, reason):
    info = DaskPlugin().get_task_phase(_tctx(tmp_path, None), {"status": {"jobStatus": job_status}})
    assert info.phase == phase and info.reason == reason
    if phase == PluginPhase.RETRYABLE_FAILURE:
        assert info.err.code == "DownstreamSystemError" and info.err.kind == "USER"


class FakeBackend(ResourceBackend):
    def __init__(self, create_error=None, objects=None):
        self.create_error = create_error
        self.objects = objects or {}

    async def create(self, resource, tctx):
        if self.create_error:
            raise self.create_error
        self.objects[resource["metadata"]["name"]] = resource
        return resource

    async def get(self, identity):
        try:
            return self.objects[identity["metadata"]["name"]]
        except KeyError:
            raise NotFoundError("gone") from None

    async def delete(self, identity):
        if self.objects.pop(identity["metadata"]["name"], None) is None:
            raise NotFoundError("gone")


@pytest.mark.parametrize("error, phase, code", [
    (ForbiddenError("quota"), PluginPhase.RETRYABLE_FAILURE, "RuntimeFailure"),
    (TooLargeError("big"), PluginPhase.PERMANENT_FAILURE, "EntityTooLarge"),
    (InvalidError("bad"), PluginPhase.PERMANENT_FAILURE, "InvalidResource"),
    (BadRequestError("no"), PluginPhase.PERMANENT_FAILURE, "BadRequest"),
    (AlreadyExistsError("there"), PluginPhase.QUEUED, None),
])
async def test_create_errors_map_as_flyte_maps_them(tmp_path, error, phase, code):
    manager = ResourcePluginManager(DaskPlugin(), FakeBackend(create_error=error))
    info = (await manager.handle(_tctx(tmp_path, {"workers": {"numberOfWorkers": 1}}))).info
    assert info.phase == phase and (info.err.code if info.err else None) == code


async def test_a_vanished_or_deleted_resource_is_a_system_failure(tmp_path):
    backend = FakeBackend()
    manager = ResourcePluginManager(DaskPlugin(), backend)
    tctx = _tctx(tmp_path, {"workers": {"numberOfWorkers": 1}})
    assert (await manager.handle(tctx)).info.phase == PluginPhase.QUEUED
    tctx = _tctx(tmp_path, {"workers": {"numberOfWorkers": 1}}, state=tctx.plugin_state.new_state()[0])  # next round
    backend.objects["rabc-a0-0"]["status"] = {"jobStatus": "Running"}
    backend.objects["rabc-a0-0"]["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    info = (await manager.handle(tctx)).info
    assert info.phase == PluginPhase.RETRYABLE_FAILURE and info.err.code == "UnexpectedObjectDeletion"
    assert info.err.kind == "SYSTEM"
    backend.objects.clear()
    info = (await manager.handle(tctx)).info
    assert info.err.code == "ResourceDeletedExternally" and info.err.kind == "SYSTEM"


# ------------------------------------------------------------------ real runs on a local Dask cluster
TASKS = textwrap.dedent('''
    import asyncio, os
    import flyte
    from flyteplugins.dask import Dask, WorkerGroup

    env = flyte.TaskEnvironment(name="dask_env", plugin_config=Dask(workers=WorkerGroup(number_of_workers=2)))

    @env.task
    async def total(n: int) -> str:
        from distributed import Client
        client = Client()
        squares = sum(client.gather(client.map(lambda x: x * x, range(n))))
        workers = len(client.scheduler_info()["workers"])
        return f"{squares} {workers} {client.scheduler.address == os.environ['DASK_SCHEDULER_ADDRESS']}"

    @env.task
    async def broken() -> int:
        raise ValueError("the dask job failed on purpose")

    @env.task
    async def linger(seconds: float) -> float:
        from distributed import Client
        Client()
        await asyncio.sleep(seconds)
        return seconds
''')


def _dask_processes(marker: str) -> list[int]:
    """The cluster's scheduler and workers (their scheduler file is in the engine's data directory)."""
    return live_processes(lambda cmdline, _: b"distributed.cli" in cmdline and marker.encode() in cmdline)


@pytest.fixture
def tasks(tmp_path) -> Path:
    return task_file(tmp_path, "dask_tasks.py", TASKS, "distributed", "flyteplugins.dask")


@pytest.mark.sdk
async def test_a_dask_task_runs_on_its_own_local_cluster_and_leaves_nothing_behind(engine, tasks):
    result = await run_sdk_task(engine, tasks, "total", timeout=180, n=10)
    assert result.phase == ActionPhase.SUCCEEDED, result.error
    assert result.outputs == {"o0": "285 2 True"}  # two workers; the task's Client() joined the cluster
    events = await LocalClient(engine.services).list_events(result.run.run_name, "a0")
    links = dict(link for e in events for link in e.links)
    assert links.get("Dask dashboard", "").startswith("http://127.0.0.1:")  # what the console shows
    await eventually(lambda: not _dask_processes(str(engine.data_dir)), timeout=15)


@pytest.mark.sdk
async def test_a_failing_dask_task_fails_with_its_error_and_tears_down(engine, tasks):
    result = await run_sdk_task(engine, tasks, "broken", timeout=180)
    assert result.phase == ActionPhase.FAILED
    assert "the dask job failed on purpose" in result.error["message"], result.error
    await eventually(lambda: not _dask_processes(str(engine.data_dir)), timeout=15)


@pytest.mark.sdk
async def test_aborting_a_dask_task_tears_its_cluster_down(engine, tasks):
    record = await start_sdk_task(engine, tasks, "linger", seconds=120)
    await eventually(lambda: len(_dask_processes(str(engine.data_dir))) >= 3, timeout=90)

    async def running():
        return ActionPhase((await engine.runs.get_run(record.run_name)).phase) == ActionPhase.RUNNING

    await eventually(running, timeout=90)
    await engine.runs.abort_action(record.run_name, reason="enough")
    result = await engine.runs.wait_for_run(record.run_name, timeout=60)
    assert result.phase == ActionPhase.ABORTED
    await eventually(lambda: not _dask_processes(str(engine.data_dir)), timeout=15)



def test_worker_requests_larger_than_the_machine_are_clamped():
    from engine.plugins.local_dask import clamp_cpus, clamp_memory

    assert clamp_cpus("64", 2) == "2" and clamp_cpus("500m", 2) == "1" and clamp_cpus("2", 4) == "2"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert clamp_memory("1Gi") == "1Gi" or total < 1024 ** 3
    assert clamp_memory("100000Gi") == str(total)


async def test_local_clusters_are_bounded_and_waiters_go_in_arrival_order(tmp_path):
    """Ten cluster tasks at once do not start ten clusters: the backend runs ``max_running`` and the rest
    wait (WaitingForResources), each woken in turn when a place frees."""
    import asyncio

    from engine.plugins.local_backend import LocalOperator, LocalResourceBackend

    release = asyncio.Event()
    started: list[str] = []

    class Held(LocalOperator):
        kind = "DaskJob"
        plugin = DaskPlugin()

        async def run(self, resource, tctx, work_dir, save):
            started.append(resource["metadata"]["name"])
            await release.wait()
            resource["status"]["jobStatus"] = "Successful"

    woken: list[str] = []
    backend = LocalResourceBackend(tmp_path / "work", [Held()], max_running=2)
    managers = ResourcePluginManager(DaskPlugin(), backend)
    contexts = []
    for i in range(4):
        tctx = _tctx(tmp_path, {"workers": {"numberOfWorkers": 1}}, name=f"r{i}-a0")
        tctx.enqueue_owner = lambda i=i: woken.append(f"r{i}")
        contexts.append(tctx)
    phases = [(await managers.handle(t)).info.phase for t in contexts]
    assert phases == [PluginPhase.QUEUED] * 2 + [PluginPhase.WAITING_FOR_RESOURCES] * 2
    await asyncio.sleep(0)
    assert started == ["r0-a0-0", "r1-a0-0"]
    assert (await managers.handle(contexts[3])).info.phase == PluginPhase.WAITING_FOR_RESOURCES  # no overtaking
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert "r2" in woken  # the longest waiter first
    assert (await managers.handle(contexts[2])).info.phase == PluginPhase.QUEUED
    await backend.close()


async def test_an_object_a_stopped_engine_left_is_reported_gone_unless_it_had_ended(tmp_path):
    """A later engine finds the JSON an earlier one kept: an unfinished cluster cannot be driven any more
    (its processes are killed, the object is gone: the manager then fails the attempt as a system
    failure); a finished one keeps its outcome."""
    import json as json_module

    from engine.plugins.local_backend import LocalResourceBackend
    from engine.plugins.local_dask import LocalDaskOperator

    backend = LocalResourceBackend(tmp_path / "work", [LocalDaskOperator()])
    for name, status in (("unfinished", {"jobStatus": "Running", "processes": [[999999, None]]}),
                         ("finished", {"jobStatus": "Successful"})):
        path = backend._path(("DaskJob", "flyte", name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json_module.dumps({"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskJob",
                                           "metadata": {"name": name, "namespace": "flyte"}, "status": status}))
    identity = {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskJob", "metadata": {"namespace": "flyte"}}
    with pytest.raises(NotFoundError, match="lost when the engine stopped"):
        await backend.get({**identity, "metadata": {**identity["metadata"], "name": "unfinished"}})
    assert not backend._path(("DaskJob", "flyte", "unfinished")).exists()
    finished = await backend.get({**identity, "metadata": {**identity["metadata"], "name": "finished"}})
    assert finished["status"]["jobStatus"] == "Successful"


async def test_terminal_objects_no_finalize_removed_are_collected_by_completion_time(tmp_path):
    """The manager garbage-collects its plugin's terminal objects completed more than the TTL ago (Flyte's
    GarbageCollectable): a running one, a recent one and an unmanaged one stay."""
    import datetime as dt
    import json as json_module

    from engine.gc import GarbageCollector
    from engine.plugins.local_backend import LocalResourceBackend
    from engine.plugins.local_dask import LocalDaskOperator

    backend = LocalResourceBackend(tmp_path / "work", [LocalDaskOperator()])
    now = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.timezone.utc)
    managed = {"flyte.org/managed": "true"}
    objects = {"old": ({"jobStatus": "Successful", "endTime": "2026-12-02T09:00:00Z"}, managed),
               "recent": ({"jobStatus": "Failed", "endTime": "2026-12-02T11:30:00Z"}, managed),
               "running": ({"jobStatus": "Running", "startTime": "2026-12-01T00:00:00Z"}, managed),
               "foreign": ({"jobStatus": "Successful", "endTime": "2026-12-01T00:00:00Z"}, {})}
    for name, (status, labels) in objects.items():
        path = backend._path(("DaskJob", "flyte", name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json_module.dumps({"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskJob", "metadata": {
            "name": name, "namespace": "flyte", "labels": labels}, "status": status}))
    manager = ResourcePluginManager(DaskPlugin(), backend)

    class NoTaskActions:
        async def list(self, selector):
            return []

    collector = GarbageCollector(NoTaskActions(), ttl_seconds=3600, clock=lambda: now,
                                 resource_sweeps=[manager.collect_garbage])
    await collector.sweep()
    left = sorted(p.stem for p in (tmp_path / "work" / "resources" / "flyte" / "daskjob").glob("*.json"))
    assert left == ["foreign", "recent", "running"]


MISSING_DISTRIBUTED = textwrap.dedent('''
    import flyte
    from flyteplugins.dask import Dask, WorkerGroup

    # where the task runs, `distributed` cannot be imported (a stand-in package that says so)
    env = flyte.TaskEnvironment(name="no_distributed", env_vars={"PYTHONPATH": "{fake}"},
                                plugin_config=Dask(workers=WorkerGroup(number_of_workers=1)))

    @env.task
    async def total(n: int) -> int:
        return n
''')


@pytest.mark.sdk
async def test_a_dask_task_where_distributed_is_missing_fails_naming_the_extra(engine, tmp_path):
    fake = tmp_path / "fake" / "distributed"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'distributed'\")\n")
    tasks = task_file(tmp_path, "no_distributed.py", MISSING_DISTRIBUTED.replace("{fake}", str(fake.parent)),
                      "distributed", "flyteplugins.dask")
    result = await run_sdk_task(engine, tasks, "total", timeout=120, n=1)
    assert result.phase == ActionPhase.FAILED
    assert "pip install 'taskdeck[dask]'" in result.error["message"], result.error
    await eventually(lambda: not _dask_processes(str(engine.data_dir)), timeout=15)
