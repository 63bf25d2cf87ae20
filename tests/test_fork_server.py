"""The fork server's protocol on its own: it lays out an attempt's files and records the launch before the
task runs, and runs nothing for an engine that is gone (the engine's side: ``engine/plugins/zygotes.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest

from engine.plugins.launcher import REFUSED_EXIT
from engine.plugins.pipe_protocol import encode
from engine.plugins.zygotes import Zygote, ZygoteRefused
from helpers import eventually


@pytest.fixture
async def zygote(tmp_path):
    server = Zygote("test", sys.executable, {"PATH": os.environ["PATH"]}, tmp_path / "zygote.log", str(tmp_path))
    await server.start()
    yield server
    await server.close()


def _layout(tmp_path, attempt):
    code = tmp_path / "unpacked"
    (code / "pkg").mkdir(parents=True, exist_ok=True)
    (code / "pkg" / "mod.py").write_text("X = 1\n")
    attempt.mkdir(parents=True, exist_ok=True)
    (attempt / "outputs.pb").write_bytes(b"from a try before")
    return {"dirs": [str(attempt), str(tmp_path / "logs" / "a0")], "link": [str(code), str(attempt / "code")],
            "stale": [str(attempt / "outputs.pb"), str(attempt / "error.pb")],
            "log": str(tmp_path / "logs" / "a0" / "1.log"), "header": "[taskdeck] first line\n"}


async def test_it_lays_out_the_attempt_and_records_the_launch_before_the_task_runs(zygote, tmp_path):
    attempt = tmp_path / "data" / "a0" / "1"
    layout = _layout(tmp_path, attempt)
    marker = attempt / ".taskdeck-process.json"
    # Not a task: a0's parser refuses this argv, after the launch was recorded.
    pid, ticks = await zygote.spawn(["a0", "--no-such-option"], {"PATH": os.environ["PATH"]}, str(attempt / "code"),
                                    layout["log"], layout, {"path": str(marker), "state": {"phase": "Started"}})
    recorded = json.loads(marker.read_text())
    assert recorded == {"phase": "Started", "pid": pid, "startTicks": ticks}
    assert isinstance(ticks, int) and ticks > 0  # the supervisor's start time: its pid cannot be mistaken later
    code = await asyncio.wait_for(zygote.wait(pid), 30)
    assert code not in (0, REFUSED_EXIT)  # it ran (and a0 refused the argv)
    assert (attempt / "code" / "pkg" / "mod.py").read_text() == "X = 1\n"  # a tree of links to the bundle
    assert os.stat(attempt / "code" / "pkg" / "mod.py").st_ino == os.stat(tmp_path / "unpacked/pkg/mod.py").st_ino
    assert not (attempt / "outputs.pb").exists()  # a previous try's outputs are never read as this one's
    assert (tmp_path / "logs" / "a0" / "1.log").read_text().splitlines()[0] == "[taskdeck] first line"


async def test_files_it_cannot_make_refuse_the_spawn_and_nothing_runs(zygote, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    layout = {"dirs": [str(blocker / "below")], "stale": [], "log": str(tmp_path / "x.log")}
    with pytest.raises(ZygoteRefused) as refused:
        await zygote.spawn(["a0"], {}, str(tmp_path), str(tmp_path / "x.log"), layout,
                           {"path": str(tmp_path / "m.json"), "state": {}})
    assert refused.value.reply["layout"]["part"] == "dirs"
    assert refused.value.reply["layout"]["path"] == str(blocker / "below")
    assert not (tmp_path / "m.json").exists() and zygote.forks == 0


async def test_an_engine_gone_before_the_launch_was_recorded_gets_nothing_run(zygote, tmp_path):
    attempt = tmp_path / "data" / "a0" / "1"
    layout = _layout(tmp_path, attempt)
    marker = attempt / ".taskdeck-process.json"
    request = {"op": "spawn", "id": 1, "argv": ["a0"], "env": {}, "cwd": str(attempt), "log": layout["log"],
               "layout": layout, "marker": {"path": str(marker), "state": {"phase": "Started"}}}
    # The engine writes its request and dies before the server reads it (stopped, so it reads both at once).
    os.kill(zygote.pid, signal.SIGSTOP)
    zygote.process.stdin.write(encode(request))
    zygote.process.stdin.close()
    await zygote.process.stdin.wait_closed()  # the pipe's end is closed in a later turn of the loop
    os.kill(zygote.pid, signal.SIGCONT)
    await asyncio.wait_for(zygote.process.wait(), 30)
    assert not marker.exists()  # nothing recorded, so nothing may run: the supervisor exits 111
    await eventually(lambda: not any(p.isdigit() and _is_supervisor(p, tmp_path) for p in os.listdir("/proc")))
    log = (tmp_path / "logs" / "a0" / "1.log").read_text()
    assert log.splitlines() == ["[taskdeck] first line"]  # the header; the task wrote nothing


def _is_supervisor(pid: str, cwd) -> bool:
    """A process forked by a fork server started in ``cwd`` (the server itself has exited)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            forked = b"zygote_server.py" in f.read()
        return forked and os.readlink(f"/proc/{pid}/cwd") == str(cwd)
    except OSError:
        return False


