"""`taskdeck run` ships its code as a bundle, as `flyte run` does: the modules the task loaded from its
directory, stored in the engine, unpacked once, and linked into a working directory per attempt."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from engine.code_bundle import loaded_files, make_bundle
from helpers import cli

HELPER = "FACTOR = 3\n"
TASK = '''
import os
import flyte
import helper

env = flyte.TaskEnvironment(name="bundled")


@env.task
def scaled(x: int, ledger: str) -> int:
    if not os.path.exists(ledger):
        raise RuntimeError("no ledger yet")
    with open("scratch.txt", "w") as f:  # in the attempt's own working directory
        f.write(os.getcwd())
    return x * helper.FACTOR
'''


def test_a_bundle_holds_the_loaded_modules_and_is_reproducible(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "mod_a.py").write_text("A = 1\n")
    (code / "unrelated.csv").write_text("x\n" * 1000)
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("mod_a", code / "mod_a.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mod_a"] = module
    spec.loader.exec_module(module)
    try:
        files = loaded_files(code, code / "mod_a.py")
    finally:
        del sys.modules["mod_a"]
    assert files == [(code / "mod_a.py").resolve()]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first, digest = make_bundle(files, code, tmp_path / "one")
    second, again = make_bundle(files, code, tmp_path / "two")
    assert digest == again and first.read_bytes() == second.read_bytes()
    assert first.name == f"fast{digest}.tar.gz"
    with tarfile.open(first) as archive:
        assert archive.getnames() == ["mod_a.py"]
        # unpacked files keep their times, and the Spark plugin zips them for its executors: ZIP has no
        # times before 1980 (the SDK's own bundler uses 1981 too)
        assert [m.mtime for m in archive.getmembers()] == [347155200]


@pytest.mark.sdk
async def test_taskdeck_run_works_from_its_bundle_not_the_callers_tree(tmp_path):
    data, code = tmp_path / "data", tmp_path / "code"
    code.mkdir()
    (code / "helper.py").write_text(HELPER)
    (code / "job.py").write_text(TASK)
    ledger = tmp_path / "ledger"
    status, out, err = await cli(data, "--json", "run", str(code / "job.py"), "scaled", "--x", "5",
                                 "--ledger", str(ledger))
    assert out, err
    result = json.loads(out)
    assert result["phase"] == "FAILED", (out, err)
    run = result["run"]
    shutil.rmtree(code)  # the caller's tree is gone ...
    ledger.write_text("ok")
    status, out, err = await cli(data, "retry", run)  # waits for the new attempt
    assert status == 0 and "SUCCEEDED" in out and "15" in out, (out, err)  # ... the retry ran the bundled code
    attempts = sorted((data / "data" / "flytesnacks" / "development" / run / "a0").glob("*/code"))
    assert len(attempts) == 2  # each attempt in a directory of its own
    assert (attempts[1] / "scratch.txt").read_text() == str(attempts[1])
    assert not (attempts[0] / "scratch.txt").exists()
    log = (data / "logs" / run / "a0" / "1.log").read_text()
    assert "--tgz" in log and str(data / "uploads") in log
    bundle = next((data / "uploads" / "flytesnacks" / "development").rglob("fast*.tar.gz"))
    with tarfile.open(bundle) as archive:
        assert sorted(archive.getnames()) == ["helper.py", "job.py"]


    code.mkdir()  # a bundle that is gone fails the next attempt, saying so
    (code / "helper.py").write_text(HELPER)
    (code / "job.py").write_text(TASK)
    ledger.unlink()
    status, out, err = await cli(data, "--json", "run", str(code / "job.py"), "scaled", "--x", "5",
                                 "--ledger", str(ledger))
    second = json.loads(out)["run"]
    assert json.loads(out)["phase"] == "FAILED"
    bundle.unlink()
    shutil.rmtree(f"{bundle}.code")
    status, out, err = await cli(data, "retry", second)  # waits for the new attempt
    assert status == 1 and "FAILED" in out and "CodeBundleMissing" in out and "upload it again" in out, (out, err)
