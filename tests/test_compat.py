"""Compatibility: the same Flyte v2 programs and command lines through `flyte run --local` and
`taskdeck run --json`, with the same results. Each program's entry points return a base64 JSON summary of
what they received and computed (file contents, not paths), so the two outputs compare as data; a failing
case must fail in both, with the task's own error text. The README keeps the table of these cases."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from engine.engine import Engine, EngineConfig

pytestmark = pytest.mark.sdk
PROGRAMS = Path(__file__).parent / "compat"
FLYTE = str(Path(sys.executable).with_name("flyte"))
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# (case id, program, task, arguments, expected: "ok" or the error text both must show)
CASES = [
    ("scalars-and-flags", "types_tasks.py", "scalars", "--count 3 --ratio 2 --name bob --flag --no-loud", "ok"),
    ("defaults", "types_tasks.py", "scalars", "--count 1 --ratio 0.5 --name x", "ok"),
    ("datetime-date-duration", "types_tasks.py", "times",
     "--start_time 2024-01-15T10:30:00 --day 2024-02-01 --duration PT1H", "ok"),
    ("human-duration", "types_tasks.py", "times", "--start_time 2024-01-15 --day 2024-02-01 --duration '90 minutes'",
     "ok"),
    ("enum-optional-union", "types_tasks.py", "choices", "--color GREEN --maybe 4 --either abc", "ok"),
    ("union-int", "types_tasks.py", "choices", "--color RED --either 7", "ok"),
    ("dataclass-pydantic-from-files", "types_tasks.py", "structured",
     """--features @features.json --model @model.yaml --numbers [1,2] --table '{"a":[1.0,2.5]}'""", "ok"),
    ("dataclass-int-to-float", "types_tasks.py", "structured",
     """--features '{"feature_a":1}' --model '{"name":"m","weights":{"w":1}}' --numbers [] --table {}""", "ok"),
    ("typeddict", "shapes.py", "typed", """--opts '{"depth":2,"name":"x"}'""", "ok"),
    ("namedtuple", "shapes.py", "named", """--pair '{"left":1,"right":"a"}'""", "ok"),
    ("file-and-dir", "types_tasks.py", "files", "--data in.txt --folder folder", "ok"),
    ("dataframe-from-csv", "frames.py", "describe", "--df t.csv", "ok"),
    ("dataframe-raw", "frames.py", "describe_raw", "--frame t.csv", "ok"),
    ("dataframe-between-tasks", "frames.py", "frame_pipeline", "--n 4", "ok"),
    ("children-traces-dataclass", "workflows.py", "fan_out", "--n 3", "ok"),
    ("containers-optional", "workflows.py", "containers", "--n 5 --flag", "ok"),
    ("retries-with-backoff", "workflows.py", "retried", "--ledger {ledger} --fail_times 2", "ok"),
    ("non-recoverable", "workflows.py", "refused_child", "--x 3", "no retry for 3"),
    ("user-error", "workflows.py", "fails", "--x 4", "bad value 4"),
]


def _args(text: str, work: Path) -> list[str]:
    import shlex

    out = []
    for token in shlex.split(text.replace("{ledger}", str(work / "ledger"))):
        out.append(str(work / token[1:]) if token.startswith("@") else token)  # a JSON/YAML file input
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("compat")
    for program in PROGRAMS.glob("*.py"):
        shutil.copy(program, work / program.name)
    (work / "in.txt").write_text("hello file")
    (work / "folder").mkdir()
    (work / "folder" / "a.txt").write_text("a")
    (work / "folder" / "b.txt").write_text("b")
    (work / "features.json").write_text('{"feature_a": 1, "tags": ["x"]}')
    (work / "model.yaml").write_text("name: m\nweights: {w: 2}\nnested: {feature_a: 2.5}\n")
    (work / "t.csv").write_text("a,b\n1,2\n3,4\n")
    return work


@pytest.fixture
async def engine(tmp_path, work):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", allowed_code_dirs=(work,)))
    await engine.start()
    yield engine
    await engine.stop()


async def _run(*command: str, cwd: Path) -> tuple[int, str, str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "4000", "TERM": "dumb"}
    done = await asyncio.create_subprocess_exec(*command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(done.communicate(), 240)
    return done.returncode, ANSI.sub("", out.decode()), ANSI.sub("", err.decode())


def _decode(text: str):
    return json.loads(base64.b64decode(text))


def _flyte_outcome(out: str, err: str):
    found = re.search(r"o0=['\"]([A-Za-z0-9+/=]+)['\"]", out.replace("\n", ""))
    if found:
        return "ok", _decode(found.group(1))
    failed = re.search(r"Execution failed: (.*)", out + err)
    return "error", failed.group(1).strip() if failed else (out + err)[-2000:]


@pytest.mark.parametrize("case, program, task, arguments, expected", CASES, ids=[c[0] for c in CASES])
async def test_taskdeck_and_flyte_run_local_agree(engine, work, case, program, task, arguments, expected):
    if program == "frames.py":
        pytest.importorskip("pandas", reason="DataFrame cases need the dataframe extra")
    args = _args(arguments, work)
    shutil.rmtree(work / "ledger", ignore_errors=True)
    code, out, err = await _run(FLYTE, "-of", "json", "run", "--local", program, task, *args, cwd=work)
    theirs = _flyte_outcome(out, err)
    shutil.rmtree(work / "ledger", ignore_errors=True)
    code, out, err = await _run(sys.executable, "-m", "console.cli", "--data-dir", str(engine.data_dir), "run",
                                "--json", program, task, *args, cwd=work)
    assert out.strip(), err
    ours = json.loads(out.strip().splitlines()[-1])
    if expected == "ok":
        assert theirs[0] == "ok", f"flyte run --local did not succeed: {theirs[1]}"
        assert ours["phase"] == "SUCCEEDED", ours["error"]
        assert _decode(ours["outputs"]["o0"]) == theirs[1]
    else:
        assert theirs[0] == "error" and expected in theirs[1], theirs
        assert ours["phase"] == "FAILED" and expected in ours["error"]["message"], ours
