"""The task cache: keys as the SDK computes them, hits, population, reservations, fail-open and fail-closed."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from flyteidl2.task import common_pb2

from engine import cache
from engine.engine import Engine, EngineConfig
from engine.events import decode_event
from engine.literals import primitive_literal
from engine.phases import ActionPhase
from engine.plugins.core import PhaseInfo
from engine.store.sqlite import SqliteStore
from helpers import ScriptedPlugin, cached_spec, eventually, int_inputs, run_sdk_task
from kube_apiserver import backend_config

EXAMPLES = Path(__file__).parent.parent / "examples"


inputs = int_inputs


class Behaviour:
    """Per run: "ok" writes outputs.pb (o0 = 42) and succeeds, "hold" keeps running, "fail" fails."""

    def __init__(self):
        self.modes: dict[str, str] = {}

    def __call__(self, tctx, index):
        mode = self.modes.get(tctx.metadata.run_name, "ok")
        if mode == "hold":
            return PhaseInfo.running()
        if mode == "fail":
            return PhaseInfo.failure("ValueError", "boom")
        if mode == "no-outputs":
            return PhaseInfo.success()
        os.makedirs(tctx.output_prefix, exist_ok=True)
        outputs = common_pb2.Outputs(literals=[common_pb2.NamedLiteral(name="o0", value=primitive_literal(42))])
        with open(os.path.join(tctx.output_prefix, "outputs.pb"), "wb") as f:
            f.write(outputs.SerializeToString())
        return PhaseInfo.success()


@pytest.fixture(params=["embedded", "kubernetes", "kubernetes+postgresql"])
async def setup(tmp_path, request):
    with backend_config(request.param, tmp_path, request) as backend:
        engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False, requeue_after=1.0,
                                     gc_interval_seconds=0, **backend))
        behaviour = Behaviour()
        plugin = ScriptedPlugin(behaviour)
        engine.registry.register(plugin)
        await engine.start()
        yield engine, plugin, behaviour
        await engine.stop()


def ran(plugin: ScriptedPlugin, run_name: str) -> bool:
    return any(name.startswith(f"{run_name}-") for name, _ in plugin.handled)


# ---------------------------------------------------------------------------- keys
def test_the_engines_key_is_the_sdks_for_the_same_task_inputs_interface_and_version():
    from flyte._internal.runtime import convert

    from engine.sdk import inputs_from_strings, load_task, serialize_task

    task = load_task(EXAMPLES / "cached.py", "slow_square")
    template = serialize_task(task, project="p", domain="d", root_dir=EXAMPLES).task_template
    assert cache.is_discoverable(template) and list(template.metadata.cache_ignore_input_vars) == ["note"]

    def both(**values):
        proto = inputs_from_strings(task, {k: str(v) for k, v in values.items()})
        sdk = convert.generate_cache_key_hash(
            task.name, convert.generate_inputs_hash_from_proto(proto), template.interface,
            template.metadata.discovery_version, list(template.metadata.cache_ignore_input_vars), proto)
        return cache.cache_key(template, proto), sdk

    ours, sdk = both(x=7, ledger="/tmp/l", note="a")
    assert ours == sdk
    assert both(x=7, ledger="/tmp/l", note="something else")[0] == ours  # an ignored input
    assert both(x=8, ledger="/tmp/l", note="a")[0] != ours
    template.metadata.discovery_version = "v2"  # a new cache version misses
    assert cache.cache_key(template, inputs_from_strings(task, {"x": "7", "ledger": "/tmp/l"})) != ours


def test_msgpack_inputs_hash_the_same_whatever_their_key_order():
    import msgpack
    from flyte._internal.runtime import convert
    from flyteidl2.core import literals_pb2

    def binary(value: dict) -> literals_pb2.Literal:
        return literals_pb2.Literal(scalar=literals_pb2.Scalar(
            binary=literals_pb2.Binary(value=msgpack.packb(value), tag="msgpack")))

    first, second = binary({"b": 1, "a": {"y": 2, "x": 3}}), binary({"a": {"x": 3, "y": 2}, "b": 1})
    assert cache._literal_repr(first) == cache._literal_repr(second)
    assert cache._literal_repr(first) == convert.generate_inputs_repr_for_literal(first)


# ---------------------------------------------------------------------------- hits and misses
async def test_a_miss_runs_and_populates_then_a_hit_succeeds_without_running(setup):
    engine, plugin, _ = setup
    first = await engine.runs.create_run(cached_spec(), inputs(1), name="rfirst")
    assert (await engine.runs.wait_for_run(first.run_name, 10)).phase == ActionPhase.SUCCEEDED
    assert (await engine.runs.get_run("rfirst")).cache_status == cache.CACHE_POPULATED
    [entry] = await engine.runs.list_cache()
    assert (entry.run_name, entry.task_name, entry.cache_version) == ("rfirst", "test.cached", "v1")
    assert entry.key == (await engine.runs.get_run("rfirst")).cache_key

    second = await engine.runs.create_run(cached_spec(), inputs(1), name="rsecond")
    result = await engine.runs.wait_for_run(second.run_name, 10)
    assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": 42}
    assert not ran(plugin, "rsecond")
    assert result.run.cache_status == cache.CACHE_HIT
    statuses = [decode_event(e).cache_status for e in await engine.runs.list_events(result.run.key)]
    assert statuses[-1] == cache.CACHE_HIT

    other = await engine.runs.create_run(cached_spec(), inputs(2), name="rotherinput")
    await engine.runs.wait_for_run(other.run_name, 10)
    assert ran(plugin, "rotherinput")
    bumped = await engine.runs.create_run(cached_spec(version="v2"), inputs(1), name="rnewversion")
    await engine.runs.wait_for_run(bumped.run_name, 10)
    assert ran(plugin, "rnewversion")  # a new cache version misses
    assert len(await engine.runs.list_cache()) == 3


async def test_a_failed_run_writes_nothing_and_releases_its_reservation(setup):
    engine, plugin, behaviour = setup
    behaviour.modes["rfails"] = "fail"
    run = await engine.runs.create_run(cached_spec(serializable=True), inputs(5), name="rfails")
    assert (await engine.runs.wait_for_run(run.run_name, 10)).phase == ActionPhase.FAILED
    assert await engine.runs.list_cache() == []
    started = time.monotonic()
    again = await engine.runs.create_run(cached_spec(serializable=True), inputs(5), name="ragain")
    assert (await engine.runs.wait_for_run(again.run_name, 10)).phase == ActionPhase.SUCCEEDED
    assert ran(plugin, "ragain")
    assert time.monotonic() - started < 1.5  # it did not wait out a reservation the failure left behind (3 s)


async def test_a_vanished_outputs_file_is_a_miss_not_a_broken_success(setup):
    engine, plugin, _ = setup
    await engine.runs.wait_for_run((await engine.runs.create_run(cached_spec(), inputs(3), name="rorig")).run_name, 10)
    [entry] = await engine.runs.list_cache()
    os.unlink(entry.outputs_uri)
    result = await engine.runs.wait_for_run(
        (await engine.runs.create_run(cached_spec(), inputs(3), name="rrecompute")).run_name, 10)
    assert result.phase == ActionPhase.SUCCEEDED and ran(plugin, "rrecompute") and result.outputs == {"o0": 42}


async def test_a_success_without_its_declared_outputs_is_not_cached_and_no_outputs_at_all_is(setup):
    from flyteidl2.core import interface_pb2, types_pb2

    engine, plugin, behaviour = setup
    spec = cached_spec(name="test.declares")
    spec.task_template.interface.outputs.variables.add(key="o0", value=interface_pb2.Variable(
        type=types_pb2.LiteralType(simple=types_pb2.SimpleType.INTEGER)))
    behaviour.modes["rmissing"] = "no-outputs"
    result = await engine.runs.wait_for_run((await engine.runs.create_run(spec, inputs(1), name="rmissing")).run_name, 10)
    assert result.run.cache_status == cache.CACHE_PUT_FAILURE and await engine.runs.list_cache() == []

    behaviour.modes["rnothing"] = behaviour.modes["rnothing2"] = "no-outputs"
    for name in ("rnothing", "rnothing2"):  # cached_spec declares no outputs: cached all the same
        await engine.runs.wait_for_run((await engine.runs.create_run(cached_spec(), inputs(1), name=name)).run_name, 10)
    assert (await engine.runs.get_run("rnothing2")).cache_status == cache.CACHE_HIT and not ran(plugin, "rnothing2")


# ---------------------------------------------------------------------------- reservations
async def test_a_second_serializable_action_waits_for_the_owner_then_takes_its_result(setup):
    engine, plugin, behaviour = setup
    behaviour.modes["rowner"] = "hold"
    owner = await engine.runs.create_run(cached_spec(serializable=True), inputs(9), name="rowner")
    await eventually(lambda: ran(plugin, "rowner"))
    waiter = await engine.runs.create_run(cached_spec(serializable=True), inputs(9), name="rwaiter")

    async def waiting():
        events = await engine.runs.list_events(waiter.key)
        return events if any(e.phase == ActionPhase.WAITING_FOR_RESOURCES for e in events) else None

    await eventually(waiting)
    row = await engine.runs.get_run("rwaiter")
    assert row.phase == ActionPhase.QUEUED  # WaitingForCache is QUEUED in the actions table
    # A cluster store records the events before it writes the status they describe.
    await eventually(lambda: engine.store.peek("rwaiter-a0").status.cache_status == cache.CACHE_MISS)
    status = engine.store.peek("rwaiter-a0").status
    assert 'reservation owner "flyte/rowner-a0"' in status.condition("Progressing").message

    key = owner.cache_key
    first = await engine.store.get_or_extend_reservation(key, "probe", 1.0, time.time())
    await asyncio.sleep(1.5)
    renewed = await engine.store.get_or_extend_reservation(key, "probe", 1.0, time.time())
    assert first.owner_id == renewed.owner_id == "flyte/rowner-a0"
    assert renewed.expires_at > first.expires_at  # the owner's reconciles renew it while it runs

    behaviour.modes["rowner"] = "ok"
    engine.reconciler.enqueue("rowner-a0")
    started = time.monotonic()
    result = await engine.runs.wait_for_run("rwaiter", 10)
    assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": 42}
    assert time.monotonic() - started < 1.0  # woken by the release, not by its next periodic reconcile
    assert not ran(plugin, "rwaiter") and result.run.cache_status == cache.CACHE_HIT


async def test_aborting_the_owner_releases_the_reservation_and_a_waiter_takes_over(setup):
    engine, plugin, behaviour = setup
    behaviour.modes["rheld"] = "hold"
    await engine.runs.create_run(cached_spec(serializable=True), inputs(4), name="rheld")
    await eventually(lambda: ran(plugin, "rheld"))
    await engine.runs.create_run(cached_spec(serializable=True), inputs(4), name="rnext")
    await eventually(lambda: engine.store.peek("rnext-a0") is not None
                     and engine.store.peek("rnext-a0").status.cache_status == cache.CACHE_MISS)
    assert not ran(plugin, "rnext")
    started = time.monotonic()
    await engine.runs.abort_action("rheld")
    result = await engine.runs.wait_for_run("rnext", 10)
    assert time.monotonic() - started < 1.5  # released and woken, not expired (3 s) and polled
    assert result.phase == ActionPhase.SUCCEEDED and ran(plugin, "rnext")
    assert result.run.cache_status == cache.CACHE_POPULATED


async def test_a_dead_owners_reservation_expires_and_another_owner_takes_it(setup):
    engine, plugin, _ = setup
    spec = cached_spec(serializable=True)
    key = cache.catalog_key(spec.task_template, cache.cache_key(spec.task_template, inputs(6)))
    await engine.store.get_or_extend_reservation(key, "flyte/ghost-a0", 0.5, time.time())  # expires in 1.5 s
    run = await engine.runs.create_run(spec, inputs(6), name="rsurvivor")
    assert run.cache_key == key
    result = await engine.runs.wait_for_run(run.run_name, 10)
    assert result.phase == ActionPhase.SUCCEEDED and ran(plugin, "rsurvivor")


async def test_store_reservations_grant_extend_block_expire_and_release(tmp_path):
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.start()
    try:
        granted = await store.get_or_extend_reservation("k", "a", 1.0, now=100.0)
        assert (granted.owner_id, granted.expires_at) == ("a", 103.0)  # three heartbeats of grace
        assert (await store.get_or_extend_reservation("k", "b", 1.0, now=102.0)).owner_id == "a"
        assert (await store.get_or_extend_reservation("k", "a", 1.0, now=102.0)).expires_at == 105.0
        await store.release_reservation("k", "b")  # not the owner: nothing happens
        assert (await store.get_or_extend_reservation("k", "b", 1.0, now=104.0)).owner_id == "a"
        assert (await store.get_or_extend_reservation("k", "b", 1.0, now=105.5)).owner_id == "b"  # expired
    finally:
        await store.close()
    reopened = SqliteStore(tmp_path / "db.sqlite")
    await reopened.start()
    try:  # reservations survive a restart
        assert (await reopened.get_or_extend_reservation("k", "c", 1.0, now=106.0)).owner_id == "b"
        await reopened.release_reservation("k", "b")
        assert (await reopened.get_or_extend_reservation("k", "c", 1.0, now=106.0)).owner_id == "c"
    finally:
        await reopened.close()


# ---------------------------------------------------------------------------- failures of the cache itself
async def test_lookup_errors_fail_open(setup, monkeypatch):
    engine, plugin, _ = setup

    async def broken(key):
        raise RuntimeError("catalog unreachable")

    monkeypatch.setattr(engine.store, "cache_get", broken)
    result = await engine.runs.wait_for_run(
        (await engine.runs.create_run(cached_spec(), inputs(1), name="ropen")).run_name, 10)
    assert result.phase == ActionPhase.SUCCEEDED and ran(plugin, "ropen")


async def test_reservation_errors_fail_closed(setup, monkeypatch):
    engine, plugin, _ = setup
    original = engine.store.get_or_extend_reservation

    async def broken(*args, **kwargs):
        raise RuntimeError("reservations unavailable")

    monkeypatch.setattr(engine.store, "get_or_extend_reservation", broken)
    run = await engine.runs.create_run(cached_spec(serializable=True), inputs(1), name="rclosed")
    await asyncio.sleep(1.0)
    assert not ran(plugin, "rclosed")  # nothing runs without the reservation
    assert (await engine.runs.get_run("rclosed")).phase == ActionPhase.QUEUED
    monkeypatch.setattr(engine.store, "get_or_extend_reservation", original)
    result = await engine.runs.wait_for_run(run.run_name, 10)
    assert result.phase == ActionPhase.SUCCEEDED and ran(plugin, "rclosed")


async def test_a_discoverable_task_without_a_task_id_fails_instead_of_requeueing_forever(setup):
    engine, plugin, _ = setup
    spec = cached_spec()
    spec.task_template.ClearField("id")
    result = await engine.runs.wait_for_run((await engine.runs.create_run(spec, inputs(1), name="rnoid")).run_name, 10)
    assert result.phase == ActionPhase.FAILED and result.error["code"] == "BadTaskSpecification"


# ---------------------------------------------------------------------------- real flyte SDK tasks
async def _sdk_run(engine: Engine, task_name: str, **values):
    return await run_sdk_task(engine, EXAMPLES / "cached.py", task_name, **values)


@pytest.fixture
async def sdk_engine(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", requeue_after=2.0))
    await engine.start()
    yield engine
    await engine.stop()


@pytest.mark.sdk
async def test_sdk_cached_child_runs_once_across_two_runs_and_its_key_is_the_engines(sdk_engine, tmp_path):
    from engine.literals import inputs_message
    from engine.paths import input_file
    from flyteidl2.core import tasks_pb2

    engine, ledger = sdk_engine, tmp_path / "ledger"
    first = await _sdk_run(engine, "square_twice", x=7, ledger=ledger)
    second = await _sdk_run(engine, "square_twice", x=7, ledger=ledger)
    assert first.outputs == second.outputs == {"o0": 49}
    assert ledger.read_text().splitlines() == ["slow_square(7)"]  # computed once

    children = {}
    for result in (first, second):
        [child] = [a for a in await engine.runs.list_actions(result.run.run_name) if a.name != "a0"]
        children[result.run.run_name] = child
    assert children[first.run.run_name].cache_status == cache.CACHE_POPULATED
    assert children[second.run.run_name].cache_status == cache.CACHE_HIT

    child = children[first.run.run_name]
    task_action = engine.store.peek(f"{child.run_name}-{child.name}")
    template = tasks_pb2.TaskTemplate()
    template.ParseFromString(task_action.spec.task_template)
    sdk_key = task_action.spec.cache_key  # what the SDK sent with EnqueueAction
    assert sdk_key and sdk_key == cache.cache_key(template, inputs_message(input_file(task_action.spec.input_uri)))
    assert child.cache_key == cache.catalog_key(template, sdk_key)
    assert [e.key for e in await engine.runs.list_cache()] == [child.cache_key]


@pytest.mark.sdk
async def test_sdk_ten_identical_serializable_calls_at_once_run_exactly_once(sdk_engine, tmp_path):
    engine, ledger = sdk_engine, tmp_path / "ledger"
    result = await _sdk_run(engine, "ten_at_once", x=1, ledger=ledger)
    assert result.phase == ActionPhase.SUCCEEDED and result.outputs == {"o0": [101] * 10}
    assert ledger.read_text().splitlines() == ["expensive(1)"]
    children = [a for a in await engine.runs.list_actions(result.run.run_name) if a.name != "a0"]
    statuses = sorted(a.cache_status for a in children)
    assert statuses == [cache.CACHE_HIT] * 9 + [cache.CACHE_POPULATED]


def test_cli_lists_and_clears_entries_and_refuses_an_unscoped_clear(tmp_path):
    import json
    import subprocess
    import sys

    async def populate():
        engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, gc_interval_seconds=0))
        engine.registry.register(ScriptedPlugin(Behaviour()))
        await engine.start()
        try:
            for x in (1, 2):
                await engine.runs.wait_for_run((await engine.runs.create_run(cached_spec(), inputs(x))).run_name, 10)
        finally:
            await engine.stop()

    asyncio.run(populate())

    def taskdeck(*args):
        return subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(tmp_path), "cache", *args],
                              capture_output=True, text=True, timeout=60)

    listed = json.loads(taskdeck("list", "--json").stdout)
    assert [e["taskName"] for e in listed] == ["test.cached", "test.cached"]
    refused = taskdeck("clear")
    assert refused.returncode == 2 and "--all" in refused.stderr
    assert len(json.loads(taskdeck("list", "--json").stdout)) == 2  # nothing lost
    assert taskdeck("clear", listed[0]["key"]).stdout.strip() == "evicted 1 cache entry"
    assert taskdeck("clear", "--task", "test.cached").stdout.strip() == "evicted 1 cache entry"
    assert json.loads(taskdeck("list", "--json").stdout) == []


async def test_an_action_keyed_by_its_inputs_reads_them_off_the_event_loop(tmp_path):
    """Without a key from its spec, an action's cache key needs its inputs: read through the data store's
    async read (an object store's blocks in a thread), never its blocking one on the event loop."""
    inputs = int_inputs(7).SerializeToString()

    class ObjectStore:
        def read(self, uri):
            raise AssertionError("a blocking read on the event loop")

        async def aread(self, uri):
            assert uri == "s3://bucket/run/inputs.pb"
            return inputs

    store = SqliteStore(tmp_path / "db.sqlite")
    await store.start()
    try:
        task_cache = cache.TaskCache(store, files=ObjectStore())
        template = cached_spec().task_template
        config = await task_cache.config(template, "", "s3://bucket/run/inputs.pb", "ns", "a0")
        again = await task_cache.config(template, "", "s3://bucket/run/inputs.pb", "ns", "a1")
        assert config is not None and config.key == again.key
        other = await task_cache.config(template, "spec-key", "s3://bucket/run/inputs.pb", "ns", "a2")
        assert other.key != config.key
    finally:
        await store.close()