async def test_only_a_plain_http_session_skips_the_system_trust_store(monkeypatch):
    """The fork server's warm-up: a session to a plain-HTTP endpoint builds its transport without the
    system trust store (it makes no TLS connection); a TLS session, and a client rebuilt later, get it."""
    from flyte.remote._client.auth import _session

    from engine.plugins import zygote_server

    monkeypatch.setattr(_session, "_resolve_tls_ca_cert", _session._resolve_tls_ca_cert)
    monkeypatch.setattr(_session, "_supports_system_certs", lambda: True)  # as on pyqwest >= 0.7
    zygote_server.plain_http_sessions_skip_the_trust_store()
    asked = []
    monkeypatch.setattr(_session, "_build_pyqwest_client",
                        lambda ca=None: asked.append(ca is None and _session._supports_system_certs()))
    await _session.create_session_config("127.0.0.1:1", None, insecure=True)
    _session.SessionConfig("http://127.0.0.1:1", True, False, (), None).new_http_client()
    await _session.create_session_config("127.0.0.1:1", None, insecure=False)
    assert asked == [False, True, True]


def test_the_config_lookup_runs_git_only_where_a_repository_can_be(monkeypatch, tmp_path):
    """The fork server's warm-up: outside any repository the SDK's git-root config lookup answers without
    running git; inside one (or with GIT_DIR set) the SDK asks git, and finds the root's .flyte/config.yaml."""
    import subprocess

    from flyte.config import _reader

    from engine.plugins import zygote_server

    monkeypatch.setattr(_reader, "_config_path_from_git_root", _reader._config_path_from_git_root)
    zygote_server.config_lookup_skips_git_outside_a_repository()
    ran = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: ran.append(argv) or real_run(argv, **kw))
    for name in zygote_server.GIT_LOCATION_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    outside = tmp_path / "data" / "attempt"
    outside.mkdir(parents=True)
    monkeypatch.chdir(outside)
    assert _reader._config_path_from_git_root() is None and ran == []

    repo = tmp_path / "repo"
    (repo / ".flyte").mkdir(parents=True)
    (repo / ".flyte" / "config.yaml").write_text("admin:\n  endpoint: dns:///example.org\n")
    real_run(["git", "init", "-q", str(repo)], check=True)
    (repo / "deep" / "below").mkdir(parents=True)
    monkeypatch.chdir(repo / "deep" / "below")
    found = _reader._config_path_from_git_root()
    assert found is not None and found.resolve() == (repo / ".flyte" / "config.yaml").resolve()
    assert ran and ran[0][:2] == ["git", "rev-parse"]

    ran.clear()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))  # git is pointed elsewhere: only git can answer
    _reader._config_path_from_git_root()
    assert ran and ran[0][:2] == ["git", "rev-parse"]


def test_the_regexes_every_task_compiles_are_compiled_once_in_the_server(monkeypatch):
    """The fork server's warm-up compiles what each task would (~0.9 ms a task): a task that checks an
    environment's name and a storage path after it compiles no regex."""
    import re

    import flyte._environment
    import fsspec.utils
    from flyte.config import _reader
    from flyte.remote._client.auth import _session

    from engine.plugins import zygote_server

    for module, name in ((_session, "_resolve_tls_ca_cert"), (_session, "_supports_system_certs"),
                         (_reader, "_config_path_from_git_root")):  # the other warm-ups patch these
        monkeypatch.setattr(module, name, getattr(module, name))
    re.purge()
    preloaded = zygote_server.Preloaded()
    preloaded._warm_caches()
    assert preloaded.failed == []  # every warm-up applies to the SDK we test against
    compiled = len(re._cache)
    assert compiled >= 2
    assert flyte._environment.is_snake_or_kebab_with_numbers("my-env_2")
    assert fsspec.utils.get_protocol("/data/attempt/outputs.pb") == "file"
    assert len(re._cache) == compiled


def test_the_a0_parse_warm_up_parses_the_engines_command_line_and_runs_nothing(monkeypatch):
    """The fork server warms click by parsing a command line like the engine's: every option it names is
    one a0 takes, nothing runs, and no click context is left behind for the tasks it forks."""
    import click
    from flyte._bin import runtime

    from engine.plugins import zygote_server

    ran = []
    monkeypatch.setattr(runtime, "_run_action", lambda *a, **kw: ran.append(kw))
    ctx = runtime.main.make_context("a0", list(zygote_server.A0_WARM_UP_ARGS))
    assert ctx.params["resolver_args"] == ("mod", "warm", "instance", "warm") and ctx.params["tgz"] == "/warm/code.tgz"
    assert ran == [] and click.get_current_context(silent=True) is None


def _huge_pages_available() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            setting = f.read()
    except OSError:
        return False
    release = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    return "[never]" not in setting and release >= (6, 1)


@pytest.mark.skipif(not _huge_pages_available(), reason="needs transparent huge pages and Linux >= 6.1")
async def test_the_servers_memory_is_in_huge_pages_before_it_forks(zygote):
    """The imported modules' memory is collapsed into 2 MiB pages (a fork copies far fewer page-table
    entries); the server says how much, and the kernel agrees."""
    assert zygote.info["hugePageBytes"] >= 8 << 20
    with open(f"/proc/{zygote.pid}/smaps_rollup") as f:
        huge_kib = next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages"))
    assert huge_kib * 1024 >= 8 << 20
