"""Starting an engine in the background, for commands that need one when none serves the data directory.

It is ``taskdeck --headless --idle-exit N`` in its own session, its output appended to
``<data>/engine.log``: it keeps serving while any run is active or any client follows it, so no client's
run loses its engine when another client finishes, and it stops by itself once idle.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from engine.client import engine_url, prepare_data_dir

DEFAULT_IDLE_SECONDS = 60.0
START_TIMEOUT_SECONDS = 60.0
LOG_FILE = "engine.log"


def idle_seconds() -> float:
    """How long an engine started in the background waits, idle, before it stops (TASKDECK_IDLE_EXIT)."""
    try:
        value = float(os.environ.get("TASKDECK_IDLE_EXIT", DEFAULT_IDLE_SECONDS))
    except ValueError:
        return DEFAULT_IDLE_SECONDS
    return value if 0 < value < 10 ** 6 else DEFAULT_IDLE_SECONDS


class BackgroundEngineError(RuntimeError):
    pass


def start_background_engine(data_dir: Path, engine_args: list[str], idle_exit: float | None = None) -> str:
    """Start an engine on ``data_dir`` and return its address once it serves (an engine another client
    started meanwhile serves just as well)."""
    prepare_data_dir(data_dir)  # a directory that cannot be one is a DataDirError here, not in the child
    log_path = data_dir / LOG_FILE
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "console.cli", "--data-dir", str(data_dir), *engine_args, "--headless",
             "--idle-exit", f"{idle_exit or idle_seconds():g}"],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True, close_fds=True,
            cwd=str(data_dir))
    finally:
        os.close(log_fd)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        url = engine_url(data_dir)
        if url is not None:
            return url
        if process.poll() is not None:  # it could not start; unless another engine beat it to the lock
            url = engine_url(data_dir)
            if url is not None:
                return url
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
            raise BackgroundEngineError(f"the engine could not start: {tail[0] if tail else 'no output'} "
                                        f"(see {log_path})")
        time.sleep(0.05)
    raise BackgroundEngineError(f"the engine did not start within {START_TIMEOUT_SECONDS:g} s (see {log_path})")
