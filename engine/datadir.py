"""The data directory: where it is, making it private, its lock, and how clients find its engine.

One engine serves a data directory at a time (an exclusive flock the kernel releases if the engine
dies); the engine's address is in ``engine.json`` while it serves. Clients read both without importing
the engine itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path

from engine.errors import DataDirError

log = logging.getLogger(__name__)

LOCK_FILE = "engine.lock"
PORT_FILE = "engine.port"  # kept across restarts: running tasks hold this port in _U_EP_OVERRIDE
ENDPOINT_FILE = "engine.json"
FLYTE_PORT_FILE = "flyte.port"  # the TLS listener's port, kept across restarts: the flyte CLI's config names it
DB_FILE = "taskdeck.db"
SHARED_FILES = frozenset({"token", ENDPOINT_FILE, LOCK_FILE})  # readable by a --share-group group


def default_data_dir() -> Path:
    if os.environ.get("TASKDECK_DATA_DIR"):
        return Path(os.environ["TASKDECK_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "taskdeck"


class EngineAlreadyRunningError(RuntimeError):
    pass


def prepare_data_dir(path: Path, shared: bool = False) -> None:
    """Create the data directory private to its owner, or tighten an existing one, saying so."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise DataDirError(f"{path} exists and is not a directory") from None
    except OSError as exc:
        raise DataDirError(f"cannot create the data directory {path}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise DataDirError(f"{path} exists and is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(f"the data directory {path} is not writable")
    wanted = 0o710 if shared else 0o700
    mode = path.stat().st_mode & 0o777
    if mode & ~wanted:
        os.chmod(path, wanted)
        log.warning("tightened the data directory %s from %o to %o: its runs, logs and credentials are private",
                    path, mode, wanted)
    for entry in path.iterdir():  # what sits at the top: the database, its WAL, the engine's files
        with contextlib.suppress(OSError):
            if entry.is_file() and entry.stat().st_mode & 0o077 and not (shared and entry.name in SHARED_FILES):
                os.chmod(entry, 0o600)


class DataDirLock:
    """One engine per data directory: an exclusive flock, released by the kernel if the engine dies."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = read_endpoint(self.path.parent)
            pid = f" (pid {owner['pid']})" if owner else ""
            raise EngineAlreadyRunningError(
                f"another TaskDeck engine{pid} is already serving {self.path.parent}; "
                "stop it or use another --data-dir"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def read_endpoint(data_dir: Path) -> dict | None:
    """The live engine serving ``data_dir`` ({pid, url}), or None when none holds the lock."""
    lock_path = data_dir / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: an engine is live
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)
    try:
        return json.loads((data_dir / ENDPOINT_FILE).read_text())
    except (OSError, ValueError):
        return None
