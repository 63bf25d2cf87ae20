"""Task logs: where each attempt's log lives, and reading it back as lines with the time each was written.

The launcher (``engine/plugins/launcher.py``) writes every line the task prints as
``2026-12-01T18:46:24.641Z <text>``; the engine's own lines (``[taskdeck] ...``) are stamped the same way.
Reads are by byte offset and return whole lines only, so a follower asks again from ``next_offset``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path

from engine.client.models import LogChunk, LogLine
from engine.paths import log_path
from engine.plugins.launcher import STAMP_WIDTH


def parse_line(line: str) -> LogLine:
    """A log line's text and the time it was written (None for a line without a stamp)."""
    if len(line) > STAMP_WIDTH and line[STAMP_WIDTH - 1] == "Z" and line[STAMP_WIDTH] == " ":
        try:
            when = dt.datetime.fromisoformat(line[:STAMP_WIDTH]).timestamp()
        except ValueError:
            return LogLine(None, line)
        return LogLine(when, line[STAMP_WIDTH + 1:])
    return LogLine(None, line)


def read_chunk(path: Path, offset: int, max_bytes: int) -> LogChunk:
    """Whole lines from ``offset`` (``offset < 0``: from that far before the end, at a line start)."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return LogChunk(False, 0, 0, 0)
    start = max(size + offset, 0) if offset < 0 else min(offset, size)
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(max_bytes)
    if offset < 0 and start > 0:  # begin at the next line start, not mid-line
        first = data.find(b"\n") + 1
        data, start = data[first:], start + first
    end = data.rfind(b"\n") + 1
    lines = tuple(parse_line(line) for line in data[:end].decode(errors="replace").splitlines())
    return LogChunk(True, start, start + end, size, lines)


class LogService:
    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "logs"

    def path(self, run: str, action: str, attempt: int) -> Path:
        return log_path(self.root, run, action, attempt)

    async def read(self, run: str, action: str, attempt: int, offset: int, max_bytes: int) -> LogChunk:
        return await asyncio.to_thread(read_chunk, self.path(run, action, attempt), offset, max_bytes)
