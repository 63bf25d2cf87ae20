"""Reports (flyte.report, report=True): kept per attempt where the SDK writes them, and reachable through
the client interface (path and a text summary) and `taskdeck get report RUN[/ACTION]`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from engine.client.local import LocalClient
from engine.phases import ActionPhase
from helpers import cli, run_sdk_task

pytestmark = pytest.mark.sdk
PROGRAMS = Path(__file__).parent / "programs"


async def test_a_tasks_report_is_kept_and_reachable(engine, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    tasks = shutil.copy(PROGRAMS / "report_tasks.py", code / "report_tasks.py")
    result = await run_sdk_task(engine, tasks, "summarize", n=5)
    assert result.phase == ActionPhase.SUCCEEDED, result.error
    run = result.run.run_name
    io = await LocalClient(engine.services).action_io(run, "a0", 1)
    assert io.report is not None and io.report["summary"] == "Sum of 5 total 10"
    assert Path(io.report["path"]).is_file() and str(engine.data_dir) in io.report["path"]

    code_, out, err = await cli(engine.data_dir, "get", "report", f"{run}/a0")
    assert code_ == 0, err
    assert out.splitlines() == [io.report["path"], "  Sum of 5 total 10"]
    code_, out, err = await cli(engine.data_dir, "get", "report", run, "--json")
    assert code_ == 0 and json.loads(out)["summary"] == "Sum of 5 total 10"

    plain = await run_sdk_task(engine, Path(__file__).parent.parent / "examples" / "basics.py", "add", x=1, y=2)
    code_, out, err = await cli(engine.data_dir, "get", "report", plain.run.run_name)
    assert code_ == 2 and "has no report" in err and len(err.strip().splitlines()) == 1
