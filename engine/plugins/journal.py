"""Launch and end records of reusable workers: one append-only file pair per worker, not files per action.

``<pool>-<worker>.launches``: the engine appends one JSON line per action before it tells the worker to run
it (the launch record that survives a lost status write). ``<pool>-<worker>.ends``: the worker appends one
line per action that ended (what an engine that was not there to hear the reply reads). Each is one
``write`` on a descriptor kept open: creating two files per action cost more engine time than the rest of
a launch. Records are keyed by the attempt's output prefix, unique per attempt; the latest launch wins.
A torn last line (a kill -9 mid-write) is skipped: that launch was never sent, so running it is right.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

KEPT_SECONDS = 86400.0  # journals of workers gone this long are deleted at start-up


def _lines(path: Path) -> list[dict]:
    try:
        data = path.read_bytes()
    except OSError:
        return []
    out = []
    for line in data.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


class WorkerJournals:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._previous: dict[str, dict] | None = None  # launches recorded by earlier engines, by output prefix
        self._ends: dict[Path, tuple[int, dict[str, dict]]] = {}  # ends file → (size read, by output prefix)

    def paths(self, pool: str, worker: str) -> tuple[Path, Path]:
        stem = self.directory / f"{pool}-{worker}"
        return stem.with_suffix(".launches"), stem.with_suffix(".ends")

    def open_launches(self, pool: str, worker: str) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.open(self.paths(pool, worker)[0], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @staticmethod
    def append(fd: int, record: dict) -> None:
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        while data:
            data = data[os.write(fd, data):]

    def previous_launch(self, outputs: str) -> dict | None:
        """The launch an earlier engine recorded for this attempt (None: it was never sent)."""
        if self._previous is None:
            self._previous = {}
            self._load()
        record = self._previous.get(outputs)
        return None if record is None or record.get("forgotten") else record

    def forget(self, outputs: str) -> None:
        if self._previous is not None:
            self._previous.pop(outputs, None)

    def _load(self) -> None:
        now = time.time()
        for path in sorted(self.directory.glob("*.launches"), key=lambda p: p.stat().st_mtime):
            records = _lines(path)
            if records and now - path.stat().st_mtime > KEPT_SECONDS:
                with contextlib.suppress(OSError):
                    path.unlink()
                    path.with_suffix(".ends").unlink()
                continue
            for record in records:
                outputs = record.get("outputs")
                if isinstance(outputs, str):
                    self._previous[outputs] = record

    def ended(self, pool: str, worker: str, outputs: str) -> dict | None:
        """The worker's end record for this attempt, if it wrote one (read incrementally)."""
        path = self.paths(pool, worker)[1]
        try:
            size = path.stat().st_size
        except OSError:
            return None
        read, by_outputs = self._ends.get(path, (0, {}))
        if size != read:
            by_outputs = {r["outputs"]: r for r in _lines(path) if isinstance(r.get("outputs"), str)}
            self._ends[path] = (size, by_outputs)
            while len(self._ends) > 256:
                self._ends.pop(next(iter(self._ends)))
        return by_outputs.get(outputs)
