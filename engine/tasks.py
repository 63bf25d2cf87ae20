"""Registered tasks (Flyte's TaskService): a task is deployed by project, domain, name and version with its
code bundle, and runs start from it by name (the latest version, or the one asked for).

Deploying the same spec under a version again is a no-op; a different spec under a version that exists is
refused (a version names one spec). A code bundle (a .tar.gz of the task's code directory, stored in the
upload store) is extracted once, under ``<data>/bundles/<md5>/``, and every run of the task works there:
it does not depend on the caller's working tree.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tarfile
import time
from pathlib import Path

from flyteidl2.task import task_definition_pb2

from engine.code_bundle import directory_files, pack
from engine.errors import InvalidRunError
from engine.names import check_run_id
from engine.plugins.task_setup import unpack_once
from engine.store.base import TaskRecord


class TaskNotFoundError(LookupError):
    pass


class TasksService:
    def __init__(self, repository, data_dir: Path, projects=None, clock=time.time, files=None):
        self.repository = repository
        self.files = files if files is not None and files.remote else None  # --raw-data: bundles stored there
        self.bundles = Path(data_dir) / "bundles"
        self.uploads = Path(data_dir) / "uploads"
        self.projects = projects
        self.clock = clock

    async def deploy(self, spec_bytes: bytes, *, project: str, domain: str, bundle: str = "") -> tuple[TaskRecord, bool]:
        """(the registered task, whether this call registered it)."""
        check_run_id(project, domain, "r")
        if self.projects is not None:
            await self.projects.check(project, domain)
        spec = task_definition_pb2.TaskSpec()
        try:
            spec.ParseFromString(spec_bytes)
        except Exception:  # noqa: BLE001 - a client's bytes
            raise InvalidRunError("taskSpec is not a serialized flyteidl2.task.TaskSpec", field="taskSpec") from None
        task_id = spec.task_template.id
        if not task_id.name or not task_id.version:
            raise InvalidRunError("a deployed task needs a name and a version in its template id", field="taskSpec")
        if bundle and not await asyncio.to_thread(self._in_uploads, bundle):  # an object store's is a request
            raise InvalidRunError("bundle must be a file the engine stored (taskdeck's upload store)", field="bundle")
        digest = hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()
        record = TaskRecord(project, domain, task_id.name, task_id.version, digest,
                            spec.SerializeToString(deterministic=True), bundle, self.clock())
        stored = await self.repository.task_register(record)
        if stored.digest != digest:
            raise InvalidRunError(f"task {task_id.name} version {task_id.version} is registered with another spec: "
                                  "deploy a new version", field="taskSpec")
        return stored, stored.created_at == record.created_at

    async def get(self, project: str, domain: str, name: str, version: str | None = None) -> TaskRecord:
        check_run_id(project, domain, "r")
        record = await self.repository.task_get(project, domain, name, version)
        if record is None:
            which = f"version {version!r} of " if version else ""
            raise TaskNotFoundError(f"no {which}task {name!r} is deployed in {project}/{domain} (`taskdeck deploy "
                                    "FILE` registers a file's tasks)")
        return record

    async def list(self, project: str | None = None, domain: str | None = None) -> list[TaskRecord]:
        return await self.repository.task_list(project, domain)

    def code_dir(self, record: TaskRecord) -> str | None:
        """Where runs of the task work: its bundle, extracted once (None: it was deployed without one)."""
        if not record.bundle or "://" in record.bundle:
            return None  # none, or on the object store (--raw-data): the task's pod fetches it (--tgz), as on a cluster
        bundle = Path(record.bundle)
        if not bundle.is_file():
            raise InvalidRunError(f"the code bundle of {record.name} {record.version} is missing ({bundle}): deploy "
                                  "it again", field="bundle")
        try:
            return unpack_once(str(bundle), str(self.bundles / bundle.parent.name))
        except (OSError, tarfile.TarError) as exc:
            raise InvalidRunError(f"the code bundle {bundle} cannot be extracted: {exc}", field="bundle") from None

    def _in_uploads(self, path: str) -> bool:
        if self.files is not None and "://" in path:  # the object store's copy (engine/uploads.py)
            return self.files.contains(path, self.files.uploads_root) and self.files.exists(path)
        real = os.path.realpath(path)
        return real.startswith(os.path.realpath(self.uploads) + os.sep) and os.path.isfile(real)




def make_bundle(code_dir: Path, destination: Path) -> Path:
    """A .tar.gz of the code directory, as a cluster's fast registration ships it (without version-control,
    virtualenv and cache directories); ValueError when it would be larger than MAX_BUNDLE_BYTES."""
    pack(directory_files(code_dir), code_dir, destination, "to deploy as a code bundle")
    return destination
