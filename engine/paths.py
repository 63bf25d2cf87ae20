"""Local paths behind the URIs a spec carries, and whether they stay inside a directory."""

from __future__ import annotations

import os
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
    """Like ``is_within`` after resolving symlinks on both sides: for paths a request names."""
    if "\x00" in path or not os.path.isabs(path):
        return False
    return is_within(os.path.realpath(path), [os.path.realpath(root) for root in roots])


def log_path(logs_root: str | Path, run: str, action: str, attempt: int) -> Path:
    """Where an attempt's log lives: ``<data>/logs/<run>/<action>/<attempt>.log``."""
    return Path(f"{logs_root}/{run}/{action}/{attempt}.log")
