"""Fuzz the engine's three doors (HTTP API, Connect services, command line) with generated names, numbers,
JSON shapes and protobuf bytes, then check it is unharmed: alive, /health ok, earlier runs unchanged,
integrity_check ok, nothing written outside its data directory.

Derandomized, a minute at most at the default size; ``pytest tests/test_fuzz.py --fuzz-examples 5000``
runs longer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from engine.store.sqlite import SqliteStore
from helpers import sleep_inputs, sleep_spec

ROOT = Path(__file__).parent.parent
ALLOWED_HTTP = {200, 400, 401, 403, 404, 405, 409, 413, 415, 503}
CONNECT_METHODS = ["flyteidl2.workflow.QueueService/EnqueueAction", "flyteidl2.workflow.QueueService/AbortQueuedRun",
                   "flyteidl2.workflow.QueueService/AbortQueuedAction", "flyteidl2.workflow.StateService/Watch",
                   "flyteidl2.actions.ActionsService/Enqueue", "flyteidl2.actions.ActionsService/Abort",
                   "flyteidl2.actions.ActionsService/Signal", "flyteidl2.actions.ActionsService/WatchForUpdates"]
CONNECT_CODES = {"invalid_argument", "not_found", "already_exists", "permission_denied", "unauthenticated",
                 "resource_exhausted", "aborted", "unimplemented", "unavailable", "canceled", "deadline_exceeded"}

names = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,28}[a-z0-9]", fullmatch=True),
    st.sampled_from(["../../../../outside/x", "", "a" * 64, "ünï", "nul\x00", "with space", "a/b", ".", ".."]),
    st.text(max_size=80),
)
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10 ** 30, 10 ** 30).map(str),
                    st.sampled_from(["nan", "inf", "-inf", "1e309", "-0", "", "0x10"]), st.text(max_size=12))
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
                           lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                                      max_size=5),
                           max_leaves=15)
VALID_SPEC = base64.b64encode(sleep_spec().SerializeToString()).decode()
specs = st.one_of(st.just(VALID_SPEC), st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
                  json_values)


class HeadlessEngine:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.process = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data_dir),
                                         "--headless"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not (data_dir / "engine.json").exists():
            assert time.time() < deadline and self.process.poll() is None, "the engine did not start"
            time.sleep(0.05)
        self.url = json.loads((data_dir / "engine.json").read_text())["url"]
        self.token = (data_dir / "token").read_text().strip()
        self.client = httpx.Client(base_url=self.url, timeout=30,
                                   headers={"authorization": f"Bearer {self.token}"})

    def api(self, method: str, path: str, body=None, content: bytes | None = None) -> httpx.Response:
        if body is not None:
            content = json.dumps(body).encode()
        return self.client.request(method, path, content=content, headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    engine = HeadlessEngine(tmp / "deep" / "data")
    inputs = base64.b64encode(sleep_inputs(0).SerializeToString()).decode()
    runs = [engine.api("POST", "/taskdeck/v1/runs", {"taskSpec": VALID_SPEC, "inputs": inputs}).json()["run"]
            for _ in range(3)]
    for run in runs:
        assert engine.api("POST", f"/taskdeck/v1/runs/{run}/wait?timeout=30", {}).json()["phase"] == "SUCCEEDED"
    before = {run: engine.api("GET", f"/taskdeck/v1/runs/{run}").json() for run in runs}
    yield engine
    # The checks after every door has been fuzzed.
    assert engine.process.poll() is None, engine.process.stderr.read()
    health = engine.api("GET", "/health").json()
    assert health["status"] == "ok", health
    assert {run: engine.api("GET", f"/taskdeck/v1/runs/{run}").json() for run in runs} == before
    engine.process.terminate()
    _, stderr = engine.process.communicate(timeout=30)
    assert engine.process.returncode == 0 and "Traceback" not in stderr, stderr

    async def integrity() -> str:
        store = SqliteStore(engine.data_dir / "taskdeck.db", read_only=True)
        await store.start()
        try:
            return await store.integrity_check()
        finally:
            await store.close()

    assert asyncio.run(integrity()) == "ok"
    outside = [p for p in tmp.rglob("*") if engine.data_dir not in p.parents and p != engine.data_dir
               and p not in engine.data_dir.parents]
    assert outside == [], outside


def _fuzz_settings(request, divisor: int = 1):
    """Derandomized, and without shrinking (a failing example is printed as found): a bounded run time."""
    return settings(max_examples=max(10, request.config.getoption("--fuzz-examples") // divisor),
                    derandomize=True, deadline=None, database=None,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _segment(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def test_the_http_api_answers_every_request_with_a_json_error_or_a_result(fuzzed, request):
    routes = st.one_of(
        st.tuples(st.just("POST"), st.just("/taskdeck/v1/runs"),
                  st.fixed_dictionaries({}, optional={"taskSpec": specs, "project": names | json_values,
                                                      "domain": names, "name": names | json_values,
                                                      "envVars": json_values, "codeDir": names | json_values,
                                                      "inputs": specs})),
        st.tuples(st.just("GET"), st.builds(lambda n: f"/taskdeck/v1/runs?limit={urllib.parse.quote(n)}", numbers),
                  st.none()),
        st.tuples(st.just("POST"), st.builds(lambda r, n: f"/taskdeck/v1/runs/{_segment(r)}/wait?timeout="
                                             f"{urllib.parse.quote(n)}", names, numbers), st.just({})),
        st.tuples(st.sampled_from(["POST", "GET", "DELETE", "PUT"]),
                  st.builds(lambda r, verb: f"/taskdeck/v1/runs/{_segment(r)}/{verb}", names,
                            st.sampled_from(["abort", "retry", "signal", "actions", "nope"])), json_values),
        st.tuples(st.just("GET"), st.builds(lambda r, a: f"/taskdeck/v1/runs/{_segment(r)}/actions/{_segment(a)}"
                                            "/events", names, names), st.none()),
        st.tuples(st.just("POST"), st.just("/taskdeck/v1/cache/evict"), json_values),
    )

    @_fuzz_settings(request)
    @given(routes)
    def probe(route):
        method, path, body = route
        response = fuzzed.api(method, path, body=body if method != "GET" else None)
        assert response.status_code in ALLOWED_HTTP, (route, response.status_code, response.text)
        payload = response.json()
        if response.status_code != 200:
            assert isinstance(payload["error"], str) and "Traceback" not in payload["error"], payload

    probe()
    raw = st.binary(max_size=2000)

    @_fuzz_settings(request)
    @given(raw)
    def probe_raw(content):
        response = fuzzed.api("POST", "/taskdeck/v1/runs", content=content)
        assert response.status_code in ALLOWED_HTTP - {200, 409}, (content, response.text)

    probe_raw()


def test_the_connect_services_answer_every_message_with_a_connect_error_code(fuzzed, request):
    from flyteidl2.common import identifier_pb2
    from flyteidl2.workflow import queue_service_pb2, run_definition_pb2

    run = fuzzed.api("GET", "/taskdeck/v1/runs?limit=1").json()[0]
    identifiers = st.builds(
        lambda project, domain, run_name, action: identifier_pb2.ActionIdentifier(
            run=identifier_pb2.RunIdentifier(org="local", project=project, domain=domain, name=run_name),
            name=action),
        st.one_of(st.just(run["project"]), names), st.one_of(st.just(run["domain"]), names),
        st.one_of(st.just(run["run"]), names), names)
    enqueues = st.builds(
        lambda action_id, parent, uri, base: queue_service_pb2.EnqueueActionRequest(
            action_id=action_id, parent_action_name=parent, input_uri=uri, run_output_base=base,
            task=run_definition_pb2.TaskAction(spec=sleep_spec())).SerializeToString(),
        identifiers, st.one_of(st.just("a0"), names), names, names)
    bodies = st.one_of(st.binary(max_size=600), enqueues)

    @_fuzz_settings(request)
    @given(st.sampled_from(CONNECT_METHODS), bodies, st.booleans())
    def probe(method, body, streaming):
        content_type = "application/connect+proto" if streaming else "application/proto"
        if streaming:
            body = b"\x00" + len(body).to_bytes(4, "big") + body
        try:
            response = fuzzed.client.post(f"/{method}", content=body, timeout=5,
                                          headers={"content-type": content_type, "connect-protocol-version": "1"})
        except httpx.ReadTimeout:
            assert streaming and "Watch" in method  # a valid watch streams until the client leaves
            return
        if response.status_code == 200:
            return  # a success, or a stream whose error arrives inside it; the health checks still apply
        if response.status_code == 415:  # a unary method given a stream's content type: refused by HTTP
            assert "accept-post" in response.headers
            return
        code = response.json().get("code")
        assert code in CONNECT_CODES, (method, body[:40], response.status_code, response.text)

    probe()


def test_the_command_line_answers_bad_input_in_one_line(fuzzed, request):
    commands = st.one_of(
        st.builds(lambda n: ["get", "actions", n], names),
        st.builds(lambda n, a: ["get", "events", n, "--action", a], names, names),
        st.builds(lambda n, a: ["abort", n, "--action", a], names, names),
        st.builds(lambda n: ["get", "runs", "--limit", n], numbers),
        st.builds(lambda p, x: ["run", "--project", p, str(ROOT / "examples" / "basics.py"), "add", "--x", x,
                                "--y", "1"], names, numbers),
    )

    @_fuzz_settings(request, divisor=8)
    @given(commands)
    def probe(command):
        if any("\x00" in part for part in command):
            return  # a NUL cannot be an argument of a process at all
        result = subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(fuzzed.data_dir), *command],
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode in (0, 1, 2), (command, result.stderr)
        assert "Traceback" not in result.stderr, (command, result.stderr)
        if result.returncode == 2:
            assert len(result.stderr.strip().splitlines()) == 1, (command, result.stderr)

    probe()
