"""Controller manager: a store watch feeds a work queue that N reconcile workers drain.

The queue has client-go's semantics: a key is queued at most once, a key being processed is never handed
to a second worker (a change that arrives meanwhile re-queues it when the first finishes), delayed
requeues keep only the earliest deadline per key, and failures back off exponentially per key.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from engine.store.base import EngineStore, StorageUnavailableError

log = logging.getLogger(__name__)


class WorkQueue:
    def __init__(self, base_backoff: float = 0.005, max_backoff: float = 60.0):
        self._queue: collections.deque[str] = collections.deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._timers: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[str, int] = {}
        self._getters: collections.deque[asyncio.Future] = collections.deque()
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._shutdown = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: str) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return
        self._queue.append(key)
        self._wake_one()

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def add_after(self, key: str, delay: float, on_fire: Callable[[], None] | None = None) -> None:
        if delay <= 0:
            if on_fire is not None:
                on_fire()
            self.add(key)
            return
        ready = time.monotonic() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing[0] <= ready:
                return
            existing[1].cancel()
        handle = asyncio.get_running_loop().call_later(delay, self._fire, key, on_fire)
        self._timers[key] = (ready, handle)

    def _fire(self, key: str, on_fire: Callable[[], None] | None = None) -> None:
        self._timers.pop(key, None)
        if on_fire is not None:
            on_fire()
        self.add(key)

    def add_rate_limited(self, key: str) -> float:
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self._base_backoff * (2 ** failures), self._max_backoff)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    async def get(self) -> str | None:
        while not self._queue:
            if self._shutdown:
                return None
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            await getter
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake_one()

    def shutdown(self) -> None:
        self._shutdown = True
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)


class ControllerManager:
    """Runs ``reconcile(name)`` for every TaskAction change, with ``workers`` concurrent workers."""

    def __init__(self, store: EngineStore, reconcile: Callable[[str], Awaitable], workers: int = 64,
                 is_echo: Callable[[str], bool] | None = None):
        self.store = store
        self.reconcile = reconcile
        # A key queued only by the watch, whose object is as the reconciler last wrote it, is skipped.
        self.is_echo = is_echo or (lambda name: False)
        self._woken: set[str] = set()  # keys queued by something other than the watch since their last round
        self.workers = workers
        self.queue = WorkQueue()
        self._tasks: list[asyncio.Task] = []
        self._watch = None
        self.reconciles = 0
        self.echoes = 0  # watch events skipped as our own writes
        self.errors = 0

    async def start(self) -> None:
        objects = await self.store.list()
        since = self.store.resource_version
        self._watch = self.store.watch(since)
        for obj in objects:
            self.queue.add(obj.name)
        self._tasks.append(asyncio.create_task(self._pump(), name="controller-watch"))
        for i in range(self.workers):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}"))

    async def _pump(self) -> None:
        assert self._watch is not None
        async for event in self._watch:
            self.queue.add(event.object.name)

    def wake(self, key: str) -> None:
        """Queue ``key`` for a reason of its own (a process ended, a slot freed): never skipped as an echo."""
        self._woken.add(key)
        self.queue.add(key)

    def wake_after(self, key: str, delay: float) -> None:
        self.queue.add_after(key, delay, lambda: self._woken.add(key))

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            if key is None:
                return
            if key in self._woken:
                self._woken.discard(key)
            elif self.is_echo(key):
                self.echoes += 1
                self.queue.done(key)
                continue
            try:
                result = await self.reconcile(key)
            except asyncio.CancelledError:
                self.queue.done(key)
                raise
            except Exception as exc:  # noqa: BLE001 - one failing reconcile never stalls the others
                self.errors += 1
                self._woken.add(key)  # the retry must run even though nothing changed
                delay = self.queue.add_rate_limited(key)
                level = logging.WARNING if isinstance(exc, StorageUnavailableError) else logging.ERROR
                log.log(level, "reconcile %s failed (retry in %.3fs): %s", key, delay, exc,
                        exc_info=level == logging.ERROR)
            else:
                self.queue.forget(key)
                if result is not None and result.requeue_after is not None:
                    self.wake_after(key, result.requeue_after)
            finally:
                self.reconciles += 1
                self.queue.done(key)

    async def stop(self) -> None:
        """Stop taking work; reconciles in flight finish (their writes are awaited)."""
        self.queue.shutdown()
        if self._watch is not None:
            await self._watch.aclose()
        pump, workers = self._tasks[:1], self._tasks[1:]
        for task in pump:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await asyncio.gather(*pump, return_exceptions=True)
        self._tasks.clear()
