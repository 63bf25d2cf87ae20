"""What the headless engine prints: a line per event, with the error of a failure and what a condition asks."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from flyteidl2.common import identifier_pb2
from flyteidl2.core import types_pb2
from flyteidl2.workflow import queue_service_pb2, run_definition_pb2
from flyteidl2.workflow.queue_service_connect import QueueServiceClient

from engine.auth import Authority, endpoint_with_credential
from engine.client import ActionPhase, engine_url
from engine.client.remote import RemoteClient
from helpers import shell_spec, sleep_inputs, sleep_spec

ROOT = Path(__file__).parent.parent


async def test_headless_prints_failures_with_their_error_and_conditions_pausing_and_signalled(tmp_path):
    data = tmp_path / "data"
    engine = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "console.cli", "--data-dir", str(data), "--headless", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    lines: list[str] = []

    async def read_until(text: str, timeout: float = 30) -> str:
        async with asyncio.timeout(timeout):
            while True:
                for line in lines:
                    if text in line:
                        return line
                lines.append((await engine.stdout.readline()).decode())

    try:
        await read_until("serving")
        client = RemoteClient(engine_url(data), (data / "token").read_text().strip())
        await client.create_run(shell_spec("exit 3").SerializeToString(), b"", project="flytesnacks",
                                domain="development", name="rbroken")
        failed = await read_until("rbroken/a0 attempt 1 FAILED")
        assert "[USER] NonZeroExit: the task process exited with code 3" in failed

        run = await client.create_run(sleep_spec().SerializeToString(), sleep_inputs(60).SerializeToString(),
                                      project="flytesnacks", domain="development", name="rgate")
        await read_until("rgate/a0 attempt 1 RUNNING")
        authority = Authority(data)
        authority.load()
        queue = QueueServiceClient(endpoint_with_credential(
            engine_url(data), authority.run_token("flytesnacks", "development", run.run_name)))
        run_id = identifier_pb2.RunIdentifier(org="local", project="flytesnacks", domain="development",
                                              name=run.run_name)
        await queue.enqueue_action(queue_service_pb2.EnqueueActionRequest(
            action_id=identifier_pb2.ActionIdentifier(run=run_id, name="approve"), parent_action_name="a0",
            condition=run_definition_pb2.ConditionAction(
                name="approve", prompt="Ship it?", type=types_pb2.LiteralType(simple=types_pb2.SimpleType.BOOLEAN))))
        paused = await read_until("rgate/approve attempt 1 PAUSED")
        assert "(waiting for a signal: Ship it?)" in paused
        signal = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "console.cli", "--data-dir", str(data), "signal", "rgate", "approve", "yes",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert await signal.wait() == 0
        signalled = await read_until("rgate/approve attempt 1 SUCCEEDED")
        assert "condition signalled by" in signalled
        assert (await client.get_run("rgate")).phase == ActionPhase.RUNNING  # no longer waiting: not PAUSED
        await client.abort("rgate", reason="done here")
        aborted = await read_until("rgate/a0 attempt 1 ABORTED")
        assert "(done here)" in aborted
        await client.close()
    finally:
        if engine.returncode is None:
            engine.terminate()
            await engine.wait()
