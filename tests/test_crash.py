"""kill -9 of the engine at random moments (a few trials here; bench/kill9.py runs 20+)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

# Loaded by path: putting bench/ on sys.path would let bench/console.py shadow the console package.
_spec = importlib.util.spec_from_file_location("kill9", Path(__file__).parent.parent / "bench" / "kill9.py")
kill9 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kill9)

pytestmark = pytest.mark.sdk


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_kill_9_then_restart_keeps_every_invariant(tmp_path, seed):
    result = kill9.trial(tmp_path, random.Random(seed), kill9._flyte_task())
    assert result["recorded"] >= result["acknowledged"]
