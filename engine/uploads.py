"""The upload store: files and directories a client hands the engine (a ``flyte.io.File`` or ``Dir`` input
given as a local path), kept under ``<data>/uploads/<project>/<domain>/<md5>/<name>`` as a cluster keeps
uploads in blob storage. Content-addressed, so the same file given twice is stored once and cache keys
follow the content; tasks read it by its plain absolute path (the SDK's ``File.open`` breaks on
``file://``). The same store serves the flyte CLI's upload route.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from engine.errors import InvalidRunError
from engine.names import check_run_id

CHUNK = 1 << 20


class UploadError(InvalidRunError):
    def __init__(self, message: str):
        super().__init__(message, field="path")


class UploadStore:
    def __init__(self, data_dir: Path, files=None):
        self.root = Path(data_dir) / "uploads"
        self.files = files if files is not None and files.remote else None  # an object store: uploads go there

    def stage(self, source: str, project: str, domain: str) -> str:
        """Copy ``source`` (a file or a directory on this machine) into the store; its stored path."""
        check_run_id(project, domain, "r")  # the project and domain, by the rules every door uses
        path = Path(source)
        if not path.is_absolute():
            raise UploadError(f"{source!r} is not an absolute path")
        if not path.exists():
            raise UploadError(f"no such file or directory: {source}")
        if not (path.is_file() or path.is_dir()):
            raise UploadError(f"{source} is neither a regular file nor a directory")
        digest = _digest(path)
        name = path.name or "data"
        if self.files is not None:
            return self._stage_remote(path, self.files.upload_uri(project, domain, digest, name))
        final = self.root / project / domain / digest
        if not (final / name).exists():
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
            try:
                if path.is_dir():
                    shutil.copytree(path, staging / name, symlinks=True)
                else:
                    shutil.copyfile(path, staging / name)
                final.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(staging, final)
                except OSError:  # stored meanwhile by another request: theirs is the same content
                    if not (final / name).exists():
                        raise
            except OSError as exc:
                raise UploadError(f"cannot store {source}: {exc.strerror or exc}") from None
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return str(final / name)

    def _stage_remote(self, path: Path, uri: str) -> str:
        """On the object store (``--raw-data``), where task pods read it; content-addressed there too. A
        directory's files are put before its marker, so a marker means a whole copy."""
        marker = f"{uri}.complete" if path.is_dir() else uri  # beside the directory, not in it
        try:
            if not self.files.exists(marker):
                if path.is_dir():
                    self.files.put_tree(str(path), uri)
                    self.files.write(marker, b"")
                else:
                    self.files.put_file(str(path), uri)
        except OSError as exc:
            raise UploadError(f"cannot store {path} in {self.files.describe()}: {exc.strerror or exc}") from None
        return uri


def _digest(path: Path) -> str:
    """md5 of a file's bytes, or of a directory's relative paths and file bytes in order."""
    digest = hashlib.md5(usedforsecurity=False)
    if path.is_file():
        _feed(digest, path)
        return digest.hexdigest()
    for current, dirs, files in os.walk(path):
        dirs.sort()
        for file in sorted(files):
            full = Path(current) / file
            digest.update(str(full.relative_to(path)).encode() + b"\0")
            if full.is_file() and not full.is_symlink():
                _feed(digest, full)
            elif full.is_symlink():
                digest.update(os.readlink(full).encode())
    return "d" + digest.hexdigest()


def _feed(digest, path: Path) -> None:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
