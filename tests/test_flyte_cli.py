"""The stock flyte CLI (and SDK), unchanged, against a running TaskDeck engine: every command as a subprocess.

The engine runs headless in its own process; `taskdeck flyte-config --write` points the CLI at its TLS
listener, with the owner token from an external command. What the CLI prints is checked, and what the
engine did is checked through `taskdeck get`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.auth import Authority

pytestmark = pytest.mark.sdk

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
FLYTE = str(BIN / "flyte")
SLOW_TASK = '''
import time
import flyte

env = flyte.TaskEnvironment(name="slow")


@env.task
def nap(s: int) -> int:
    time.sleep(s)
    return s


@env.task
def shout(word: str) -> str:
    print(f"SHOUTING {word.upper()}", flush=True)
    return word.upper()
'''


class Deck:
    def __init__(self, data: Path, project: Path, process: subprocess.Popen):
        self.data, self.project, self.process = data, project, process

    def flyte(self, *args: str, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb"}
        return subprocess.run([FLYTE, *args], cwd=cwd or self.project, capture_output=True, text=True,
                              timeout=timeout, env=env)

    def taskdeck(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(self.data), *args],
                              capture_output=True, text=True, timeout=60, cwd=ROOT)

    def run_of(self, name: str) -> dict:
        out = self.taskdeck("get", "runs", "--json")
        assert out.returncode == 0, out.stderr
        return next(r for r in json.loads(out.stdout) if r["run"] == name)

    def wait_for(self, name: str, phases=("SUCCEEDED", "FAILED", "ABORTED", "TIMED_OUT"), timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run_of(name)
            if run["phase"] in phases:
                return run
            assert time.monotonic() < deadline, f"{name} still {run['phase']}"
            time.sleep(0.3)

    def result(self, name: str) -> dict:
        out = self.taskdeck("get", "actions", name, "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


def created_run(output: str) -> str:
    match = re.search(r"Created Run: (\S+)", output) or re.search(r"/runs/([a-z0-9-]+)", output)
    assert match, output
    return match.group(1)


@pytest.fixture(scope="module")
def deck(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    project = tmp_path_factory.mktemp("project")
    shutil.copy(ROOT / "examples" / "basics.py", project)
    shutil.copy(ROOT / "examples" / "fanout.py", project)
    (project / "slow.py").write_text(SLOW_TASK)
    log = open(data.parent / f"{data.name}-engine.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "console.cli", "--data-dir", str(data), "--headless"],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not (data / "engine.json").exists() or "flyteUrl" not in (data / "engine.json").read_text():
        assert process.poll() is None, (data.parent / f"{data.name}-engine.log").read_text()
        assert time.monotonic() < deadline, "the engine did not start"
        time.sleep(0.1)
    deck = Deck(data, project, process)
    written = subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data), "flyte-config",
                              "--write"], cwd=project, capture_output=True, text=True, timeout=60)
    assert written.returncode == 0, written.stderr
    yield deck
    process.terminate()
    process.wait(30)
    log.close()


def test_the_written_config_holds_no_secret_and_points_at_the_tls_listener(deck):
    config = (deck.project / ".flyte" / "config.yaml").read_text()
    token = (deck.data / "token").read_text().strip()
    assert token not in config
    assert "authType: ExternalCommand" in config and "insecure: false" in config
    flyte_url = json.loads((deck.data / "engine.json").read_text())["flyteUrl"]
    assert f"dns:///{flyte_url.split('://')[1]}" in config


def test_run_then_get_run_action_io_and_logs(deck):
    out = deck.flyte("run", "basics.py", "add", "--x", "2", "--y", "40")
    assert out.returncode == 0, out.stdout + out.stderr
    name = created_run(out.stdout)
    run = deck.wait_for(name)
    assert run["phase"] == "SUCCEEDED", run
    assert deck.taskdeck("get", "actions", name).returncode == 0

    listed = deck.flyte("get", "run")
    assert listed.returncode == 0 and name in listed.stdout, listed.stdout + listed.stderr
    details = deck.flyte("get", "run", name)
    assert "ACTION_PHASE_SUCCEEDED" in details.stdout, details.stdout + details.stderr
    actions = deck.flyte("get", "action", name)
    assert actions.returncode == 0 and "a0" in actions.stdout, actions.stdout + actions.stderr
    io = deck.flyte("get", "io", name)
    assert io.returncode == 0 and "o0=42" in io.stdout.replace(" ", ""), io.stdout + io.stderr
    logs = deck.flyte("get", "logs", name)
    assert logs.returncode == 0, logs.stdout + logs.stderr
    assert "Flyte runtime completed for action a0" in logs.stdout
    # The code travelled as on a cluster: the task fetched the uploaded bundle, into a directory of its own.
    assert "--tgz" in logs.stdout and str(deck.data / "uploads") in logs.stdout.replace("\n", "")

    import httpx

    run_url = re.search(r"(https://\S+/runs/" + name + ")", out.stdout).group(1)  # the URL the CLI printed
    import ssl

    page = httpx.get(run_url, verify=ssl.create_default_context(cafile=str(deck.data / "tls" / "ca.pem")))
    assert page.status_code == 200 and name in page.text and "taskdeck get actions" in page.text


def test_follow_streams_the_tasks_own_output(deck):
    out = deck.flyte("run", "--follow", "slow.py", "shout", "--word", "taskdeck")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SHOUTING TASKDECK" in out.stdout
    name = created_run(out.stdout)
    assert deck.wait_for(name)["phase"] == "SUCCEEDED"
    filtered = deck.flyte("get", "logs", name, "--filter-system")  # the engine's own lines are SYSTEM lines
    assert "SHOUTING TASKDECK" in filtered.stdout and "--tgz" not in filtered.stdout, filtered.stdout


def test_the_sdk_runs_waits_and_reads_outputs(deck):
    script = deck.project / "through_sdk.py"
    script.write_text("import flyte, basics\n"
                      "flyte.init_from_config('.flyte/config.yaml')\n"
                      "run = flyte.run(basics.add, x=5, y=6)\n"
                      "run.wait()\n"
                      "print('RUN', run.name, 'OUTPUT', run.outputs()[0])\n")
    out = subprocess.run([sys.executable, str(script)], cwd=deck.project, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    name, output = re.search(r"RUN (\S+) OUTPUT (\S+)", out.stdout).groups()
    assert output == "11"
    assert deck.run_of(name)["phase"] == "SUCCEEDED"


def test_a_run_does_not_depend_on_the_callers_tree(deck, tmp_path):
    caller = tmp_path / "caller"
    caller.mkdir()
    shutil.copytree(deck.project / ".flyte", caller / ".flyte")
    (caller / "solo.py").write_text("import flyte\nenv = flyte.TaskEnvironment(name='solo')\n\n\n"
                                    "@env.task\ndef triple(x: int) -> int:\n    return 3 * x\n")
    out = deck.flyte("run", "solo.py", "triple", "--x", "5", cwd=caller)
    assert out.returncode == 0, out.stdout + out.stderr
    first = created_run(out.stdout)
    assert deck.wait_for(first)["phase"] == "SUCCEEDED"
    shutil.rmtree(caller)  # gone: a rerun works from the uploaded bundle
    again = deck.flyte("rerun", first)
    assert again.returncode == 0, again.stdout + again.stderr
    second = created_run(again.stdout)
    assert second != first
    assert deck.wait_for(second)["phase"] == "SUCCEEDED"
    assert "15" in deck.flyte("get", "io", second).stdout


def test_deploy_then_run_the_deployed_task(deck):
    out = deck.flyte("deploy", "basics.py", "env")
    assert out.returncode == 0, out.stdout + out.stderr
    tasks = deck.flyte("get", "task")
    assert "basics.add" in tasks.stdout, tasks.stdout + tasks.stderr
    assert "basics.add" in deck.taskdeck("get", "tasks").stdout  # registered in the engine, by version
    out = deck.flyte("run", "deployed-task", "basics.add", "--x", "1", "--y", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    name = created_run(out.stdout)
    assert deck.wait_for(name)["phase"] == "SUCCEEDED"
    assert "o0=3" in deck.flyte("get", "io", name).stdout.replace(" ", "")


def test_abort_a_running_run(deck):
    out = deck.flyte("run", "--name", "napper", "slow.py", "nap", "--s", "120")
    assert out.returncode == 0, out.stdout + out.stderr
    deck.wait_for("napper", phases=("RUNNING",))
    aborted = deck.flyte("abort", "run", "napper")
    assert aborted.returncode == 0, aborted.stdout + aborted.stderr
    assert deck.wait_for("napper")["phase"] == "ABORTED"


def test_signal_a_paused_condition(deck):
    out = deck.flyte("run", "--name", "approval-1", "fanout.py", "approval", "--x", "7")
    assert out.returncode == 0, out.stdout + out.stderr
    deck.wait_for("approval-1", phases=("PAUSED",))
    deadline = time.monotonic() + 30
    while True:
        listed = deck.flyte("get", "condition", "approval-1")
        if "approve" in listed.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "approve" in listed.stdout and "bool" in listed.stdout and "PAUS" in listed.stdout, listed.stdout + listed.stderr
    assert "ACTION_PHASE_RUNNING" not in listed.stdout  # only the condition, not its parent
    condition = next(a["name"] for a in deck.result("approval-1") if a["actionType"] == "condition")
    signalled = deck.flyte("signal", "condition", "approval-1", condition, "true")
    assert signalled.returncode == 0, signalled.stdout + signalled.stderr
    assert deck.wait_for("approval-1")["phase"] == "SUCCEEDED"
    assert "7" in deck.flyte("get", "io", "approval-1").stdout


def test_projects_whoami_and_an_unknown_project(deck):
    created = deck.flyte("create", "project", "--id", "cliproj", "--name", "From the CLI")
    assert created.returncode == 0, created.stdout + created.stderr
    shown = deck.flyte("get", "project", "cliproj")
    assert "cliproj" in shown.stdout, shown.stdout + shown.stderr
    assert "cliproj" in deck.taskdeck("project", "list").stdout
    assert "flytesnacks" in deck.flyte("get", "project").stdout
    who = deck.flyte("whoami")
    assert who.returncode == 0 and os.environ.get("USER", "") in who.stdout, who.stdout + who.stderr
    refused = deck.flyte("run", "--project", "nosuchproject", "basics.py", "add", "--x", "1", "--y", "1")
    assert refused.returncode != 0
    assert "nosuchproject" in refused.stdout + refused.stderr and "flytesnacks" in refused.stdout + refused.stderr


def test_a_cli_without_the_credential_is_refused(deck, tmp_path):
    config = (deck.project / ".flyte" / "config.yaml").read_text()
    (tmp_path / ".flyte").mkdir()
    wrong = re.sub(r"command: .*", 'command: ["echo", "tdo_not-the-token-not-the-token-not-the-token"]', config)
    (tmp_path / ".flyte" / "config.yaml").write_text(wrong)
    out = deck.flyte("get", "project", cwd=tmp_path)
    assert out.returncode != 0
    assert "credential" in (out.stdout + out.stderr).lower() or "unauthenticated" in (out.stdout + out.stderr).lower()
    url = json.loads((deck.data / "engine.json").read_text())["flyteUrl"].split("://")[1]
    (tmp_path / ".flyte" / "config.yaml").write_text(
        f"admin:\n  endpoint: dns:///{url}\n  insecure: true\ntask:\n  project: flytesnacks\n  domain: development\n")
    plain = deck.flyte("get", "project", cwd=tmp_path)  # plain HTTP to the TLS port, no credential at all
    assert plain.returncode != 0


def test_a_task_credential_does_not_reach_the_control_plane(deck):
    import httpx

    authority = Authority(deck.data)
    authority.load()
    token = authority.run_token("flytesnacks", "development", "napper")
    url = json.loads((deck.data / "engine.json").read_text())["url"]
    answer = httpx.post(f"{url}/flyteidl2.workflow.RunService/ListRuns", content=b"",
                        headers={"content-type": "application/proto", "authorization": f"Bearer {token}",
                                 "connect-protocol-version": "1"})
    assert answer.status_code == 403 and "control-plane" in answer.text


def test_upload_urls_are_signed_for_one_path_one_body_and_a_time(deck):
    import base64
    import hashlib

    import httpx

    authority = Authority(deck.data)
    authority.load()
    body = b"print('uploaded')\n"
    md5 = hashlib.md5(body).hexdigest()
    path = f"/uploads/flytesnacks/development/{md5}/up.py"
    url = json.loads((deck.data / "engine.json").read_text())["url"]
    headers = {"content-md5": base64.b64encode(bytes.fromhex(md5)).decode()}
    signed = authority.sign_path(path, 60, bound=md5)
    assert httpx.put(f"{url}{signed.replace('signature=', 'signature=x')}", content=body).status_code == 403
    assert httpx.put(f"{url}{path}", content=body).status_code == 403  # no signature at all
    other = authority.sign_path(path.replace("up.py", "other.py"), 60, bound=md5)
    assert httpx.put(f"{url}{path}?{other.split('?')[1]}", content=body).status_code == 403  # another path's
    expired = authority.sign_path(path, 60, now=time.time() - 120, bound=md5)
    assert httpx.put(f"{url}{expired}", content=body).status_code == 403
    assert httpx.put(f"{url}{signed}", content=b"other bytes").status_code == 400  # not the signed MD5
    stored = deck.data / "uploads" / "flytesnacks" / "development" / md5 / "up.py"
    assert not stored.exists()
    assert httpx.put(f"{url}{signed}", content=body, headers=headers).status_code == 201
    assert stored.read_bytes() == body
    assert httpx.put(f"{url}{signed}", content=body).status_code == 200  # the same again: stored already


SECRET_TASK = '''
import os
import flyte

env = flyte.TaskEnvironment(name="sec", secrets=[flyte.Secret(key="cli-canary", as_env_var="API_KEY")])


@env.task
def peek() -> int:
    print("the key is", os.environ["API_KEY"], flush=True)
    return len(os.environ["API_KEY"])
'''

TRIGGER_TASK = '''
from datetime import datetime
import flyte

env = flyte.TaskEnvironment(name="trig")


@env.task(triggers=flyte.Trigger("nightly", flyte.Cron("0 3 * * *")))
def tick(trigger_time: datetime, n: int = 1) -> str:
    return f"{trigger_time.isoformat()} {n}"
'''


def test_secrets_created_with_the_cli_reach_tasks_and_never_come_back(deck):
    canary = "cAnArY-7f3a9c1e-from-the-flyte-cli"
    (deck.project / "sec.py").write_text(SECRET_TASK)
    created = deck.flyte("create", "secret", "cli-canary", "--value", canary)
    assert created.returncode == 0, created.stdout + created.stderr
    listed = deck.flyte("get", "secret")
    assert "cli-canary" in listed.stdout and canary not in listed.stdout, listed.stdout + listed.stderr
    shown = deck.flyte("get", "secret", "cli-canary")
    assert shown.returncode == 0 and canary not in shown.stdout
    assert "cli-canary" in deck.taskdeck("secret", "list").stdout
    out = deck.flyte("run", "--follow", "sec.py", "peek")
    assert out.returncode == 0, out.stdout + out.stderr
    name = created_run(out.stdout)
    assert deck.wait_for(name)["phase"] == "SUCCEEDED"
    assert f"o0={len(canary)}" in deck.flyte("get", "io", name).stdout.replace(" ", "")
    logs = deck.flyte("get", "logs", name)
    assert "the key is" in logs.stdout and canary not in logs.stdout + out.stdout  # masked when shown
    deleted = deck.flyte("delete", "secret", "cli-canary")
    assert deleted.returncode == 0, deleted.stdout + deleted.stderr
    assert "cli-canary" not in deck.taskdeck("secret", "list").stdout


def test_triggers_deployed_created_and_deactivated_with_the_cli(deck):
    (deck.project / "trig.py").write_text(TRIGGER_TASK)
    deployed = deck.flyte("deploy", "trig.py", "env")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    created = deck.flyte("create", "trigger", "trig.tick", "hourly", "--schedule", "0 * * * *")
    assert created.returncode == 0, created.stdout + created.stderr
    listed = deck.flyte("get", "trigger")
    assert "nightly" in listed.stdout and "hourly" in listed.stdout, listed.stdout + listed.stderr
    updated = deck.flyte("update", "trigger", "nightly", "trig.tick", "--deactivate")
    assert updated.returncode == 0, updated.stdout + updated.stderr
    rows = {line.split()[2]: line.split() for line in deck.taskdeck("trigger", "list").stdout.splitlines()[1:]}
    assert rows["nightly"][4] == "no" and rows["nightly"][5] == "2"  # a revision per change
    assert rows["hourly"][4] == "yes"
    history = deck.taskdeck("trigger", "history", "nightly")
    assert history.returncode == 0 and "deactivat" in history.stdout.lower(), history.stdout + history.stderr


def test_a_fan_out_unpacks_its_bundle_once_and_each_action_works_in_its_own_directory(deck):
    out = deck.flyte("run", "fanout.py", "sum_of_squares", "--n", "4")
    assert out.returncode == 0, out.stdout + out.stderr
    name = created_run(out.stdout)
    assert deck.wait_for(name)["phase"] == "SUCCEEDED"
    actions = deck.result(name)
    assert len(actions) == 5, actions
    unpacked = list((deck.data / "uploads").rglob("*.tar.gz.code"))
    marker = [u for u in unpacked if (u / "fanout.py").exists()]
    assert len(marker) == 1, unpacked
    shared = marker[0] / "fanout.py"
    run_dir = deck.data / "data" / "flytesnacks" / "development" / name
    working = sorted(run_dir.glob("*/1/code/fanout.py"))
    assert len(working) == 5  # the parent and four children, each in a directory of its own ...
    assert all(p.stat().st_ino == shared.stat().st_ino for p in working)  # ... of links, not unpackings
    assert "o0=14" in deck.flyte("get", "io", name).stdout.replace(" ", "")  # 0 + 1 + 4 + 9


def test_the_sdk_over_plain_http_with_the_credential_in_its_endpoint(deck):
    """`flyte.init(endpoint=..., insecure=True)` sends no credential header; the endpoint's path can carry it."""
    script = deck.project / "plain_init.py"
    script.write_text("import json, pathlib, sys\n"
                      "import flyte, basics\n"
                      "data = pathlib.Path(sys.argv[1])\n"
                      "url = json.loads((data / 'engine.json').read_text())['url']\n"
                      "token = (data / 'token').read_text().strip() if sys.argv[2] == 'with' else ''\n"
                      "flyte.init(endpoint=f'{url}/c/{token}' if token else url, insecure=True,\n"
                      "           project='flytesnacks', domain='development')\n"
                      "run = flyte.run(basics.add, x=20, y=22)\n"
                      "run.wait()\n"
                      "print('RUN', run.name, 'OUTPUT', run.outputs()[0], 'URL', run.url)\n")
    token = (deck.data / "token").read_text().strip()
    out = subprocess.run([sys.executable, str(script), str(deck.data), "with"], cwd=deck.project,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    name, output, url = re.search(r"RUN (\S+) OUTPUT (\S+) URL (\S+)", out.stdout).groups()
    assert output == "42" and deck.run_of(name)["phase"] == "SUCCEEDED"
    assert token not in url  # the run URL the SDK prints does not carry the credential
    refused = subprocess.run([sys.executable, str(script), str(deck.data), "without"], cwd=deck.project,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "credential" in refused.stdout + refused.stderr


def test_the_run_page_echoes_only_a_run_name(deck):
    import ssl

    import httpx

    url = json.loads((deck.data / "engine.json").read_text())["flyteUrl"]
    context = ssl.create_default_context(cafile=str(deck.data / "tls" / "ca.pem"))
    page = httpx.get(f"{url}/v2/domain/development/project/flytesnacks/runs/%3Cscript%3E", verify=context)
    assert page.status_code == 404 and "script" not in page.text


def test_a_proxy_authorization_header_is_a_credential_on_the_plain_listener(deck):
    """What the SDK's auth proxy command (``admin.proxyCommand``) sends: the owner token as
    ``Proxy-Authorization: Bearer``, on plain HTTP; a wrong one, or none, is refused."""
    import httpx

    url = json.loads((deck.data / "engine.json").read_text())["url"]
    token = (deck.data / "token").read_text().strip()
    rpc = f"{url}/flyteidl2.project.ProjectService/ListProjects"
    headers = {"content-type": "application/json", "connect-protocol-version": "1"}
    shown = httpx.post(rpc, json={}, headers={**headers, "proxy-authorization": f"Bearer {token}"}, timeout=30)
    assert shown.status_code == 200 and "flytesnacks" in shown.text, shown.text
    for wrong in ({"proxy-authorization": "Bearer tdo_" + "x" * 40}, {}):
        refused = httpx.post(rpc, json={}, headers={**headers, **wrong}, timeout=30)
        assert refused.status_code == 401 and "flytesnacks" not in refused.text, refused.text


def test_the_sdk_still_cannot_use_an_auth_proxy_command(deck, tmp_path):
    """Why `flyte-config` writes `authType: ExternalCommand` over TLS rather than `admin.proxyCommand`:
    flyte 2.12.1's init passes ``command=None`` along with the proxy command, and its proxy authenticator
    then gets ``command`` twice. When this fails, the SDK is fixed: write proxyCommand instead."""
    url = json.loads((deck.data / "engine.json").read_text())["url"].split("://")[1]
    (tmp_path / ".flyte").mkdir()
    (tmp_path / ".flyte" / "config.yaml").write_text(
        f"admin:\n  endpoint: dns:///{url}\n  insecure: true\n"
        f"  proxyCommand: [{json.dumps(sys.executable)}, -m, console.cli, token, --data-dir, "
        f"{json.dumps(str(deck.data))}]\ntask:\n  project: flytesnacks\n  domain: development\n")
    out = deck.flyte("get", "project", cwd=tmp_path)
    assert out.returncode != 0
    assert "multiple values for keyword argument 'command'" in out.stdout + out.stderr, out.stdout + out.stderr
