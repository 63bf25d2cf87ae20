"""kill -9 of the engine at random moments (a few trials here; bench/kill9.py runs 20+)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))

import kill9  # noqa: E402

pytestmark = pytest.mark.sdk


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_kill_9_then_restart_keeps_every_invariant(tmp_path, seed):
    result = kill9.trial(tmp_path, random.Random(seed), kill9._flyte_task())
    assert result["recorded"] >= result["acknowledged"]
