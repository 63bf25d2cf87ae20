"""Bad input to the command line: one line naming the problem, exit code 2, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_tasks

ROOT = Path(__file__).parent.parent
BASICS = str(ROOT / "examples" / "basics.py")

pytestmark = pytest.mark.sdk


def _cli(*args, data_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "console.cli", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _usage_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture
def tasks(tmp_path) -> str:
    return write_tasks(tmp_path, """

        @env.task
        def count(d: dict[str, int]) -> int:
            return len(d)

        @env.task
        def half(x: float) -> float:
            return x / 2
        """)


def test_inputs_of_the_wrong_shape_or_depth(tmp_path, tasks):
    data = tmp_path / "data"
    _usage_error(_cli("run", tasks, "count", "--d", "[1, 2]", data_dir=data), "'d'")
    _usage_error(_cli("run", tasks, "count", "--d", "[" * 20_000 + "]" * 20_000, data_dir=data), "--d", "nested")
    _usage_error(_cli("run", tasks, "count", "--d", "{not json", data_dir=data), "--d")


def test_a_duplicate_run_name_is_a_usage_error(tmp_path):
    data = tmp_path / "data"
    first = _cli("run", "--run-name", "once", BASICS, "add", "--x", "1", "--y", "2", data_dir=data)
    assert first.returncode == 0, first.stderr
    _usage_error(_cli("run", "--run-name", "once", BASICS, "add", "--x", "1", "--y", "2", data_dir=data),
                 "once", "already exists")


def test_numbers_and_data_directories_out_of_range(tmp_path):
    _usage_error(_cli("get", "runs", "--limit", str(10 ** 20), data_dir=tmp_path), "--limit")
    _usage_error(_cli("get", "runs", "--limit", "nan", data_dir=tmp_path), "--limit")
    _usage_error(_cli("--max-processes", "0", "--headless", data_dir=tmp_path), "--max-processes")
    _usage_error(_cli("--gc-ttl", "inf", "--headless", data_dir=tmp_path), "--gc-ttl")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    _usage_error(_cli("get", "runs", data_dir=a_file), "not a directory")
    _usage_error(_cli("run", BASICS, "add", "--x", "1", "--y", "2", data_dir=a_file), "not a directory")
    _usage_error(_cli("run", BASICS, "add", "--x", "1", "--y", "2", data_dir=Path("/proc/taskdeck")),
                 "/proc/taskdeck")


def test_json_output_is_strict(tmp_path, tasks):
    result = _cli("run", "--json", tasks, "half", "--x", "nan", data_dir=tmp_path / "data")
    assert result.returncode == 0, result.stderr

    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    payload = json.loads(result.stdout, parse_constant=refuse)
    assert payload["phase"] == "SUCCEEDED" and payload["outputs"] == {"o0": None}
