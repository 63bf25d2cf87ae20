"""The controller services at the protocol level, with flyteidl2's own Connect clients (no SDK process)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.actions import actions_service_pb2
from flyteidl2.actions.actions_service_connect import ActionsServiceClient
from flyteidl2.common import identifier_pb2, identity_pb2, phase_pb2
from flyteidl2.core import literals_pb2, types_pb2
from flyteidl2.workflow import queue_service_pb2, run_definition_pb2, state_service_pb2
from flyteidl2.workflow.queue_service_connect import QueueServiceClient
from flyteidl2.workflow.state_service_connect import StateServiceClient

from engine import connect
from engine.engine import Engine, EngineConfig
from engine.model import task_action_name
from engine.phases import ActionPhase
from helpers import eventually, run_endpoint, sleep_inputs, sleep_spec


@pytest.fixture
async def engine(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, requeue_after=0.2))
    await engine.start()
    yield engine
    await engine.stop()


async def _root(engine: Engine, seconds: float = 60):
    run = await engine.runs.create_run(sleep_spec(), sleep_inputs(seconds))
    await eventually(lambda: (engine.store.peek(task_action_name(run.run_name, "a0")) or run) and
                     engine.store.peek(task_action_name(run.run_name, "a0")).status.plugin_phase == "PhaseRunning")
    return run


def _ids(run, name):
    run_id = identifier_pb2.RunIdentifier(org="local", project=run.project, domain=run.domain, name=run.run_name)
    return run_id, identifier_pb2.ActionIdentifier(run=run_id, name=name)


def _child_request(run, name, input_uri: str):
    _, action_id = _ids(run, name)
    return queue_service_pb2.EnqueueActionRequest(
        action_id=action_id, parent_action_name="a0", input_uri=input_uri, run_output_base=run.run_output_base,
        task=run_definition_pb2.TaskAction(spec=sleep_spec()))


async def test_enqueue_is_idempotent_and_watch_sends_snapshot_sentinel_then_live(engine, tmp_path):
    run = await _root(engine)
    inputs = Path(run.run_output_base) / "child" / "inputs.pb"
    inputs.parent.mkdir(parents=True)
    inputs.write_bytes(sleep_inputs(0.2).SerializeToString())
    queue = QueueServiceClient(run_endpoint(engine, run))
    state = StateServiceClient(run_endpoint(engine, run))
    await queue.enqueue_action(_child_request(run, "c1", str(inputs)))
    with pytest.raises(ConnectError) as duplicate:
        await queue.enqueue_action(_child_request(run, "c1", str(inputs)))
    assert duplicate.value.code == Code.ALREADY_EXISTS

    _, parent_id = _ids(run, "a0")
    received: list = []

    async def consume():
        async for message in state.watch(state_service_pb2.WatchRequest(parent_action_id=parent_id)):
            received.append(message)
            if message.HasField("action_update") and message.action_update.action_id.name == "c2" and \
                    message.action_update.phase == phase_pb2.ACTION_PHASE_SUCCEEDED:
                return

    watcher = asyncio.create_task(consume())
    await eventually(lambda: any(m.HasField("control_message") for m in received))
    first_sentinel = next(i for i, m in enumerate(received) if m.HasField("control_message"))
    assert [m.action_update.action_id.name for m in received[:first_sentinel]] == ["c1"]  # known children first
    await queue.enqueue_action(_child_request(run, "c2", str(inputs)))
    await asyncio.wait_for(watcher, 30)
    live = [m.action_update for m in received[first_sentinel + 1:]]
    c2 = [u for u in live if u.action_id.name == "c2"]
    # Updates are coalesced to the latest state per tick (as Flyte's informer does): phases only move forward.
    assert [u.phase for u in c2] == sorted(u.phase for u in c2)
    assert c2[-1].phase == phase_pb2.ACTION_PHASE_SUCCEEDED
    assert c2[-1].output_uri.endswith(f"/{run.run_name}/c2/1")  # the attempt prefix holding outputs.pb
    assert all(u.output_uri for u in c2)  # in every phase, as Flyte's: the SDK's informer warns without one
    child = engine.store.peek(task_action_name(run.run_name, "c2"))
    assert child.metadata.owner_references[0].name == task_action_name(run.run_name, "a0")
    assert child.spec.run_output_base == run.run_output_base


async def test_a_child_that_ends_within_the_hold_sends_its_end_alone_a_longer_one_its_progress_too(
        engine, monkeypatch):
    monkeypatch.setattr(connect, "WATCH_HOLD_SECONDS", 1.0)  # wide, so a loaded machine cannot blur it
    run = await _root(engine)
    base = Path(run.run_output_base)
    for name, seconds in (("quick", 0.3), ("slow", 2.5)):
        (base / name).mkdir(parents=True)
        (base / name / "inputs.pb").write_bytes(sleep_inputs(seconds).SerializeToString())
    queue = QueueServiceClient(run_endpoint(engine, run))
    state = StateServiceClient(run_endpoint(engine, run))
    _, parent_id = _ids(run, "a0")
    updates: list = []
    live = asyncio.Event()

    async def consume():
        async for message in state.watch(state_service_pb2.WatchRequest(parent_action_id=parent_id)):
            if message.HasField("control_message"):
                live.set()
            elif message.HasField("action_update"):
                updates.append((message.action_update.action_id.name, message.action_update.phase))
                if len({n for n, p in updates if p == phase_pb2.ACTION_PHASE_SUCCEEDED}) == 2:
                    return

    watcher = asyncio.create_task(consume())
    await asyncio.wait_for(live.wait(), 10)
    for name in ("quick", "slow"):
        await queue.enqueue_action(_child_request(run, name, str(base / name / "inputs.pb")))
    await asyncio.wait_for(watcher, 30)
    quick = [p for n, p in updates if n == "quick"]
    slow = [p for n, p in updates if n == "slow"]
    # The quick child's queued and running phases were superseded within the hold: the SDK hears its end.
    assert quick == [phase_pb2.ACTION_PHASE_SUCCEEDED]
    # The slow one was running past the hold: its progress is sent, then its end.
    assert phase_pb2.ACTION_PHASE_RUNNING in slow and slow[-1] == phase_pb2.ACTION_PHASE_SUCCEEDED
    assert slow == sorted(slow)


async def test_enqueue_under_a_missing_parent_is_not_found(engine):
    run = await _root(engine)
    request = _child_request(run, "c1", f"{run.run_output_base}/c1/inputs.pb")
    request.parent_action_name = "nope"
    with pytest.raises(ConnectError) as error:
        await QueueServiceClient(run_endpoint(engine, run)).enqueue_action(request)
    assert error.value.code == Code.NOT_FOUND


async def test_actions_service_abort_and_signal(engine, tmp_path):
    run = await _root(engine)
    client = ActionsServiceClient(run_endpoint(engine, run))
    _, cond_id = _ids(run, "cond")
    condition = run_definition_pb2.ConditionAction(name="ok", type=types_pb2.LiteralType(
        simple=types_pb2.SimpleType.INTEGER))
    action = actions_service_pb2.Action(action_id=cond_id, parent_action_name="a0", input_uri="unused",
                                        run_output_base=run.run_output_base, condition=condition)
    await client.enqueue(actions_service_pb2.EnqueueRequest(action=action))
    await client.enqueue(actions_service_pb2.EnqueueRequest(action=action))  # an existing condition is fine
    key = (run.project, run.domain, run.run_name, "cond")
    await eventually(lambda: _phase(engine, key, ActionPhase.PAUSED))
    wrong = literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(string_value="x")))
    with pytest.raises(ConnectError) as error:
        await client.signal(actions_service_pb2.SignalRequest(action_id=cond_id, value=wrong))
    assert error.value.code == Code.INVALID_ARGUMENT
    value = literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(integer=5)))
    who = identity_pb2.EnrichedIdentity(user=identity_pb2.User(id=identifier_pb2.UserIdentifier(subject="ada")))
    await client.signal(actions_service_pb2.SignalRequest(action_id=cond_id, value=value, signalled_by=who))
    await eventually(lambda: _phase(engine, key, ActionPhase.SUCCEEDED))
    assert engine.store.peek(task_action_name(run.run_name, "cond")).status.signalled_by == "ada"

    _, root_id = _ids(run, "a0")
    await client.abort(actions_service_pb2.AbortRequest(action_id=root_id, reason="done"))
    await eventually(lambda: _phase(engine, key[:3] + ("a0",), ActionPhase.ABORTED))
    await client.abort(actions_service_pb2.AbortRequest(action_id=root_id, reason="again"))  # idempotent


async def _phase(engine, key, phase):
    row = await engine.store.get_action(key)
    return row is not None and ActionPhase(row.phase) == phase


async def test_an_unsignalled_condition_times_out(engine):
    run = await _root(engine)
    condition = run_definition_pb2.ConditionAction(
        name="late", type=types_pb2.LiteralType(simple=types_pb2.SimpleType.BOOLEAN))
    condition.timeout.FromTimedelta(dt.timedelta(seconds=0.5))
    await engine.runs.create_condition(run.run_name, "late", "a0", condition)
    key = (run.project, run.domain, run.run_name, "late")
    await eventually(lambda: _phase(engine, key, ActionPhase.TIMED_OUT), timeout=10)
    obj = engine.store.peek(task_action_name(run.run_name, "late"))
    assert obj.status.error_state.code == "ConditionTimedOut"
    with pytest.raises(ValueError):
        await engine.runs.signal_text(run.run_name, "late", "true")  # too late
