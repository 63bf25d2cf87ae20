"""Engines never stop under another client's feet; one that goes away is one line, not a traceback; CLI
conventions (global options anywhere, ``--``, read commands on a missing directory, abort with no engine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import write_tasks

from engine.client import engine_url

pytestmark = pytest.mark.sdk

ROOT = Path(__file__).parent.parent
BASICS = str(ROOT / "examples" / "basics.py")
ENV = dict(os.environ, TASKDECK_IDLE_EXIT="3", PYTHONUNBUFFERED="1")  # background engines leave soon after


def _cli(*args, data_dir: Path, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV, **popen)


def _start(*args, data_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data_dir), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)


@pytest.fixture
def tasks(tmp_path) -> str:
    return write_tasks(tmp_path, """

        @env.task
        def snooze(seconds: float) -> float:
            time.sleep(seconds)
            return seconds

        @env.task
        def echo(text: str) -> str:
            return text
        """)


def _wait_for(predicate, timeout: float = 60, interval: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met")


def test_two_runs_at_once_share_a_background_engine_and_neither_loses_it(tmp_path, tasks):
    """The first command's run ends first; the second's keeps its engine (it used to get HTTP 500)."""
    data = tmp_path / "data"
    slow = _start("run", "--json", tasks, "snooze", "--seconds", "6", data_dir=data)
    _wait_for(lambda: engine_url(data), timeout=60)
    fast = _cli("run", "--json", tasks, "echo", "--text", "hi", data_dir=data)
    assert fast.returncode == 0, fast.stderr
    assert json.loads(fast.stdout)["outputs"] == {"o0": "hi"}
    out, err = slow.communicate(timeout=120)
    assert slow.returncode == 0, err
    assert json.loads(out)["outputs"] == {"o0": 6.0} and "Traceback" not in err
    engine = _wait_for(lambda: engine_url(data))  # still serving, until it has been idle a while
    assert engine
    _wait_for(lambda: engine_url(data) is None, timeout=60)  # then it leaves by itself


def test_a_client_whose_engine_goes_away_gets_one_line_and_exit_3(tmp_path, tasks):
    data = tmp_path / "data"
    waiting = _start("run", tasks, "snooze", "--seconds", "60", data_dir=data)
    _wait_for(lambda: engine_url(data), timeout=60)
    _wait_for(lambda: "started on" in (waiting.stderr.readline() or ""), timeout=60)
    pid = json.loads((data / "engine.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 3, (out, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("taskdeck: ")
    assert "next engine on this data directory adopts them" in err
    # The task kept running; the next engine adopts it and the run ends as it should.
    run = json.loads(_cli("get", "runs", "--json", data_dir=data).stdout)[0]["run"]
    aborted = _cli("abort", run, data_dir=data)  # no engine serves: abort starts one, as retry does
    assert aborted.returncode == 0, aborted.stderr
    assert "started an engine in the background" in aborted.stderr
    result = _wait_for(lambda: (r := json.loads(_cli("get", "runs", "--json", data_dir=data).stdout)[0])
                       ["phase"] == "ABORTED" and r)
    assert result["abortReason"] == "aborted from the command line"


def test_headless_ctrl_c_with_active_runs_says_what_happens_and_waits_for_a_second(tmp_path, tasks):
    data = tmp_path / "data"
    engine = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data), "--allow-dir",
                               str(tmp_path), "--headless"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, cwd=ROOT, env=ENV)
    try:
        _wait_for(lambda: engine_url(data))
        run = _start("run", tasks, "snooze", "--seconds", "30", data_dir=data)
        lines: list[str] = []

        def read_until(text: str) -> None:
            while not any(text in line for line in lines):
                lines.append(engine.stdout.readline())

        read_until("RUNNING")
        engine.send_signal(signal.SIGINT)
        read_until("still active")
        assert "adopts them" in lines[-1] and engine.poll() is None  # asked, not stopped
        engine.send_signal(signal.SIGINT)
        read_until("engine stopped")
        assert engine.wait(timeout=30) == 0
        out, err = run.communicate(timeout=60)
        assert run.returncode == 3 and "Traceback" not in err
    finally:
        if engine.poll() is None:
            engine.kill()
        _cli("abort", "--reason", "cleanup", *_runs(data), data_dir=data) if _runs(data) else None


def _runs(data: Path) -> list[str]:
    listed = _cli("get", "runs", "--json", data_dir=data)
    return [r["run"] for r in json.loads(listed.stdout) if r["phase"] not in ("SUCCEEDED", "FAILED", "ABORTED")][:1] \
        if listed.returncode == 0 else []


def test_global_options_go_before_or_after_the_command_and_double_dash_ends_options(tmp_path, tasks):
    data = tmp_path / "data"
    before = subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data), "--json", "run",
                             tasks, "echo", "--text", "a"], capture_output=True, text=True, cwd=ROOT, env=ENV,
                            timeout=120)
    after = subprocess.run([sys.executable, "-m", "console.cli", "run", "--data-dir", str(data), "--json", tasks,
                            "echo", "--", "--text", "--json"], capture_output=True, text=True, cwd=ROOT, env=ENV,
                           timeout=120)
    assert before.returncode == 0 and after.returncode == 0, (before.stderr, after.stderr)
    assert json.loads(before.stdout)["outputs"] == {"o0": "a"}
    assert json.loads(after.stdout)["outputs"] == {"o0": "--json"}  # after --, a task input even if it looks like an option
    listed = subprocess.run([sys.executable, "-m", "console.cli", "get", "runs", "--json", "--data-dir", str(data)],
                            capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=60)
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 2
    missing = _cli("get", "runs", data_dir=tmp_path / "nowhere")
    assert missing.returncode == 2 and "no TaskDeck data" in missing.stderr and not (tmp_path / "nowhere").exists()
    url = _wait_for(lambda: engine_url(data))  # the background engine the runs started
    by_address = _cli("--engine", url, "--token-file", str(data / "token"), "get", "runs", "--json",
                      data_dir=tmp_path / "elsewhere")
    assert by_address.returncode == 0 and len(json.loads(by_address.stdout)) == 2  # --engine: an address will do
    wrong_token = tmp_path / "wrong"
    wrong_token.write_text("tdo_" + "x" * 43)
    refused = _cli("--engine", url, "--token-file", str(wrong_token), "get", "runs", data_dir=tmp_path / "elsewhere")
    assert refused.returncode == 2 and "credential" in refused.stderr and "Traceback" not in refused.stderr


async def test_a_starting_engine_never_shows_clients_a_killed_engines_address(tmp_path, monkeypatch):
    """kill -9 leaves engine.json behind; once the next engine holds the lock, clients must not read that
    address before the new engine listens on it (the same stable port: a connection refused)."""
    from engine.client import engine_url
    from engine.engine import Engine, EngineConfig

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "engine.json").write_text(json.dumps({"pid": 999999, "url": "http://127.0.0.1:9"}))
    engine = Engine(EngineConfig(data_dir=data))
    seen = []
    start_server = engine._start_server

    async def observed():
        seen.append(engine_url(data))  # the lock is held now: what would a client be told?
        return await start_server()

    monkeypatch.setattr(engine, "_start_server", observed)
    await engine.start()
    try:
        assert seen == [None]
        assert engine_url(data) == engine.url
    finally:
        await engine.stop()
