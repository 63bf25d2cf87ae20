"""Hardening of the engine's doors: who may drive it, from where, with which names, numbers and bodies."""

from __future__ import annotations

import asyncio
import contextlib
import base64
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.common import identifier_pb2
from flyteidl2.workflow import queue_service_pb2, run_definition_pb2, state_service_pb2
from flyteidl2.workflow.queue_service_connect import QueueServiceClient
from flyteidl2.workflow.state_service_connect import StateServiceClient

from engine.auth import endpoint_with_credential
from engine.engine import Engine, EngineConfig
from engine.model import task_action_name
from engine.phases import ActionPhase
from helpers import eventually, owner_headers, run_endpoint, shell_spec, sleep_inputs, sleep_spec

ROOT = Path(__file__).parent.parent


@pytest.fixture
async def engine(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", requeue_after=0.2))
    await engine.start()
    yield engine
    await engine.stop()


def _b64(message) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def _run_payload(**extra) -> dict:
    return {"taskSpec": _b64(sleep_spec()), "inputs": _b64(sleep_inputs(0.05)), **extra}


async def _http(engine, method: str, path: str, *, json_body=None, content: bytes | None = None,
                headers: dict | None = None, owner: bool = True) -> httpx.Response:
    sent = dict(owner_headers(engine)) if owner else {"content-type": "application/json"}
    sent.update(headers or {})
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as client:
        if json_body is not None:
            content = json.dumps(json_body).encode()
        return await client.request(method, path, content=content, headers=sent)


async def _root(engine, seconds: float = 30):
    run = await engine.runs.create_run(sleep_spec(), sleep_inputs(seconds))
    await eventually(lambda: (obj := engine.store.peek(task_action_name(run.run_name, "a0"))) is not None
                     and obj.status.plugin_phase == "PhaseRunning")
    return run


# --------------------------------------------------------------------------- credentials
async def test_without_a_valid_credential_nothing_but_health_answers_and_health_reveals_no_paths(engine):
    for headers in ({}, {"authorization": "Bearer tdo_wrong"}, {"authorization": "Basic eDp5"},
                    {"authorization": f"Bearer {engine.authority.owner_token}x"}):
        for method, path, body in (("GET", "/taskdeck/v1/runs", None), ("POST", "/taskdeck/v1/runs", _run_payload()),
                                   ("GET", "/taskdeck/v1/cache", None)):
            response = await _http(engine, method, path, json_body=body, headers=headers, owner=False)
            assert response.status_code == 401, (headers, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert await engine.runs.list_runs() == []  # nothing was created
    health = await _http(engine, "GET", "/health", owner=False)
    assert health.status_code == 200 and health.json() == {"status": "ok", "storage": "ok"}
    assert str(engine.data_dir) not in health.text
    owner_view = await _http(engine, "GET", "/health")
    assert owner_view.json()["dataDir"] == str(engine.data_dir)  # the owner may see where it lives


async def test_a_page_the_user_visits_cannot_drive_the_engine(engine):
    """A 'simple' cross-site POST (text/plain, no preflight) and DNS rebinding (a foreign Host) are refused."""
    spec = shell_spec("id > /dev/null")
    csrf = await _http(engine, "POST", "/taskdeck/v1/runs", content=json.dumps({"taskSpec": _b64(spec)}).encode(),
                       headers={"content-type": "text/plain", "origin": "http://evil.example"}, owner=False)
    assert csrf.status_code == 403 and "cross-origin" in csrf.json()["error"]
    # Even with the token (say, leaked into a page), a foreign origin or a text/plain body is refused.
    with_token = await _http(engine, "POST", "/taskdeck/v1/runs", json_body={"taskSpec": _b64(spec)},
                             headers={"origin": "http://evil.example"})
    assert with_token.status_code == 403
    plain = await _http(engine, "POST", "/taskdeck/v1/runs", content=json.dumps({"taskSpec": _b64(spec)}).encode(),
                        headers={"content-type": "text/plain"})
    assert plain.status_code == 415
    fetch_site = await _http(engine, "GET", "/taskdeck/v1/runs", headers={"sec-fetch-site": "cross-site"})
    assert fetch_site.status_code == 403
    for host in ("evil.example", f"evil.example:{engine.url.rsplit(':', 1)[1]}", "127.0.0.1.nip.io"):
        rebound = await _http(engine, "GET", "/taskdeck/v1/runs", headers={"host": host})
        assert rebound.status_code == 403 and "Host" in rebound.json()["error"], host
    assert await engine.runs.list_runs() == []
    own_origin = await _http(engine, "GET", "/taskdeck/v1/runs", headers={"origin": engine.url})
    assert own_origin.status_code == 200
    localhost = await _http(engine, "GET", "/taskdeck/v1/runs", headers={"host": "localhost"})
    assert localhost.status_code == 200


async def test_an_advertised_host_is_accepted_besides_loopback(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", advertise_host="deck.internal"))
    await engine.start()
    try:
        assert (await _http(engine, "GET", "/taskdeck/v1/runs", headers={"host": "deck.internal:1"})).status_code == 200
        assert (await _http(engine, "GET", "/taskdeck/v1/runs", headers={"host": "other.internal"})).status_code == 403
    finally:
        await engine.stop()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("curl") is None,
                    reason="dropping to another Unix user needs root (and the probe uses curl)")
async def test_another_unix_user_can_neither_read_the_token_nor_drive_the_engine(engine):
    run = await _root(engine)
    probe = (f"cat {engine.token_path} >/dev/null 2>&1 && echo read-token || echo no-token; "
             f"curl -s -o /dev/null -w '%{{http_code}}' -X POST -H 'content-type: application/json' -d '{{}}' "
             f"{engine.url}/taskdeck/v1/runs/{run.run_name}/abort")
    result = await asyncio.to_thread(subprocess.run, ["/bin/sh", "-c", probe], user=65534, group=65534,
                                     capture_output=True, text=True, timeout=60, cwd="/")
    assert result.stdout.split() == ["no-token", "401"], (result.stdout, result.stderr)
    assert (await engine.runs.get_run(run.run_name)).phase == ActionPhase.RUNNING  # not aborted


async def test_a_run_credential_reaches_only_its_own_run(engine):
    mine, other = await _root(engine), await _root(engine)
    queue = QueueServiceClient(run_endpoint(engine, mine))
    state = StateServiceClient(run_endpoint(engine, mine))
    other_id = identifier_pb2.RunIdentifier(org="local", project=other.project, domain=other.domain,
                                            name=other.run_name)
    child = identifier_pb2.ActionIdentifier(run=other_id, name="intruder")
    inputs = Path(other.run_output_base) / "intruder" / "inputs.pb"
    inputs.parent.mkdir(parents=True)
    inputs.write_bytes(sleep_inputs(0).SerializeToString())
    request = queue_service_pb2.EnqueueActionRequest(
        action_id=child, parent_action_name="a0", input_uri=str(inputs), run_output_base=other.run_output_base,
        task=run_definition_pb2.TaskAction(spec=sleep_spec()))
    for call in (lambda: queue.enqueue_action(request),
                 lambda: queue.abort_queued_run(queue_service_pb2.AbortQueuedRunRequest(run_id=other_id)),
                 lambda: _first(state.watch(state_service_pb2.WatchRequest(
                     parent_action_id=identifier_pb2.ActionIdentifier(run=other_id, name="a0"))))):
        with pytest.raises(ConnectError) as refused:
            await call()
        assert refused.value.code == Code.PERMISSION_DENIED
    # Inside its own run, a child may not read or write another run's directory either.
    own = identifier_pb2.ActionIdentifier(run=identifier_pb2.RunIdentifier(
        org="local", project=mine.project, domain=mine.domain, name=mine.run_name), name="c1")
    for input_uri, output_base in ((str(inputs), mine.run_output_base), (str(Path(mine.run_output_base) / "c1"),
                                                                          other.run_output_base)):
        with pytest.raises(ConnectError) as outside:
            await queue.enqueue_action(queue_service_pb2.EnqueueActionRequest(
                action_id=own, parent_action_name="a0", input_uri=input_uri, run_output_base=output_base,
                task=run_definition_pb2.TaskAction(spec=sleep_spec())))
        assert outside.value.code == Code.INVALID_ARGUMENT and "outside the run" in outside.value.message
    # The JSON API is the owner's alone.
    token = engine.authority.run_token(mine.project, mine.domain, mine.run_name)
    api = await _http(engine, "GET", "/taskdeck/v1/runs", headers={"authorization": f"Bearer {token}"}, owner=False)
    assert api.status_code == 403
    assert [a.name for a in await engine.runs.list_actions(other.run_name)] == ["a0"]
    assert [a.name for a in await engine.runs.list_actions(mine.run_name)] == ["a0"]
    assert (await engine.runs.get_run(other.run_name)).phase == ActionPhase.RUNNING
    forged = endpoint_with_credential(engine.url, token[:-2] + "xx")
    with pytest.raises(ConnectError) as bad:
        await QueueServiceClient(forged).enqueue_action(request)
    assert bad.value.code == Code.UNAUTHENTICATED


async def _first(stream):
    async for message in stream:
        return message


def test_upload_paths_are_signed_and_expire(tmp_path):
    from engine.auth import Authority

    authority = Authority(tmp_path)
    authority.load()
    signed = authority.sign_path("/upload/p/d/abc/fast.tar.gz", expires_in=60, now=1000)
    path, query = signed.split("?")
    params = dict(part.split("=") for part in query.split("&"))
    assert authority.verify_path(path, params["expires"], params["signature"], now=1030)
    assert not authority.verify_path(path, params["expires"], params["signature"], now=1061)  # expired
    assert not authority.verify_path(path + "x", params["expires"], params["signature"], now=1030)  # another path
    assert not authority.verify_path(path, str(int(params["expires"]) + 100), params["signature"], now=1030)
    other = Authority(tmp_path / "other")
    (tmp_path / "other").mkdir()
    other.load()
    assert not other.verify_path(path, params["expires"], params["signature"], now=1030)  # another engine's key


# --------------------------------------------------------------------------- names at every door
BAD_NAMES = ["../../../../outside/trav", "", "x" * 64, "ünïcode", "nul\x00byte", "with space", "Upper", "a/b",
             ".hidden", "-dash"]


def _outside_files(tmp_path: Path, data_dir: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*") if data_dir not in p.parents and p != data_dir and p not in data_dir.parents]


async def test_bad_names_are_refused_at_the_api_and_connect_and_nothing_lands_outside(tmp_path):
    data_dir = tmp_path / "deep" / "er" / "data"
    engine = Engine(EngineConfig(data_dir=data_dir, requeue_after=0.2))
    await engine.start()
    try:
        root = await _root(engine)
        queue = QueueServiceClient(run_endpoint(engine, root))
        run_id = identifier_pb2.RunIdentifier(org="local", project=root.project, domain=root.domain,
                                              name=root.run_name)
        for bad in BAD_NAMES:
            for field in ("project", "domain", "name"):
                response = await _http(engine, "POST", "/taskdeck/v1/runs", json_body=_run_payload(**{field: bad}))
                assert response.status_code == 400, (field, bad, response.text)
                body = response.json()
                assert body["field"] == ("run" if field == "name" else field) and body.get("rule"), body
            if bad:  # as a path segment (percent-encoded, as a client sends it)
                segment = urllib.parse.quote(bad, safe="")
                for path in (f"/taskdeck/v1/runs/{segment}",
                             f"/taskdeck/v1/runs/{root.run_name}/actions/{segment}/events"):
                    response = await _http(engine, "GET", path)
                    assert response.status_code == 400 and response.json()["field"] in ("run", "action"), path
            inputs = Path(root.run_output_base) / "c" / "inputs.pb"
            for action_id in (identifier_pb2.ActionIdentifier(run=run_id, name=bad),
                              identifier_pb2.ActionIdentifier(run=identifier_pb2.RunIdentifier(
                                  org="local", project=root.project, domain=root.domain, name=bad), name="c1")):
                with pytest.raises(ConnectError) as refused:
                    await queue.enqueue_action(queue_service_pb2.EnqueueActionRequest(
                        action_id=action_id, parent_action_name="a0", input_uri=str(inputs),
                        run_output_base=root.run_output_base, task=run_definition_pb2.TaskAction(spec=sleep_spec())))
                assert refused.value.code in (Code.INVALID_ARGUMENT, Code.PERMISSION_DENIED), bad
        assert [r.run_name for r in await engine.runs.list_runs()] == [root.run_name]
        assert [a.name for a in await engine.runs.list_actions(root.run_name)] == ["a0"]
    finally:
        await engine.stop()
    assert _outside_files(tmp_path, data_dir) == [], "something was written outside the data directory"


def _cli(*args, data_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _one_line_usage_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_bad_names_are_refused_by_the_cli_and_nothing_lands_outside(tmp_path):
    data_dir = tmp_path / "deep" / "er" / "data"
    basics = str(ROOT / "examples" / "basics.py")
    for bad in ["../../../../outside/trav", "", "x" * 64, "ünïcode", "with space", "Upper"]:
        for option in ("--project", "--domain", "--run-name"):
            error = _one_line_usage_error(_cli("run", option, bad, basics, "add", "--x", "1", "--y", "2",
                                               data_dir=data_dir))
            assert ("run" if option == "--run-name" else option[2:]) in error
        for args in (("get", "actions", bad), ("get", "events", "rabc", "--action", bad), ("abort", bad),
                     ("retry", bad), ("signal", bad, "cond", "1")):
            _one_line_usage_error(_cli(*args, data_dir=data_dir))
    assert _outside_files(tmp_path, data_dir) == []


# --------------------------------------------------------------------------- numbers and bodies
async def test_numbers_are_checked_before_they_reach_a_timer(engine):
    run = await engine.runs.create_run(sleep_spec(), sleep_inputs(0.2))
    for query in ("timeout=nan", "timeout=inf", "timeout=-1", "timeout=1e309", "timeout=99999", "timeout=x"):
        response = await _http(engine, "POST", f"/taskdeck/v1/runs/{run.run_name}/wait?{query}", json_body={})
        assert response.status_code == 400 and response.json()["field"] == "timeout", query
    for query in ("limit=100000000000000000000", "limit=0", "limit=-5", "limit=nan"):
        response = await _http(engine, "GET", f"/taskdeck/v1/runs?{query}")
        assert response.status_code == 400 and response.json()["field"] == "limit", query
    with pytest.raises(ValueError):
        await engine.runs.wait_for_run(run.run_name, float("nan"))  # the service checks too
    waited = await _http(engine, "POST", f"/taskdeck/v1/runs/{run.run_name}/wait?timeout=20", json_body={})
    assert waited.json()["phase"] == "SUCCEEDED"  # timers still fire
    started = time.monotonic()
    await engine.stop()
    assert time.monotonic() - started < 10  # and the engine still stops promptly
    await engine.start()


async def test_bodies_are_capped_before_and_while_reading_and_gzip_is_not_inflated_past_the_cap(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", max_body_bytes=64 * 1024))
    await engine.start()
    try:
        big = b"x" * (64 * 1024 + 1)
        declared = await _http(engine, "POST", "/taskdeck/v1/runs", content=big)
        assert declared.status_code == 413

        async def chunks():  # no Content-Length: refused while reading
            for _ in range(100):
                yield b" " * 4096

        async with httpx.AsyncClient(base_url=engine.url, timeout=30) as client:
            streamed = await client.post("/taskdeck/v1/runs", content=chunks(), headers=owner_headers(engine))
        assert streamed.status_code == 413
        run = await _root(engine)
        bomb = gzip.compress(b"\x00" * (64 * 1024 * 1024))  # 64 MiB of zeros in ~64 KiB
        assert len(bomb) < 64 * 1024
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                run_endpoint(engine, run) + "/flyteidl2.workflow.QueueService/EnqueueAction", content=bomb,
                headers={"content-type": "application/proto", "content-encoding": "gzip",
                         "connect-protocol-version": "1"})
        assert response.status_code != 200 and response.json()["code"] == "resource_exhausted", response.text
    finally:
        await engine.stop()


async def _raw_exchange(engine, head: bytes, *, endless: bool = False) -> bytes:
    """``head`` written as is on a fresh connection (``endless``: then more header bytes, 8 KiB at a time,
    until the engine answers); what the engine answers until it closes."""
    url = urllib.parse.urlsplit(engine.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    answer = bytearray()

    async def read():
        with contextlib.suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                answer.extend(chunk)

    reading = asyncio.create_task(read())
    try:
        writer.write(head)
        while endless and not answer and len(head) < 1 << 20:
            await asyncio.sleep(0.02)  # paced, so the engine has read all sent when it refuses
            writer.write(b"a" * 8192)
            head += b"a" * 8192
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        await asyncio.wait_for(reading, 10)
        return bytes(answer)
    finally:
        writer.close()


async def test_a_request_head_past_64_kib_is_refused_and_the_connection_closed(engine):
    ok = await _raw_exchange(engine, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 8000 +
                             b"\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")  # a large head within the bound is served
    # An endless header: the engine stops buffering it at the bound instead of growing with it.
    endless = await _raw_exchange(engine, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ", endless=True)
    assert endless.startswith(b"HTTP/1.1 431") and b"exceed 65536 bytes" in endless


async def test_undecodable_connect_messages_are_invalid_argument(engine):
    run = await _root(engine)
    valid = queue_service_pb2.EnqueueActionRequest(
        action_id=identifier_pb2.ActionIdentifier(run=identifier_pb2.RunIdentifier(
            org="local", project=run.project, domain=run.domain, name=run.run_name), name="c1"),
        parent_action_name="a0", input_uri="x", run_output_base=run.run_output_base,
        task=run_definition_pb2.TaskAction(spec=sleep_spec())).SerializeToString()
    async with httpx.AsyncClient(timeout=30) as client:
        for body in (os.urandom(64), valid[: len(valid) // 2], b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 10):
            response = await client.post(
                run_endpoint(engine, run) + "/flyteidl2.workflow.QueueService/EnqueueAction", content=body,
                headers={"content-type": "application/proto", "connect-protocol-version": "1"})
            assert response.json()["code"] == "invalid_argument", (body, response.text)
        response = await client.get(run_endpoint(engine, run) + "/flyteidl2.workflow.QueueService/EnqueueAction")
        assert response.status_code == 405


async def test_api_errors_are_json_naming_the_field(engine):
    cases = [
        ({"taskSpec": _b64(sleep_spec()), "project": 5}, 400, "project"),
        ({"taskSpec": _b64(sleep_spec()), "envVars": [1, 2]}, 400, "envVars"),
        ({"taskSpec": _b64(sleep_spec()), "envVars": {"A": 1}}, 400, "envVars"),
        ({"taskSpec": _b64(sleep_spec()), "envVars": {"MY_API_TOKEN": "x"}}, 400, "envVars"),
        ({"taskSpec": "not base64!"}, 400, "taskSpec"),
        ({"taskSpec": base64.b64encode(b"\xff\xff\xff").decode()}, 400, "taskSpec"),
        ({"taskSpec": _b64(sleep_spec()), "codeDir": "/etc"}, 400, "codeDir"),
        ({"taskSpec": _b64(sleep_spec()), "codeDir": ["x"]}, 400, "codeDir"),
        ({}, 400, "taskSpec"),
    ]
    for body, status, field in cases:
        response = await _http(engine, "POST", "/taskdeck/v1/runs", json_body=body)
        assert (response.status_code, response.json()["field"]) == (status, field), (body, response.text)
    deep = b"[" * 20_000 + b"]" * 20_000
    for content in (deep, b"[1, 2]", b"{\"a\": NaN}", b"\xff"):
        response = await _http(engine, "POST", "/taskdeck/v1/runs", content=content)
        assert response.status_code == 400 and "error" in response.json(), content[:20]
    wrong_method = await _http(engine, "DELETE", "/taskdeck/v1/runs")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "GET, POST"
    assert (await _http(engine, "GET", "/taskdeck/v1/runs/rnope")).status_code == 404
    created = await _http(engine, "POST", "/taskdeck/v1/runs", json_body=_run_payload(name="twice"))
    assert created.status_code == 200
    again = await _http(engine, "POST", "/taskdeck/v1/runs", json_body=_run_payload(name="twice"))
    assert again.status_code == 409 and "already exists" in again.json()["error"]
    for response in (wrong_method, again):
        assert "Traceback" not in response.text and "Error:" not in response.json()["error"]


def test_a_gzip_bomb_is_refused_without_being_inflated():
    import tracemalloc

    from engine.http_gate import BoundedGzip

    bomb = gzip.compress(b"\x00" * (200 * 1024 * 1024))
    tracemalloc.start()
    try:
        with pytest.raises(ConnectError) as refused:
            BoundedGzip(1024 * 1024).decompress(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.code == Code.RESOURCE_EXHAUSTED
    assert peak < 8 * 1024 * 1024  # at most the cap (plus change) was inflated, not 200 MiB
    assert BoundedGzip(1024).decompress(gzip.compress(b"ok")) == b"ok"
