"""Local paths behind the URIs a spec carries, and whether they stay inside a directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def input_file(input_uri: str) -> str:
    path = local_path(input_uri).rstrip("/")
    return path if path.endswith("/inputs.pb") or path == "inputs.pb" else f"{path}/inputs.pb"


def is_within(path: str, roots: list[str]) -> bool:
    """``path`` (absolute, normalised without syscalls) is one of ``roots`` or below one."""
    path = os.path.normpath(path)
    return os.path.isabs(path) and any(path == root or path.startswith(root.rstrip(os.sep) + os.sep)
                                       for root in roots)


def resolves_within(path: str, roots: list[str]) -> bool:
    """Like ``is_within`` after resolving symlinks on both sides: for paths a request names.

    A path already inside a root is checked for links below the root only (an lstat per part there, not
    per part of the whole path): with none it stays inside; with one, both sides are resolved in full.
    """
    if "\x00" in path or not os.path.isabs(path):
        return False
    normal = os.path.normpath(path)
    for root in roots:
        root = os.path.normpath(root)
        if is_within(normal, [root]) and not _links_below(root, normal[len(root):].split(os.sep)):
            return True
    return is_within(os.path.realpath(path), [os.path.realpath(root) for root in roots])


def _links_below(root: str, parts: list[str]) -> bool:
    """Whether any existing part of ``root/parts...`` is a symlink (the root itself not counted)."""
    current = root
    for part in parts:
        if not part:
            continue
        current = os.path.join(current, part)
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return True
        except FileNotFoundError:
            return False  # what does not exist yet is no link, nor is anything below it
        except OSError:
            return True  # unknown: resolve in full
    return False


def log_path(logs_root: str | Path, run: str, action: str, attempt: int) -> Path:
    """Where an attempt's log lives: ``<data>/logs/<run>/<action>/<attempt>.log``."""
    return Path(f"{logs_root}/{run}/{action}/{attempt}.log")
