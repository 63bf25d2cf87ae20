"""The engine's side of reusable workers (``reusable_worker.py``): worker processes and the pools they form.

A pool is one reusable environment, keyed as the SDK keys it (its ``custom`` name and version, which hash
the image, container, replicas, TTLs and code version) plus what makes processes differ here: the
interpreter, the shared environment, the code directory, project/domain, and the run when the policy's
scope is ``run``. A pool keeps between ``min`` and ``max`` workers, each running up to ``concurrency``
actions at once:

* ``acquire`` claims a place on the least loaded ready worker, synchronously (no await between the check
  and the count); with none free it queues the action in arrival order and starts a worker if the pool
  is below ``max``. A freed place goes to the first waiter (claimed in its name, then it is woken).
* A worker idle for ``scaledown_ttl`` is stopped while the pool has more than ``min``; a pool idle for
  ``idle_ttl`` stops all of its workers (``tick``, driven by the plugin's janitor).
* A worker that dies fails the actions it ran (their futures resolve with None) and is replaced when
  actions wait for it or the pool is below ``min``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.plugins.pipe_protocol import HelperStartError, encode, read_messages, ready_message
from engine.plugins.process import kill_group, launch_helper, process_cpu_seconds, process_start_ticks

log = logging.getLogger(__name__)

WORKER_SCRIPT = str(Path(__file__).with_name("reusable_worker.py"))
START_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 5.0
HANDOFF_SECONDS = 30.0
RESTART_BACKOFF_SECONDS = 5.0  # times the failed starts in a row


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    """A ReusePolicy, as the task template carries it (``reuse_policy`` and the ``custom`` actor spec)."""

    name: str
    version: str
    min_replicas: int
    max_replicas: int
    concurrency: int
    idle_ttl: float
    scaledown_ttl: float
    scope: str  # "global" or "run"


def pool_key(spec: PoolSpec, interpreter: str, env: dict[str, str], cwd: str, project: str, domain: str,
             run: str) -> str:
    digest = hashlib.sha256("\0".join([spec.name, spec.version, str(spec.min_replicas), str(spec.max_replicas),
                                       str(spec.concurrency), interpreter, cwd, project, domain,
                                       run if spec.scope == "run" else ""]).encode())
    for key in sorted(env):
        digest.update(f"\0{key}={env[key]}".encode())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class ActionRun:
    """One action sent to a worker, until the worker says it ended (``done``: its report, or None: lost)."""

    ident: int
    name: str
    run: tuple[str, str, str]
    done: asyncio.Future
    started: bool = False


class WorkerProcess:
    """One reusable worker: its requests, replies and the actions it is running."""

    def __init__(self, pool: WorkerPool, worker_id: str):
        self.pool = pool
        self.id = worker_id
        self.process: asyncio.subprocess.Process | None = None
        self.start_ticks: int | None = None
        self.state = "starting"  # starting, ready, stopping, gone
        self.claims = 0  # actions running on it or handed to it and not yet sent
        self.actions: dict[int, ActionRun] = {}
        self.served = 0
        self.started_at = time.time()
        self.idle_since = time.monotonic()
        self.exit_code: int | None = None
        self.info: dict = {}
        self.recycled = False
        self.launch_fd: int | None = None  # its launch journal (journal.py), appended before each run
        self._next_id = 0
        self._reader: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    async def start(self, interpreter: str, env: dict[str, str], cwd: str, log_path: Path) -> None:
        self.process = await launch_helper(interpreter, WORKER_SCRIPT, env=env, cwd=cwd, log_path=log_path)
        self.start_ticks = process_start_ticks(self.process.pid)
        try:
            ready = await ready_message(self.process, START_TIMEOUT_SECONDS, "the worker", log_path)
        except HelperStartError as exc:
            await self.stop()
            raise OSError(str(exc)) from exc
        self.info = ready
        self.state = "ready"
        self.idle_since = time.monotonic()
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"worker-{self.id}")

    def _send(self, message: dict) -> None:
        if self.state not in ("ready", "stopping") or self.process is None or self.process.stdin is None:
            raise OSError(f"worker {self.id} is not running")
        self.process.stdin.write(encode(message))

    def run(self, name: str, run: tuple[str, str, str], request: dict) -> ActionRun:
        """Send one action (its place was claimed). Raises OSError when the worker is gone."""
        ident = self._next_id = self._next_id + 1
        action = ActionRun(ident, name, run, asyncio.get_running_loop().create_future())
        self.actions[ident] = action
        try:
            self._send({**request, "op": "run", "id": ident})
        except OSError:
            del self.actions[ident]
            raise
        return action

    def cancel(self, action: ActionRun) -> None:
        with contextlib.suppress(OSError):
            self._send({"op": "cancel", "id": action.ident})

    def runs(self) -> set[tuple[str, str, str]]:
        return {a.run for a in self.actions.values()}

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            async for message in read_messages(self.process.stdout, f"worker {self.id}", log):
                action = self.actions.get(message.get("id"))
                op = message.get("op")
                if op == "started" and action is not None:
                    action.started = True
                elif op == "done" and action is not None:
                    del self.actions[action.ident]
                    self.served += 1
                    if not action.done.done():
                        action.done.set_result(message)
                elif op == "recycle":
                    self.recycled = True
                    log.info("worker %s recycles itself: %s", self.id, message.get("reason"))
                elif op == "error":
                    log.warning("worker %s: %s", self.id, message.get("message"))
        finally:
            self.exit_code = await self.process.wait()
            self.state = "gone"
            for action in self.actions.values():
                if not action.done.done():
                    action.done.set_result(None)
            self.actions.clear()
            if self.launch_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self.launch_fd)
                self.launch_fd = None
            self.pool.worker_gone(self)

    async def stop(self) -> None:
        """Close its requests: it finishes what runs, then exits (killed after a grace period when idle)."""
        if self.state == "gone" or self.process is None:
            self.state = "gone"
            return
        self.state = "stopping"
        if self.process.stdin is not None:
            with contextlib.suppress(Exception):
                self.process.stdin.close()
        if not self.actions:
            try:
                await asyncio.wait_for(self.process.wait(), STOP_GRACE_SECONDS)
            except asyncio.TimeoutError:
                kill_group(self.process.pid, 9)
                await self.process.wait()
        if self._reader is not None and not self.actions:
            await asyncio.gather(self._reader, return_exceptions=True)

    def kill(self) -> None:
        if self.process is not None and self.state != "gone":
            kill_group(self.process.pid, 9)

    def snapshot(self) -> dict:
        return {"worker": self.id, "pid": self.pid, "state": self.state, "running": len(self.actions),
                "claims": self.claims, "served": self.served,
                "cpuSeconds": round(process_cpu_seconds(self.pid) or 0.0, 3) if self.state != "gone" else None,
                "startedAt": self.started_at, "startSeconds": self.info.get("startSeconds"),
                "idleSeconds": round(time.monotonic() - self.idle_since, 1) if not self.claims else 0.0}


Starter = Callable[["WorkerPool", WorkerProcess], Awaitable[None]]


class WorkerPool:
    def __init__(self, key: str, spec: PoolSpec, starter: Starter, *, label: str = ""):
        self.key = key
        self.spec = spec
        self.label = label or spec.name
        self._starter = starter
        self.workers: list[WorkerProcess] = []
        self._waiting: collections.OrderedDict[str, Callable[[], None]] = collections.OrderedDict()
        self._handed: dict[str, tuple[WorkerProcess, float, Callable[[], None]]] = {}
        self._starting: set[asyncio.Task] = set()
        self.last_active = time.monotonic()
        self.started = 0
        self.failed_starts = 0
        self.failed_at = 0.0
        self.last_error = ""
        self.closing = False
        self.retired = False  # idle for idle_ttl: its workers were stopped and are not replaced

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def unavailable(self) -> str:
        """Why actions cannot run here now (the last start failed and no worker lives), or ''."""
        return self.last_error if self.failed_starts and not self.live() else ""

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.state in ("starting", "ready")]

    def acquire(self, name: str, wake: Callable[[], None], now: float | None = None) -> WorkerProcess | None:
        """A worker with a place claimed for ``name``, or None: it waits, ``wake`` is called when one is."""
        now = time.monotonic() if now is None else now
        self.last_active = now
        self.retired = False
        handed = self._handed.pop(name, None)
        if handed is not None:
            if handed[0].ready:
                return handed[0]
            handed[0].claims = max(0, handed[0].claims - 1)  # it died since: queue again, first
            self._waiting[name] = wake
            self._waiting.move_to_end(name, last=False)
        ready = [w for w in self.workers if w.ready and w.claims < self.spec.concurrency]
        first = next(iter(self._waiting), name)
        if ready and first == name:  # a newcomer never passes a waiter
            worker = min(ready, key=lambda w: w.claims)
            self._waiting.pop(name, None)
            worker.claims += 1
            return worker
        self._waiting.setdefault(name, wake)
        self._scale_up()
        return None

    def release(self, worker: WorkerProcess, now: float | None = None) -> None:
        """One action on ``worker`` ended (or was never sent): its place goes to the first waiter."""
        worker.claims = max(0, worker.claims - 1)
        now = time.monotonic() if now is None else now
        self.last_active = now
        if not worker.claims:
            worker.idle_since = now
        self._hand_out(now)

    def forget(self, name: str) -> None:
        """``name`` stopped waiting (aborted): a place handed to it goes on."""
        self._waiting.pop(name, None)
        handed = self._handed.pop(name, None)
        if handed is not None:
            self.release(handed[0])

    def _hand_out(self, now: float) -> None:
        for name, (worker, deadline, _) in list(self._handed.items()):
            if now > deadline:  # handed to a waiter that never came for it
                del self._handed[name]
                worker.claims = max(0, worker.claims - 1)
        while self._waiting:
            ready = [w for w in self.workers if w.ready and w.claims < self.spec.concurrency]
            if not ready:
                return
            worker = min(ready, key=lambda w: w.claims)
            name, wake = self._waiting.popitem(last=False)
            worker.claims += 1
            self._handed[name] = (worker, now + HANDOFF_SECONDS, wake)
            wake()

    def _scale_up(self) -> None:
        """Start workers for the waiters (one per ``concurrency`` of them) up to ``max``; keep ``min``."""
        if self.closing:
            return
        live = self.live()
        free = sum(self.spec.concurrency - w.claims for w in live)
        want = max(self.spec.min_replicas - len(live), 0)
        if self._waiting and free < len(self._waiting):
            want = max(want, -(-(len(self._waiting) - free) // self.spec.concurrency))
        want = min(want, self.spec.max_replicas - len(live))
        if self.failed_starts and time.monotonic() - self.failed_at < RESTART_BACKOFF_SECONDS * self.failed_starts:
            want = 0  # a worker that cannot start is not started in a loop
        for _ in range(max(want, 0)):
            worker = WorkerProcess(self, "w" + secrets.token_hex(4))
            self.workers.append(worker)
            task = asyncio.get_running_loop().create_task(self._start(worker))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, worker: WorkerProcess) -> None:
        try:
            await self._starter(self, worker)
        except Exception as exc:  # noqa: BLE001 - the actions wait; a later acquire tries again
            self.failed_starts += 1
            self.failed_at = time.monotonic()
            self.last_error = str(exc)
            log.warning("reusable worker for %s did not start: %s", self.label, exc)
            worker.state = "gone"
            if worker in self.workers:
                self.workers.remove(worker)
            for wake in list(self._waiting.values()):
                wake()  # each re-checks, and the pool decides whether to try again
            return
        self.failed_starts = 0
        self.last_error = ""
        self.started += 1
        self._hand_out(time.monotonic())

    def worker_gone(self, worker: WorkerProcess) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        for name, (handed, _, wake) in list(self._handed.items()):
            if handed is worker:
                del self._handed[name]
                self._waiting[name] = wake
        if worker.exit_code not in (0, None) or worker.recycled:
            log.info("reusable worker %s (pid %s) of %s ended with exit %s", worker.id, worker.pid, self.label,
                     worker.exit_code)
        if self.closing or self.retired:
            return
        if self._waiting or (self.workers and len(self.live()) < self.spec.min_replicas):
            with contextlib.suppress(RuntimeError):  # no running loop: the engine is stopping
                self._scale_up()

    def tick(self, now: float | None = None) -> list[WorkerProcess]:
        """The workers to stop now: all after ``idle_ttl`` of no work, idle ones beyond ``min`` after
        ``scaledown_ttl``."""
        now = time.monotonic() if now is None else now
        busy = any(w.claims for w in self.workers) or self._waiting or self._handed
        if not busy and now - self.last_active >= self.spec.idle_ttl:
            self.retired = True
            return [w for w in self.workers if w.state == "ready"]
        idle = sorted((w for w in self.workers if w.ready and not w.claims
                       and now - w.idle_since >= self.spec.scaledown_ttl), key=lambda w: w.idle_since)
        surplus = len(self.live()) - self.spec.min_replicas
        return idle[:max(surplus, 0)]

    def runs_of(self, worker_id: str) -> set[tuple[str, str, str]]:
        for worker in self.workers:
            if worker.id == worker_id:
                return worker.runs()
        return set()

    def snapshot(self) -> dict:
        return {"pool": self.key, "environment": self.spec.name, "version": self.spec.version,
                "minReplicas": self.spec.min_replicas, "maxReplicas": self.spec.max_replicas,
                "concurrency": self.spec.concurrency, "idleTtlSeconds": self.spec.idle_ttl,
                "scaledownTtlSeconds": self.spec.scaledown_ttl, "scope": self.spec.scope,
                "waiting": len(self._waiting), "lastError": self.last_error,
                "workers": [w.snapshot() for w in self.workers]}

    async def close(self) -> None:
        self.closing = True
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        await asyncio.gather(*(w.stop() for w in list(self.workers)), return_exceptions=True)
