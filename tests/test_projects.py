"""Projects: flytesnacks exists out of the box with Flyte's three domains; projects are created and listed
through the client, the API and the CLI; a run in an unknown project or domain is refused naming the projects
there are and the command that creates one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.client.local import LocalClient
from engine.client.remote import RemoteClient
from engine.engine import Engine, EngineConfig
from engine.errors import InvalidRunError
from helpers import cli, task_spec

BASICS = str(Path(__file__).parent.parent / "examples" / "basics.py")


async def test_the_default_project_exists_and_unknown_ones_are_refused_naming_the_fix(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", allowed_code_dirs=(Path(BASICS).parent,)))
    await engine.start()
    try:
        client = LocalClient(engine.services)
        projects = await client.list_projects()
        assert [(p["id"], p["domains"]) for p in projects] == [
            ("flytesnacks", ["development", "staging", "production"])]
        spec = task_spec("python").SerializeToString()
        with pytest.raises(InvalidRunError, match=r"project 'ml' does not exist \(projects: flytesnacks\); create "
                                                  r"it with `taskdeck project create ml`"):
            await client.create_run(spec, b"", project="ml", domain="development")
        with pytest.raises(InvalidRunError, match="has no domain 'qa'"):
            await client.create_run(spec, b"", project="flytesnacks", domain="qa")
        assert await engine.runs.list_runs() == []

        remote = RemoteClient(engine.url, engine.authority.owner_token)
        try:
            made = await remote.create_project("ml", description="models")
            assert made["domains"] == ["development", "staging", "production"]
            assert (await remote.create_project("ml"))["description"] == "models"  # creating it again is fine
            with pytest.raises(InvalidRunError):
                await remote.create_project("Not_A_Label")
            assert [p["id"] for p in await remote.list_projects()] == ["flytesnacks", "ml"]
        finally:
            await remote.close()

        code, out, err = await cli(engine.data_dir, "run", "--project", "nope", BASICS, "add", "--x", "1", "--y", "2")
        assert code == 2 and "taskdeck project create nope" in err and len(err.strip().splitlines()) == 1, err
        code, out, err = await cli(engine.data_dir, "project", "create", "nope", "--description", "now it is")
        assert code == 0, err
        code, out, err = await cli(engine.data_dir, "run", "--json", "--project", "nope", BASICS, "add", "--x", "1",
                                    "--y", "2")
        assert code == 0 and json.loads(out)["outputs"] == {"o0": 3}, err
        code, out, err = await cli(engine.data_dir, "project", "list", "--json")
        assert [p["id"] for p in json.loads(out)] == ["flytesnacks", "ml", "nope"]
    finally:
        await engine.stop()
