"""Registered tasks: `taskdeck deploy FILE [ENV]` registers tasks by project, domain, name and version with a
code bundle; `taskdeck run deployed-task NAME[@VERSION]` runs one from its bundle (extracted once), not
from the working tree; an identical re-deploy changes nothing, another spec under a version is refused."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from engine.client.local import LocalClient
from engine.engine import Engine, EngineConfig
from engine.errors import InvalidRunError
from helpers import cli

pytestmark = pytest.mark.sdk

TASKS = textwrap.dedent('''
    import pathlib
    import flyte

    env = flyte.TaskEnvironment(name="deployed")
    other = flyte.TaskEnvironment(name="other")

    @env.task
    async def read_notes(suffix: str = "!") -> str:
        """Reads a data file that travels in the bundle."""
        return pathlib.Path("notes.txt").read_text().strip() + suffix

    @other.task
    async def unrelated(x: int) -> int:
        return x
''')


@pytest.fixture
async def engine(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "deploy_tasks.py").write_text(TASKS)
    (code / "notes.txt").write_text("from the bundle")
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", allowed_code_dirs=(code,)))
    engine.code = code
    await engine.start()
    yield engine
    await engine.stop()


async def test_deploy_then_run_from_the_bundle_not_the_working_tree(engine):
    code = engine.code
    rc, out, err = await cli(engine.data_dir, "deploy", str(code / "deploy_tasks.py"), "deployed", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert [(r["name"], r["registered"]) for r in rows] == [("deployed.read_notes", True)]  # only that env
    version = rows[0]["version"]
    rc, out, err = await cli(engine.data_dir, "deploy", str(code / "deploy_tasks.py"), "deployed", "--json")
    assert rc == 0 and not json.loads(out)[0]["registered"]  # identical: unchanged

    (code / "notes.txt").write_text("changed in the working tree")
    (code / "deploy_tasks.py").unlink()
    rc, out, err = await cli(engine.data_dir, "run", "--json", "deployed-task", "deployed.read_notes", "--suffix", "?")
    assert rc == 0, err
    assert json.loads(out)["outputs"] == {"o0": "from the bundle?"}
    rc, out, err = await cli(engine.data_dir, "run", "--json", "deployed-task", f"deployed.read_notes@{version}")
    assert rc == 0, err
    assert json.loads(out)["outputs"] == {"o0": "from the bundle!"}  # the registered default
    bundles = list((engine.data_dir / "bundles").iterdir())
    assert len(bundles) == 1 and (bundles[0] / "notes.txt").read_text() == "from the bundle"  # extracted once

    rc, out, err = await cli(engine.data_dir, "run", "deployed-task", "deployed.read_notes", "--help")
    assert rc == 0 and "--suffix TEXT" in out and "[default: !]" in out
    rc, out, err = await cli(engine.data_dir, "run", "deployed-task", "deployed.nope")
    assert rc == 2 and "no task 'deployed.nope' is deployed" in err and len(err.strip().splitlines()) == 1
    rc, out, err = await cli(engine.data_dir, "get", "tasks", "--json")
    assert [(r["name"], r["version"]) for r in json.loads(out)] == [("deployed.read_notes", version)]


async def test_a_version_names_one_spec(engine):
    from engine.sdk import load_task, serialize_task

    client = LocalClient(engine.services)
    task = load_task(engine.code / "deploy_tasks.py", "read_notes")
    spec = serialize_task(task, project="flytesnacks", domain="development", root_dir=engine.code, version="v1",
                          with_defaults=True)
    assert [d.name for d in spec.default_inputs] == ["suffix"]
    first = await client.deploy_task(spec.SerializeToString(), project="flytesnacks", domain="development")
    assert first["registered"] and first["version"] == "v1"
    spec.short_name = "something else"
    with pytest.raises(InvalidRunError, match="registered with another spec: deploy a new version"):
        await client.deploy_task(spec.SerializeToString(), project="flytesnacks", domain="development")
    with pytest.raises(InvalidRunError, match="bundle must be a file the engine stored"):
        await client.deploy_task(spec.SerializeToString(), project="flytesnacks", domain="development",
                                 bundle=str(Path("/etc/passwd")))
    with pytest.raises(InvalidRunError, match="does not exist"):
        await client.deploy_task(spec.SerializeToString(), project="nowhere", domain="development")


async def test_the_console_starts_a_registered_task_with_its_inputs(engine):
    from console.app import TaskDeckApp
    from console.screens.dialogs import InputScreen
    from console.screens.run import RunScreen
    from console.screens.tasks import TasksScreen
    from helpers import until

    assert (await cli(engine.data_dir, "deploy", str(engine.code / "deploy_tasks.py")))[0] == 0
    app = TaskDeckApp(engine)
    async with app.run_test(size=(160, 45)) as pilot:
        app.action_tasks()
        await until(pilot, lambda: isinstance(app.screen, TasksScreen) and len(app.screen.rows) == 2)
        table = app.screen.query_one("DataTable")
        table.move_cursor(row=table.get_row_index("flytesnacks/development/deployed.read_notes"))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, InputScreen))
        await pilot.press(*"--suffix ...", "enter")
        await until(pilot, lambda: isinstance(app.screen, RunScreen), timeout=30)
        run = app.screen.run_name
        result = await engine.runs.wait_for_run(run, timeout=120)
        assert result.outputs == {"o0": "from the bundle..."}


async def test_a_missing_bundle_fails_the_run_saying_so(engine):
    import shutil as shutil_module

    assert (await cli(engine.data_dir, "deploy", str(engine.code / "deploy_tasks.py"), "deployed"))[0] == 0
    shutil_module.rmtree(engine.data_dir / "uploads")
    client = LocalClient(engine.services)
    with pytest.raises(InvalidRunError, match="the code bundle of deployed.read_notes .* is missing .*deploy it again"):
        await client.run_task("deployed.read_notes", project="flytesnacks", domain="development", args=[])


async def test_a_dataframe_input_given_as_args_to_a_registered_task_is_stored(engine, tmp_path):
    pytest.importorskip("pandas")
    import shutil as shutil_module

    shutil_module.copy(Path(__file__).parent / "compat" / "frames.py", engine.code / "frames.py")
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    assert (await cli(engine.data_dir, "deploy", str(engine.code / "frames.py")))[0] == 0
    client = LocalClient(engine.services)
    run = await client.run_task("compat_frames.describe", project="flytesnacks", domain="development",
                                args=["--df", str(csv)])  # the SDK copies the CSV while converting
    result = await engine.runs.wait_for_run(run.run_name, timeout=120)
    assert result.phase.name == "SUCCEEDED", result.error
