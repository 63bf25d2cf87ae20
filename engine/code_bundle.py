"""The code bundle ``taskdeck run`` ships, as ``flyte run`` does (its ``loaded_modules`` copy style): the
Python files under the task's directory that importing the task loaded, in a reproducible .tar.gz.

The SDK's own bundler takes ~0.2 s (git and ignore-file checks); this one takes milliseconds, which keeps
a leaf ``taskdeck run`` near ``flyte run --local``. The same files give the same bytes (sorted names, fixed
times, no owners), so the upload store keeps one copy and the engine unpacks it once.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import tarfile
from pathlib import Path

# What no bundle holds (taskdeck deploy's code-directory bundles too), and the most it may hold.
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".tox", "node_modules",
                          ".mypy_cache", ".pytest_cache", ".ruff_cache"})
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
# Every file's time, fixed so the same files give the same bytes: 1981-01-01, as the SDK's own bundler, not
# 0: the Spark plugin zips the unpacked code for its executors, and ZIP has no times before 1980.
BUNDLE_MTIME = 347155200


def loaded_files(root_dir: Path, task_file: Path) -> list[Path]:
    """The task's file and every loaded module's source under ``root_dir`` (not in virtualenvs or caches)."""
    root = root_dir.resolve()
    prefixes = tuple({str(root_dir) + os.sep, str(root) + os.sep})
    files = {task_file.resolve()}
    for module in list(sys.modules.values()):
        try:  # not getattr: that would load every lazily imported module (half a second of the SDK's)
            source = object.__getattribute__(module, "__dict__").get("__file__")
        except (AttributeError, TypeError):
            continue
        if not source or not source.endswith(".py") or not source.startswith(prefixes):
            continue  # by its name first: resolving every loaded module's path costs more than the rest
        path = Path(source).resolve()
        try:
            parts = path.relative_to(root).parts
        except ValueError:
            continue
        if not any(p in SKIPPED_DIRS or p.endswith(".egg-info") or p == "site-packages" for p in parts[:-1]):
            files.add(path)
    return sorted(files)


def directory_files(code_dir: Path) -> list[Path]:
    """Every regular file under ``code_dir`` (not symlinks, nor version-control, virtualenv and cache
    directories), in order: what a deployed task's bundle holds."""
    found = []
    for current, dirs, files in os.walk(code_dir):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(current) / name
            if not path.is_symlink() and path.is_file():
                found.append(path)
    return found


def pack(files: list[Path], root_dir: Path, destination: Path, purpose: str) -> str:
    """Write ``files`` (by their paths under ``root_dir``) to ``destination`` as a reproducible .tar.gz (sorted
    as given, fixed times (BUNDLE_MTIME), no owners, executable or not); its md5. ValueError, naming ``purpose``, past
    MAX_BUNDLE_BYTES."""
    total = 0
    with open(destination, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="") as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for path in files:
            stat = path.stat()
            total += stat.st_size
            if total > MAX_BUNDLE_BYTES:
                raise ValueError(f"{root_dir} holds more than {MAX_BUNDLE_BYTES >> 20} MiB of files: too much "
                                 f"{purpose}")
            info = tarfile.TarInfo(str(path.relative_to(root_dir)))
            info.size, info.mtime = stat.st_size, BUNDLE_MTIME
            info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
            with open(path, "rb") as source:
                archive.addfile(info, source)
    digest = hashlib.md5(usedforsecurity=False)
    with open(destination, "rb") as written:
        while chunk := written.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def make_bundle(files: list[Path], root_dir: Path, out_dir: Path) -> tuple[Path, str]:
    """(``out_dir/fast<md5>.tar.gz``, its md5): ``files`` by their paths under ``root_dir``."""
    root = root_dir.resolve()
    staging = Path(out_dir) / ".bundle.tar.gz"
    digest = pack([f.resolve() for f in files], root, staging, "to ship as a code bundle")
    out = Path(out_dir) / f"fast{digest}.tar.gz"
    staging.replace(out)
    return out, digest
