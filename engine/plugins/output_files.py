"""Files a task's outputs name, kept in the data directory as a cluster keeps them in blob storage.

With a local raw-data path the SDK does not copy a ``File.from_local`` / ``Dir.from_local`` output: the
literal keeps the task's own path (a temporary file, a file in the code directory), which vanishes or
changes later. When an attempt succeeds, each output path outside the data directory (in blobs,
DataFrames, collections, maps, unions, and File/Dir fields inside dataclasses and models) is copied
into ``<attempt>/_files/`` and the literal rewritten to the copy, before anyone reads the outputs.
A path that is already gone is an error that says why, not a dangling reference downstream.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from flyteidl2.core import literals_pb2
from flyteidl2.task import common_pb2

from engine.literals import rewrite_uris

MSGPACK = "msgpack"
FILES_DIR = "_files"


class OutputFileGone(Exception):
    def __init__(self, output: str, path: str, why: str = ""):
        super().__init__(why and f"output {output} names {path}, which cannot be read: {why}" or
                         f"output {output} names {path}, which no longer existed when the task ended (on a "
                         "cluster File.from_local uploads at once; here the file must outlive the task: write it "
                         "outside a TemporaryDirectory, or use File.new_remote())")


class _Keeper:
    def __init__(self, storage_root: str, attempt_dir: str):
        self.root = os.path.realpath(storage_root) if storage_root else ""
        self.attempt_dir = Path(attempt_dir)
        self.output = ""
        self.changed = False

    def keep(self, path: str) -> str:
        """The path the output should name: ``path`` itself when it is already stored, else a copy."""
        if not path or "://" in path and not path.startswith("file://"):
            return path  # a remote object: not ours to copy
        local = path[len("file://"):] if path.startswith("file://") else path
        if not os.path.isabs(local):
            return path
        real = os.path.realpath(local)
        if self.root and (real == self.root or real.startswith(self.root + os.sep)):
            return path
        if not os.path.exists(real):
            raise OutputFileGone(self.output, path)
        digest = hashlib.sha256(real.encode()).hexdigest()[:16]
        target = self.attempt_dir / FILES_DIR / digest / (os.path.basename(real.rstrip(os.sep)) or "data")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                if os.path.isdir(real):
                    shutil.copytree(real, target, symlinks=True)
                else:
                    shutil.copyfile(real, target)
            except OSError as exc:
                if str(getattr(exc, "filename", "") or "").startswith(str(target.parent)):
                    raise  # our side: a storage fault
                raise OutputFileGone(self.output, path, exc.strerror or str(exc)) from None
        self.changed = True
        return str(target)

    # ------------------------------------------------------------------ literals
    def literal(self, literal: literals_pb2.Literal) -> None:
        rewrite_uris(literal, self.keep, self.binary)

    def binary(self, binary: literals_pb2.Binary) -> None:
        if binary.tag != MSGPACK:
            return
        import msgpack

        try:
            value = msgpack.unpackb(binary.value, strict_map_key=False)
        except Exception:  # noqa: BLE001 - not ours to judge: the SDK decodes it
            return
        before = self.changed
        self.changed = False
        value = self.native(value)
        if self.changed:
            binary.value = msgpack.packb(value, use_bin_type=True)
        self.changed = self.changed or before

    def native(self, value):
        """File/Dir (``path``) and DataFrame (``uri``) values inside a dataclass or model, as msgpack maps."""
        if isinstance(value, dict):
            out = {k: self.native(v) for k, v in value.items()}
            for key in ("path", "uri"):
                if isinstance(out.get(key), str) and _looks_like_io(out):
                    out[key] = self.keep(out[key])
            return out
        if isinstance(value, list):
            return [self.native(v) for v in value]
        return value


def _looks_like_io(value: dict) -> bool:
    """A serialized flyte.io File/Dir (path, name, format, hash) or DataFrame (uri, format)."""
    keys = set(value)
    return ("path" in keys and keys <= {"path", "name", "format", "hash", "hash_method"}) or \
        ("uri" in keys and keys <= {"uri", "format", "hash"})


def store_output_files(outputs_file: Path, storage_root: str, outputs: common_pb2.Outputs | None = None) -> bool:
    """Copy what the outputs name from outside the data directory beside them, and rewrite outputs.pb
    (atomically) to name the copies; True when it changed. OutputFileGone when a named path is gone.
    ``outputs``: the file's contents, when the caller has parsed them already."""
    if outputs is None:
        outputs = common_pb2.Outputs()
        outputs.ParseFromString(outputs_file.read_bytes())
    keeper = _Keeper(storage_root, str(outputs_file.parent))
    for named in outputs.literals:
        keeper.output = named.name
        keeper.literal(named.value)
    if keeper.changed:
        tmp = outputs_file.with_suffix(".tmp")
        tmp.write_bytes(outputs.SerializeToString())
        os.replace(tmp, outputs_file)
    return keeper.changed
