"""The embedded default's resource backend: each object runs on this machine as its operator would run it.

A created object is kept (in memory, and as JSON under ``<work>/resources`` so a later engine finds it)
and handed to the local operator for its kind (``local_dask.py`` for DaskJob), which starts its
processes and writes its ``status`` as the real operator does. Delete tears the processes down. An object
a previous engine created and did not see to its end (the engine stopped or was killed) is torn down and
reported gone: the processes that made it up cannot be driven any more, so the attempt fails as a
resource deleted externally does (a system failure) and runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from engine.plugins.core import TaskExecutionContext
from engine.plugins.process import alive, kill_group
from engine.plugins.resources import (
    AlreadyExistsError,
    BusyError,
    InvalidError,
    NotFoundError,
    Resource,
    ResourceBackend,
    ResourcePlugin,
)

log = logging.getLogger(__name__)


def _key(resource: Resource) -> tuple[str, str, str]:
    md = resource.get("metadata") or {}
    return resource["kind"], md.get("namespace") or "default", md.get("name") or ""


class LocalOperator:
    """Runs one kind of object on this machine."""

    kind = ""
    plugin: ResourcePlugin  # the resource plugin of its kind

    async def run(self, resource: Resource, tctx: TaskExecutionContext, work_dir: Path,
                  save: Callable[[], None]) -> None:
        """Drive ``resource`` to a terminal ``status`` (``save`` persists it); tear down on cancel."""
        raise NotImplementedError

    def mark_failed(self, status: dict, message: str) -> None:
        """The status the operator writes when it cannot go on."""
        status.update(jobStatus="Failed", message=message)

    def is_terminal(self, status: dict) -> bool:
        """As the kind's resource plugin reads the status (one table, not two)."""
        return self.plugin.is_terminal({"status": status})


class LocalResourceBackend(ResourceBackend):
    def __init__(self, work_dir: Path, operators: list[LocalOperator], max_running: int = 1):
        self.work_dir = Path(work_dir) / "resources"
        self.operators = {op.kind: op for op in operators}
        self.max_running = max(1, max_running)  # clusters at once: each is several processes
        self._objects: dict[tuple[str, str, str], Resource] = {}
        self._runs: dict[tuple[str, str, str], asyncio.Task] = {}
        self._waiting: dict[tuple[str, str, str], Callable[[], None]] = {}  # in arrival order

    def _path(self, key: tuple[str, str, str]) -> Path:
        kind, namespace, name = key
        return self.work_dir / namespace / kind.lower() / f"{name}.json"

    def _save(self, key: tuple[str, str, str]) -> None:
        resource = self._objects.get(key)
        if resource is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(resource))
        tmp.replace(path)

    async def create(self, resource: Resource, tctx: TaskExecutionContext) -> Resource:
        key = _key(resource)
        operator = self.operators.get(resource["kind"])
        if operator is None:
            raise InvalidError(f"no local operator runs {resource['kind']} objects")
        if key in self._objects or self._path(key).exists():
            raise AlreadyExistsError(f"{resource['kind']} {key[2]} already exists")
        first = next(iter(self._waiting), key)
        if len(self._runs) >= self.max_running or first != key:  # full, or others wait longer
            self._waiting.setdefault(key, tctx.enqueue_owner)
            raise BusyError(f"waiting for a local cluster: {len(self._runs)} of {self.max_running} running, "
                            f"{len(self._waiting)} waiting")
        self._waiting.pop(key, None)
        resource = copy.deepcopy(resource)
        resource["metadata"]["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        resource["status"] = {}
        self._objects[key] = resource
        self._save(key)
        work = self._path(key).with_suffix("")
        task = asyncio.get_running_loop().create_task(
            self._drive(key, operator, resource, tctx, work), name=f"{resource['kind']}-{key[2]}")
        self._runs[key] = task
        return copy.deepcopy(resource)

    async def _drive(self, key, operator: LocalOperator, resource: Resource, tctx: TaskExecutionContext,
                     work: Path) -> None:
        try:
            await operator.run(resource, tctx, work, lambda: self._save(key))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the operator broke: the object says so
            log.exception("local %s operator failed for %s", resource["kind"], key[2])
            operator.mark_failed(resource.setdefault("status", {}), f"local operator failed: {exc}")
        finally:
            self._save(key)
            self._runs.pop(key, None)
            self._wake_next()
            tctx.enqueue_owner()

    def _wake_next(self) -> None:
        """A place is free: the longest waiter tries again."""
        if self._waiting and len(self._runs) < self.max_running:
            next(iter(self._waiting.values()))()

    async def get(self, identity: Resource) -> Resource:
        key = _key(identity)
        resource = self._objects.get(key)
        if resource is None:
            resource = self._load_orphan(key)
        return copy.deepcopy(resource)

    def _load_orphan(self, key) -> Resource:
        """An object a previous engine created: its processes cannot be driven any more."""
        try:
            resource = json.loads(self._path(key).read_text())
        except (OSError, ValueError):
            raise NotFoundError(f"{key[0]} {key[2]} not found") from None
        status = resource.setdefault("status", {})
        operator = self.operators.get(resource.get("kind", ""))
        if operator is not None and operator.is_terminal(status):
            self._objects[key] = resource  # it ended before the engine did: its outcome stands
            return resource
        for pid, ticks in status.get("processes", []):
            if alive(pid, ticks):
                kill_group(pid, 9)
        with contextlib.suppress(OSError):
            self._path(key).unlink()
        raise NotFoundError("its local processes were lost when the engine stopped")

    async def list(self, api_version: str, kind: str, namespace: str | None, labels: dict[str, str]) -> list[Resource]:
        """Objects of ``kind`` (in ``namespace``, or all) with ``labels``: the live ones and those on disk."""
        found: dict[tuple[str, str, str], Resource] = {k: v for k, v in self._objects.items() if k[0] == kind}
        for path in self.work_dir.glob(f"{namespace or '*'}/{kind.lower()}/*.json"):
            key = (kind, path.parent.parent.name, path.stem)
            if key not in found:
                with contextlib.suppress(OSError, ValueError):
                    found[key] = json.loads(path.read_text())
        return [copy.deepcopy(r) for k, r in found.items()
                if (namespace is None or k[1] == namespace) and isinstance(r, dict)
                and labels.items() <= ((r.get("metadata") or {}).get("labels") or {}).items()]

    async def delete(self, identity: Resource) -> None:
        key = _key(identity)
        if self._waiting.pop(key, None) is not None and key not in self._objects:
            self._wake_next()
            return  # it only waited for a place
        run = self._runs.pop(key, None)
        if run is not None:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        known = self._objects.pop(key, None)
        path = self._path(key)
        if known is None and not path.exists():
            raise NotFoundError(f"{key[0]} {key[2]} not found")
        if known is None:
            with contextlib.suppress(NotFoundError):
                self._load_orphan(key)  # tears down what a previous engine left
            self._objects.pop(key, None)
        with contextlib.suppress(OSError):
            path.unlink()

    async def close(self) -> None:
        """Clusters do not outlive the engine: each is torn down (its action runs again on the next)."""
        runs, self._runs = list(self._runs.values()), {}
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
