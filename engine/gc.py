"""Garbage collection of terminated TaskActions (Flyte's executor GC).

Terminated TaskActions carry ``flyte.org/termination-status=terminated`` and ``flyte.org/completed-time``
(minute precision, lexicographically ordered). A sweep deletes those completed more than ``ttl`` ago; the
reconciler's finalize path then cleans up. The actions table and the events stay: they are the history.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from engine.model import COMPLETED_TIME_FORMAT, LABEL_COMPLETED_TIME, LABEL_TERMINATION_STATUS, TERMINATED, utcnow
from engine.store.base import NotFoundError, ResourceStore

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 3600.0
DEFAULT_INTERVAL_SECONDS = 1800.0


class GarbageCollector:
    def __init__(self, store: ResourceStore, ttl_seconds: float = DEFAULT_TTL_SECONDS,
                 interval_seconds: float = DEFAULT_INTERVAL_SECONDS, clock: Callable[[], dt.datetime] = utcnow,
                 resource_sweeps: list[Callable[[dt.datetime, float], Awaitable[int]]] = ()):
        self.store = store
        self.resource_sweeps = list(resource_sweeps)  # the resource plugins' terminal objects, by completion time
        self.ttl = ttl_seconds
        self.interval = interval_seconds
        self.clock = clock
        self._task: asyncio.Task | None = None
        self.deleted = 0

    async def sweep(self) -> int:
        """Delete every TaskAction terminated more than ``ttl`` ago; returns how many were deleted."""
        cutoff = (self.clock() - dt.timedelta(seconds=max(self.ttl, 0))).strftime(COMPLETED_TIME_FORMAT)
        selector = {LABEL_TERMINATION_STATUS: TERMINATED, LABEL_COMPLETED_TIME: None}
        deleted = 0
        for obj in await self.store.list(selector):
            completed = obj.metadata.labels[LABEL_COMPLETED_TIME]
            if self.ttl > 0 and completed >= cutoff:
                continue
            if obj.metadata.deletion_timestamp is not None:
                continue
            try:
                await self.store.delete(obj.name)
                deleted += 1
            except NotFoundError:
                pass  # a parent's cascade got there first
        self.deleted += deleted
        if deleted:
            log.info("garbage collection removed %d terminated TaskActions", deleted)
        for sweep in self.resource_sweeps:
            try:
                await sweep(self.clock(), max(self.ttl, 0))
            except Exception as exc:  # noqa: BLE001 - one backend's failure does not stop the others
                log.warning("garbage collection of resources failed: %s", exc)
        return deleted

    async def start(self) -> None:
        if self.interval <= 0:
            return
        self._task = asyncio.create_task(self._loop(), name="taskaction-gc")

    async def _loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # noqa: BLE001 - a failed sweep is retried at the next tick
                log.warning("garbage collection sweep failed: %s", exc)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
