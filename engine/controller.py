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

from engine.model import TaskAction
from engine.phases import ActionPhase, ConditionType, phase_from_conditions
from engine.store.base import ActionStatusUpdate, EngineStore, GoneError, StorageUnavailableError, WatchEvent

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

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        ready = time.monotonic() + delay
        existing = self._timers.get(key)
        if existing is not None:
            if existing[0] <= ready:
                return
            existing[1].cancel()
        handle = asyncio.get_running_loop().call_later(delay, self._fire, key)
        self._timers[key] = (ready, handle)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
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

    def __init__(self, store: EngineStore, reconcile: Callable[[str], Awaitable], workers: int = 64):
        self.store = store
        self.reconcile = reconcile
        self.workers = workers
        self.queue = WorkQueue()
        self._tasks: list[asyncio.Task] = []
        self._watch = None
        self.reconciles = 0
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

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            if key is None:
                return
            try:
                result = await self.reconcile(key)
            except asyncio.CancelledError:
                self.queue.done(key)
                raise
            except Exception as exc:  # noqa: BLE001 - one failing reconcile never stalls the others
                self.errors += 1
                delay = self.queue.add_rate_limited(key)
                level = logging.WARNING if isinstance(exc, StorageUnavailableError) else logging.ERROR
                log.log(level, "reconcile %s failed (retry in %.3fs): %s", key, delay, exc,
                        exc_info=level == logging.ERROR)
            else:
                self.queue.forget(key)
                if result is not None and result.requeue_after is not None:
                    self.queue.add_after(key, result.requeue_after)
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


def _action_key(obj: TaskAction) -> tuple[str, str, str, str]:
    spec = obj.spec
    return (spec.project, spec.domain, spec.run_name, spec.action_name)


class ActionsSync:
    """The actions informer: derives each action's table phase from its TaskAction's conditions.

    As Flyte's actions service: first sight of a child promotes its parent to RUNNING, a deleted
    non-terminal TaskAction is ABORTED, RetryableFailure (UNSPECIFIED) is skipped, and the table's
    monotonic guard decides what sticks.
    """

    def __init__(self, store: EngineStore):
        self.store = store
        self._last: dict[str, tuple[int, int, int]] = {}
        self._task: asyncio.Task | None = None
        self._watch = None
        self._pending: set[asyncio.Task] = set()

    async def start(self) -> None:
        since = self.store.resource_version
        self._watch = self.store.watch(since)
        # Re-derive every row once: the table may lag the resources after a crash (the guard keeps it idempotent).
        for obj in await self.store.list():
            self._handle(WatchEvent("MODIFIED", obj, obj.resource_version))
        self._task = asyncio.create_task(self._run(), name="actions-sync")

    @staticmethod
    def _observed(obj: TaskAction) -> tuple[int, int, int]:
        return (int(phase_from_conditions(obj.status.conditions)), obj.status.observed_attempts, obj.status.cache_status)

    async def _run(self) -> None:
        assert self._watch is not None
        try:
            async for event in self._watch:
                self._handle(event)
        except GoneError:
            log.error("actions sync fell behind the watch history")

    def _handle(self, event: WatchEvent) -> None:
        obj = event.object
        name = obj.name
        if event.type == "DELETED":
            self._last.pop(name, None)
            if obj.status.is_terminal:
                return
            update = self._update_for(obj, ActionPhase.ABORTED)
        else:
            observed = self._observed(obj)
            first_sight = name not in self._last
            if self._last.get(name) == observed:
                return
            self._last[name] = observed
            if first_sight and obj.spec.parent_action_name:
                parent_key = (obj.spec.project, obj.spec.domain, obj.spec.run_name, obj.spec.parent_action_name)
                self._submit(ActionStatusUpdate(parent_key, ActionPhase.RUNNING, 1))
            phase = ActionPhase(observed[0])
            if phase == ActionPhase.UNSPECIFIED:
                return
            update = self._update_for(obj, phase)
        self._submit(update)

    def _update_for(self, obj: TaskAction, phase: ActionPhase) -> ActionStatusUpdate:
        status = obj.status
        error = status.error_state if phase in (ActionPhase.FAILED, ActionPhase.TIMED_OUT) else None
        end_time = None
        for type_ in (ConditionType.SUCCEEDED, ConditionType.FAILED):
            cond = status.condition(type_)
            if cond is not None and cond.status == "True":
                end_time = cond.last_transition_time.timestamp()
        if phase == ActionPhase.ABORTED and obj.metadata.deletion_timestamp is not None:
            end_time = obj.metadata.deletion_timestamp.timestamp()
        created = obj.metadata.creation_timestamp
        return ActionStatusUpdate(
            key=_action_key(obj),
            phase=int(phase),
            attempts=status.observed_attempts,
            cache_status=status.cache_status,
            start_time=created.timestamp() if created else None,
            end_time=end_time,
            error_kind=error.kind if error else None,
            error_code=error.code if error else None,
            error_message=error.message if error else None,
        )

    def _submit(self, update: ActionStatusUpdate) -> None:
        task = asyncio.create_task(self._write(update))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, update: ActionStatusUpdate) -> None:
        for attempt in range(100):
            try:
                await self.store.update_action_status(update)
                return
            except StorageUnavailableError as exc:
                log.warning("actions table update for %s waits for storage: %s", "/".join(update.key), exc)
                await asyncio.sleep(min(0.1 * (attempt + 1), 5.0))

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.aclose()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        # Drain what the watch already delivered so the table matches the resources at shutdown.
        if self._watch is not None:
            while not self._watch.queue.empty():
                event = self._watch.queue.get_nowait()
                if event is not None:
                    self._handle(event)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

