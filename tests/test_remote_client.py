"""The remote client answers as the in-process one does, and its change feed survives a dropped connection."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from flyteidl2.core import types_pb2
from flyteidl2.workflow import run_definition_pb2

from engine.client import AlreadyExistsError, InvalidRunError, RunNotFoundError
from engine.client.local import LocalClient
from engine.client.remote import RemoteClient
from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.plugins.core import PhaseInfo
from helpers import ScriptedPlugin, eventually, task_spec


def outcome(tctx, index):
    if tctx.metadata.action_name.startswith("hold") or tctx.metadata.run_name.startswith("rhold"):
        return PhaseInfo.running()
    if tctx.metadata.run_name.startswith("rfail") and tctx.metadata.attempt == 1:
        return PhaseInfo.failure("ValueError", "first attempt")
    return PhaseInfo.success()


@pytest.fixture
async def engine(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, requeue_after=0.2))
    engine.registry.register(ScriptedPlugin(outcome))
    await engine.start()
    yield engine
    await engine.stop()


class Proxy:
    """A TCP relay in front of the engine whose connections can all be cut at once."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, reader, writer) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, upstream_writer}

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def cut(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        self.cut()
        self.server.close()


async def test_remote_reads_and_commands_answer_as_the_local_client_does(engine):
    local = LocalClient(engine.services)
    remote = RemoteClient(engine.url, engine.authority.owner_token)
    try:
        done = await engine.runs.create_run(task_spec("scripted"), name="rdone")
        await engine.runs.wait_for_run(done.run_name, timeout=10)
        held = await engine.runs.create_run(task_spec("scripted"), name="rhold1")
        condition = run_definition_pb2.ConditionAction(
            name="approve", prompt="Ship it?", type=types_pb2.LiteralType(simple=types_pb2.SimpleType.BOOLEAN))
        await eventually(lambda: _phase(engine, "rhold1", "a0", ActionPhase.RUNNING))
        await engine.runs.create_condition(held.run_name, "approve", "a0", condition)
        await eventually(lambda: _phase(engine, "rhold1", "approve", ActionPhase.PAUSED))

        assert _json(await remote.list_runs()) == _json(await local.list_runs())
        assert (await remote.get_run("rhold1")).phase == ActionPhase.PAUSED  # a waiting run shows PAUSED
        assert (await remote.get_run("rhold1")).waiting == ("approve",)
        assert _json(await remote.list_actions("rhold1")) == _json(await local.list_actions("rhold1"))
        assert _json(await remote.get_actions("rhold1", ["approve", "nope"])) == _json(await local.get_actions(
            "rhold1", ["approve", "nope"]))
        assert _json(await remote.list_events("rdone", "a0")) == _json(await local.list_events("rdone", "a0"))
        assert await remote.run_counts() == await local.run_counts() == {int(ActionPhase.SUCCEEDED): 1,
                                                                           int(ActionPhase.PAUSED): 1}
        assert await remote.task_action("rhold1", "a0") == await local.task_action("rhold1", "a0")
        assert await remote.action_io("rdone", "a0", 1) == await local.action_io("rdone", "a0", 1)
        assert await remote.read_log("rdone", "a0", 1) == await local.read_log("rdone", "a0", 1)
        info = await remote.condition("rhold1", "approve")
        assert (info.name, info.prompt, info.type_name) == ("approve", "Ship it?", "BOOLEAN")
        assert await remote.result("rdone") == await local.result("rdone")
        assert (await remote.health())["status"] == "ok"

        assert await remote.signal("rhold1", "approve", "yes", by="ada") == "approve"
        await eventually(lambda: _phase(engine, "rhold1", "approve", ActionPhase.SUCCEEDED))
        events = await remote.list_events("rhold1", "approve")
        assert [ActionPhase(e.phase).name for e in events] == ["PAUSED", "SUCCEEDED"]  # conditions have events
        assert "Ship it?" in events[0].reasons[0] and 'signalled by "ada"' in events[1].reasons[0]
        await remote.abort("rhold1", reason="enough")
        waited = await remote.wait("rhold1", 10)
        assert waited["phase"] == "ABORTED" and waited["error"]["message"] == "enough"
        aborted = [e for e in await remote.list_events("rhold1", "a0") if e.phase == ActionPhase.ABORTED]
        assert aborted and aborted[0].reasons == ("enough",)  # the reason is in the event
        assert (await remote.get_run("rhold1")).abort_reason == "enough"

        failed = await engine.runs.create_run(task_spec("scripted"), name="rfail1")
        assert (await remote.wait(failed.run_name, 10))["phase"] == "FAILED"
        assert await remote.retry("rfail1", who="ada") == ["a0"]
        assert (await remote.wait("rfail1", 10))["phase"] == "SUCCEEDED"

        with pytest.raises(RunNotFoundError):
            await remote.get_run("rnosuch")
        with pytest.raises(InvalidRunError) as bad:
            await remote.list_actions("Not A Name")
        assert bad.value.field == "run"
        with pytest.raises(AlreadyExistsError):
            await remote.create_run(task_spec("scripted").SerializeToString(), b"", project="flytesnacks",
                                    domain="development", name="rdone")
    finally:
        await remote.close()


def _json(views) -> list:
    """Views as JSON: what travels (times to the microsecond), so remote and local compare exactly."""
    return [view.to_json() for view in views]


async def _phase(engine, run, action, phase) -> bool:
    found = await engine.runs.find_action(run, action)
    return found is not None and ActionPhase(found.phase) == phase


async def test_the_remote_feed_resumes_after_a_dropped_connection_missing_and_repeating_nothing(engine):
    proxy = Proxy(int(engine.url.rsplit(":", 1)[1]))
    client = RemoteClient(await proxy.start(), engine.authority.owner_token)
    root = await engine.runs.create_run(task_spec("scripted"), name="rholdburst")
    received = []

    async def consume():
        async for change in client.changes(run="rholdburst"):
            received.append(change)

    consumer = asyncio.create_task(consume())
    try:
        await eventually(lambda: any(c.kind == "snapshot" for c in received))
        names = [f"hold{i}" for i in range(40)]
        for i, name in enumerate(names):
            await engine.runs.create_action(root.run_name, name, "a0", task_spec("scripted"), root.input_uri)
            if i == 15:
                proxy.cut()  # mid-burst
            await asyncio.sleep(0.01)
        seen = lambda: {a for c in received for _, a in c.actions}  # noqa: E731
        await eventually(lambda: set(names) <= seen(), timeout=20)
        kinds = [c.kind for c in received]
        assert "disconnected" in kinds and "reconnected" in kinds
        assert kinds.index("disconnected") < kinds.index("reconnected")
        assert kinds.count("snapshot") == 1  # resumed from its cursor, not started over
        delivered = [c for c in received if c.kind == "changes"]
        assert len({c.cursor for c in delivered}) == len(delivered)  # nothing repeated
        feed = engine.services.feed
        start = int(received[0].cursor.split(".")[1])  # the snapshot: what came before it is in the rows read
        expected = [seq for seq, item in feed._items if seq > start and item.kind == "changes"
                    and any(run == "rholdburst" for run, _ in item.actions)]
        assert [int(c.cursor.split(".")[1]) for c in delivered] == expected  # nothing missed, in order
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        await client.close()
        await proxy.stop()


async def test_an_unreachable_engine_is_one_clear_error(tmp_path):
    from engine.client import EngineUnavailableError

    client = RemoteClient("http://127.0.0.1:9", "tdo_x" * 10)
    try:
        with pytest.raises(EngineUnavailableError) as error:
            await client.list_runs()
        assert "cannot reach the engine at http://127.0.0.1:9" in str(error.value)
        started = dt.datetime.now()
        items = []
        async for change in client.changes():
            items.append(change.kind)
            break
        assert items == ["disconnected"] and (dt.datetime.now() - started).total_seconds() < 10
    finally:
        await client.close()
