"""The command line starts light: a `taskdeck run` against a running engine pays for the client, flyte and
the user's module, not for what other commands or the embedded engine need (each is tens of ms)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
# what only other commands, the console or an embedded engine import
HEAVY = ["engine.model", "engine.engine", "engine.store", "yaml", "textual", "aiosqlite",
         "kubernetes", "protovalidate"]


def test_the_command_line_module_imports_nothing_heavy():
    probe = ("import json, sys, console.cli; "
             f"print(json.dumps([h for h in {HEAVY!r} if any(m == h or m.startswith(h + '.') for m in sys.modules)]))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
