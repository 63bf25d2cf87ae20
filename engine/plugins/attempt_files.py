"""An attempt's files before its task runs: its directories, its working tree, a clean output prefix, the
first line of its log, and the launch marker that records it.

The engine computes a layout (``task_setup.TaskProcessSetup.plan``); whoever starts the task lays it out:
the engine for a fresh process, the fork server for a forked one (off the engine's loop, and its CPU is
the fork server's). Standard library only: the fork servers load this file by path.
"""

from __future__ import annotations

import json
import os
import shutil

# Left by a previous try of the same attempt (a relaunch after a system failure): never read as this one's.
STALE_FILES = ("outputs.pb", "error.pb")


class LayoutError(Exception):
    """The layout could not be made; ``part`` says which: ``"dirs"`` (storage) or ``"code"`` (the tree)."""

    def __init__(self, part: str, path: str, error: OSError):
        super().__init__(f"{path}: {error.strerror or error}")
        self.part, self.path, self.error = part, path, error


def link_tree(source: str, destination: str) -> None:
    """``destination``: a tree of hard links to ``source``'s files (copies where links cannot be made): each
    attempt its own working directory, for the cost of a link per file, not an unpacking."""
    if os.path.isdir(destination) and os.listdir(destination):
        return  # this attempt's, from a try before
    for current, _dirs, files in os.walk(source):
        relative = os.path.relpath(current, source)
        target = os.path.normpath(os.path.join(destination, relative))
        os.makedirs(target, exist_ok=True)
        for file in files:
            try:
                os.link(os.path.join(current, file), os.path.join(target, file))
            except FileExistsError:
                pass
            except OSError:
                shutil.copy2(os.path.join(current, file), os.path.join(target, file))


def lay_out(layout: dict) -> None:
    """Make ``layout``: {"dirs": [...], "link": [source, destination] | None, "stale": [...],
    "log": path, "header": bytes-as-text}. Raises LayoutError."""
    for path in layout.get("dirs") or ():
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise LayoutError("dirs", path, exc) from exc
    link = layout.get("link")
    if link:
        try:
            link_tree(link[0], link[1])
        except OSError as exc:
            raise LayoutError("code", link[1], exc) from exc
    for path in layout.get("stale") or ():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LayoutError("dirs", path, exc) from exc
    header = layout.get("header")
    if header:
        try:
            fd = os.open(layout["log"], os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a task killed mid-line: start a new one
                    header = "\n" + header
                os.write(fd, header.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise LayoutError("dirs", layout["log"], exc) from exc


def write_marker(path: str, state: dict) -> None:
    """The launch record beside the attempt's outputs, replaced whole (never half-written)."""
    partial = f"{path}.tmp"
    with open(partial, "w") as f:
        f.write(json.dumps(state))
    os.replace(partial, path)
