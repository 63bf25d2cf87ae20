"""Reusable tasks (the SDK's ReusePolicy, task type ``actor``): actions run in pools of long-lived workers.

A task of a ``TaskEnvironment(reusable=flyte.ReusePolicy(...))`` carries ``reuse_policy`` and a ``custom``
actor spec (name, version, replica counts, concurrency, TTLs). Its actions go to a pool of workers
(``workers.py``, ``reusable_worker.py``) keyed as the SDK keys the environment; each action still gets
its own output prefix, log and error.pb, and a worker that crashes fails only the actions it ran.

What is not a reusable SDK task here runs as a fresh process through the container plugin: a template
without an actor spec, an entrypoint that is not the SDK's ``a0``, a task whose env sets
``TASKDECK_REUSE=off``, or an engine started with reuse off.

No action runs unrecorded: its launch (worker id, pid and start time) is appended to the worker's launch
journal (``journal.py``) before the worker is told, and the worker appends to its end journal when the
action ended. So an engine that restarts after a kill -9 adopts a live worker's action (polling until its
end is recorded or the worker dies) and relaunches an action only when no worker is left that could
finish it: never twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from engine.plugins.core import (
    PhaseInfo,
    Plugin,
    PluginError,
    StorageFaultError,
    TaskExecutionContext,
    TaskInfo,
    Transition,
)
from engine.plugins.journal import WorkerJournals
from engine.plugins.outcome import read_outcome
from engine.plugins.process import alive, gone, stop
from engine.plugins.task_setup import TaskProcessSetup
from engine.plugins.workers import ActionRun, PoolSpec, WorkerPool, WorkerProcess, pool_key
from engine.plugins.zygotes import sdk_entrypoint_interpreter
from engine.plugins.task_target import primary_container

log = logging.getLogger(__name__)

STATE_VERSION = 1
REUSE_OPTION = "TASKDECK_REUSE"  # "off" in a task's env: a fresh process per action
ABORT_GRACE_SECONDS = 3.0
ADOPTED_POLL_SECONDS = 0.5
JANITOR_SECONDS = 1.0
MAX_POOLS = 64


def pool_spec(tctx: TaskExecutionContext) -> PoolSpec | None:
    """The template's ReusePolicy, or None when it has none. Raises PluginError when it is malformed."""
    template = tctx.task_template
    if not template.HasField("custom"):
        return None
    custom = dict(template.custom)
    if custom.get("type") != "actor":
        return None
    spec = custom.get("spec")
    policy = template.reuse_policy if template.HasField("reuse_policy") else None
    try:
        spec = dict(spec or {})
        max_replicas = int(spec.get("replica_count") or (policy.max_replicas if policy else 0) or 1)
        min_replicas = int(spec.get("min_replica_count") if spec.get("min_replica_count") is not None
                           else (policy.min_replicas if policy else max_replicas))
        concurrency = int(spec.get("parallelism") or (policy.concurrency if policy else 0) or 1)
        idle = float(spec.get("ttl_seconds") or (policy.idle_ttl.ToTimedelta().total_seconds() if policy else 0)
                     or 30)
        scaledown = float(spec.get("scaledown_ttl_seconds") or 30)
    except (TypeError, ValueError) as exc:
        raise PluginError(f"the task's reuse policy is malformed: {exc}", code="BadTaskSpecification") from None
    if not (1 <= max_replicas <= 256 and 0 <= min_replicas <= max_replicas and 1 <= concurrency <= 1024):
        raise PluginError(f"reuse policy out of range: replicas ({min_replicas}, {max_replicas}), concurrency "
                          f"{concurrency}", code="BadTaskSpecification")
    scope = "run" if policy is not None and policy.scope == policy.RUN else "global"
    return PoolSpec(name=str(custom.get("name") or template.id.name), version=str(custom.get("version") or ""),
                    min_replicas=min_replicas, max_replicas=max_replicas, concurrency=concurrency,
                    idle_ttl=max(idle, 1.0), scaledown_ttl=max(scaledown, 1.0), scope=scope)


class _Launched:
    def __init__(self, pool: WorkerPool, worker: WorkerProcess, action: ActionRun):
        self.pool = pool
        self.worker = worker
        self.action = action


class ReusableTaskPlugin(Plugin):
    id = "reusable"
    mounts_secret_values = True  # through its fallback: an action with secret files runs as its own process
    task_types = ("actor",)

    def __init__(self, fallback: Plugin, work_dir: Path, *, setup: TaskProcessSetup | None = None,
                 enabled: bool = True, credential: Callable[[str], dict[str, str]] | None = None):
        self.fallback = fallback
        self.work_dir = Path(work_dir)
        self.setup = setup or TaskProcessSetup()
        self.enabled = enabled
        self.credential = credential
        self.pools: dict[str, WorkerPool] = {}
        self._launched: dict[str, _Launched] = {}  # by generated name, until its outcome is read
        self._adopted: dict[str, tuple[int, int | None]] = {}
        self._waiting_in: dict[str, WorkerPool] = {}
        self._janitor: asyncio.Task | None = None
        self.journals = WorkerJournals(self.work_dir / "workers")

    # ---------------------------------------------------------------- routing
    def _route(self, tctx: TaskExecutionContext) -> tuple[PoolSpec, list[str], str, dict, dict] | None:
        """(spec, argv, interpreter, shared env, own env) when the action runs on a worker; None: a process."""
        if not self.enabled or tctx.secret_file_values:  # files to mount: in a process's own namespace
            return None
        spec = pool_spec(tctx)
        if spec is None:
            return None
        argv = self.setup.argv(tctx)
        shared, own = self.setup.environment(tctx)
        option = shared.get(REUSE_OPTION, "on")
        if option not in ("on", "off"):
            raise PluginError(f"{REUSE_OPTION} must be on or off, not {option!r}", code="BadTaskSpecification")
        interpreter = sdk_entrypoint_interpreter(argv[0])
        if option == "off" or interpreter is None:
            return None
        return spec, argv, interpreter, shared, own

    @staticmethod
    def _is_ours(state: dict | None) -> bool:
        return bool(state) and "worker" in state

    # ---------------------------------------------------------------- handle
    async def handle(self, tctx: TaskExecutionContext) -> Transition:
        state = tctx.plugin_state.get()
        if state is not None and state.get("phase") == "Started":
            if not self._is_ours(state):
                return await self.fallback.handle(tctx)
            return Transition.of(self._observe(tctx, state))
        adopted = self._adopt_marker(tctx)
        if adopted is not None:
            return Transition.of(adopted)
        route = self._route(tctx)
        if route is None:
            return await self.fallback.handle(tctx)
        return Transition.of(await self._launch(tctx, *route))

    def _pool(self, tctx: TaskExecutionContext, spec: PoolSpec, interpreter: str, shared: dict,
              cwd: str) -> WorkerPool:
        md = tctx.metadata
        key = pool_key(spec, interpreter, shared, cwd, md.project, md.domain, md.run_name)
        pool = self.pools.get(key)
        if pool is None:
            if len(self.pools) >= MAX_POOLS:
                raise PluginError(f"more than {MAX_POOLS} reusable environments at once", code="TooManyPools")
            env = {**shared, "FLYTE_INTERNAL_EXECUTION_PROJECT": md.project, "FLYTE_INTERNAL_EXECUTION_DOMAIN":
                   md.domain, "_U_ORG_NAME": md.environment.get("_U_ORG_NAME", "local"),
                   "TASKDECK_WORKER_CONCURRENCY": str(spec.concurrency),
                   "TASKDECK_WORKER_GRACE": str(ABORT_GRACE_SECONDS)}
            pool = self.pools[key] = WorkerPool(key, spec, self._starter(interpreter, env, cwd),
                                                label=f"{spec.name} ({key})")
            if self._janitor is None or self._janitor.done():
                self._janitor = asyncio.get_running_loop().create_task(self._sweep(), name="reusable-janitor")
        return pool

    def _starter(self, interpreter: str, env: dict, cwd: str):
        async def start(pool: WorkerPool, worker: WorkerProcess) -> None:
            own_env = dict(env)
            if self.credential is not None:
                own_env.update(self.credential(worker.id))
            own_env["TASKDECK_WORKER_ENDS"] = str(self.journals.paths(pool.key, worker.id)[1])
            worker.launch_fd = self.journals.open_launches(pool.key, worker.id)
            await worker.start(interpreter, own_env, cwd, self.work_dir / "workers" / f"{pool.key}-{worker.id}.log")
            log.info("reusable worker %s of %s ready (pid %s, %.2f s)", worker.id, pool.label, worker.pid,
                     worker.info.get("startSeconds") or 0)
        return start

    async def _launch(self, tctx: TaskExecutionContext, spec: PoolSpec, argv: list[str], interpreter: str,
                      shared: dict, own: dict) -> PhaseInfo:
        name = tctx.metadata.generated_name
        if self.setup.needs_files(tctx):  # the pool's workers start in the unpacked bundle: unpack it (once) first
            unpacked = await asyncio.to_thread(self.setup.prepare, tctx, False, False)
            if isinstance(unpacked, PhaseInfo):
                return unpacked
        cwd = self.setup.code_dir(tctx, per_attempt=False)
        pool = self._pool(tctx, spec, interpreter, shared, cwd)
        worker = pool.acquire(name, tctx.enqueue_owner)  # claimed before any await
        if worker is None:
            why = pool.unavailable()
            if why:
                pool.forget(name)
                self._waiting_in.pop(name, None)
                return PhaseInfo.system_retryable_failure("WorkerStartFailed", f"no reusable worker of "
                                                          f"{spec.name} could start: {why}")
            self._waiting_in[name] = pool
            return PhaseInfo.waiting_for_resources(reason=(
                f"waiting for a reusable worker of {spec.name} ({len(pool.live())} of {spec.max_replicas} replicas, "
                f"{spec.concurrency} action(s) each, {pool.waiting} waiting)"), woken=True)
        self._waiting_in.pop(name, None)
        try:
            return await self._send(tctx, pool, worker, argv, own, name)
        except BaseException:
            if name not in self._launched:
                pool.release(worker)
            raise

    async def _send(self, tctx, pool: WorkerPool, worker: WorkerProcess, argv, own, name) -> PhaseInfo:
        md = tctx.metadata
        cwd = self.setup.prepare(tctx, make_dirs=False, per_attempt=False)  # the worker makes the directories it writes to
        if isinstance(cwd, PhaseInfo):
            pool.release(worker)
            return cwd
        where = f"reusable worker {worker.id} (pid {worker.pid}) of {pool.spec.name}"
        state = {"phase": "Started", "worker": worker.id, "pid": worker.pid, "startTicks": worker.start_ticks,
                 "pool": pool.key, "environment": pool.spec.name, "startedAt": time.time(),
                 "image": primary_container(tctx.task_template).image}
        try:  # recorded before it is sent: a launch is never sent unrecorded
            self.journals.append(worker.launch_fd, {**state, "outputs": tctx.output_prefix})
        except (OSError, TypeError) as exc:
            pool.release(worker)
            raise StorageFaultError(str(self.journals.paths(pool.key, worker.id)[0]), exc) from exc
        header = (f"[taskdeck] attempt {md.attempt} of {md.owner_name}; image {state['image'] or '-'} recorded, "
                  f"not pulled; running in {where}, {cwd}\n[taskdeck] $ {shlex.join(argv)}")
        request = {"argv": argv, "env": own, "cwd": cwd, "log": str(tctx.log_path), "outputs": tctx.output_prefix,
                   "header": header}
        try:
            action = worker.run(name, (md.project, md.domain, md.run_name), request)
        except OSError:  # it died between the claim and now: the next reconcile claims another
            self._forget_launch(worker, tctx.output_prefix)
            pool.release(worker)
            return PhaseInfo.waiting_for_resources(reason=f"worker {worker.id} went away; waiting for another")
        launched = self._launched[name] = _Launched(pool, worker, action)
        asyncio.get_running_loop().create_task(self._await_end(launched, tctx.enqueue_owner))
        tctx.plugin_state.put(STATE_VERSION, state)
        return PhaseInfo.running(info=self._info(tctx, state), reason=f"running in {where}")

    def _forget_launch(self, worker: WorkerProcess, outputs: str) -> None:
        """A recorded launch that will not run (never sent, or aborted): a later engine must not adopt it."""
        self.journals.forget(outputs)
        if worker.launch_fd is not None:
            with contextlib.suppress(OSError):
                self.journals.append(worker.launch_fd, {"outputs": outputs, "forgotten": True})

    async def _await_end(self, launched: _Launched, enqueue_owner) -> None:
        await launched.action.done
        launched.pool.release(launched.worker)
        enqueue_owner()

    @staticmethod
    def _info(tctx: TaskExecutionContext, state: dict) -> TaskInfo:
        return TaskInfo(log_path=str(tctx.log_path), custom={"worker": state.get("worker"), "pid": state.get("pid"),
                                                             "pool": state.get("pool")})

    # ---------------------------------------------------------------- observe
    def _adopt_marker(self, tctx: TaskExecutionContext) -> PhaseInfo | None:
        """A launch whose status write was lost: observe it, never send it twice."""
        launched = self._launched.get(tctx.metadata.generated_name)
        if launched is not None:
            state = {"phase": "Started", "worker": launched.worker.id, "pid": launched.worker.pid,
                     "startTicks": launched.worker.start_ticks, "pool": launched.pool.key}
        else:
            state = self.journals.previous_launch(tctx.output_prefix)
            if state is None or "worker" not in state:
                return None
            state = {k: v for k, v in state.items() if k != "outputs"}
        tctx.plugin_state.put(STATE_VERSION, state)
        return self._observe(tctx, state)

    def _observe(self, tctx: TaskExecutionContext, state: dict) -> PhaseInfo:
        name = tctx.metadata.generated_name
        info = self._info(tctx, state)
        launched = self._launched.get(name)
        if launched is not None:
            if not launched.action.done.done():
                return PhaseInfo.running(info=info)
            del self._launched[name]  # the worker's report, or None: the worker was lost
            return self._ended(tctx, launched.action.done.result(), state, info, launched.worker.exit_code)
        done = self._done_report(tctx, state)
        if done is not None:
            self._adopted.pop(name, None)
            return self._ended(tctx, done, state, info, None)
        pid, ticks = state.get("pid"), state.get("startTicks")
        if pid and alive(pid, ticks):
            if name not in self._adopted:
                log.info("adopting %s, running in reusable worker %s (pid %s)", name, state.get("worker"), pid)
                self._adopted[name] = (pid, ticks)
                asyncio.get_running_loop().create_task(self._poll_adopted(tctx, name, pid, ticks))
            return PhaseInfo.running(info=info)
        self._adopted.pop(name, None)
        return self._ended(tctx, None, state, info, None)

    def _done_report(self, tctx: TaskExecutionContext, state: dict) -> dict | None:
        """How the worker said the action ended, from its end journal (for an action this engine adopted)."""
        if not state.get("pool") or not state.get("worker"):
            return None
        return self.journals.ended(str(state["pool"]), str(state["worker"]), tctx.output_prefix)

    async def _poll_adopted(self, tctx: TaskExecutionContext, name: str, pid: int, ticks: int | None) -> None:
        state = tctx.plugin_state.get() or {}
        while name in self._adopted and alive(pid, ticks) and self._done_report(tctx, state) is None:
            await asyncio.sleep(ADOPTED_POLL_SECONDS)
        tctx.enqueue_owner()

    def _ended(self, tctx, report: dict | None, state: dict, info: TaskInfo, exit_code: int | None) -> PhaseInfo:
        out = Path(tctx.output_prefix)
        if report is not None:
            return read_outcome(tctx, int(report.get("code") or 0), info)
        if (out / "error.pb").exists() or (out / "outputs.pb").exists():
            return read_outcome(tctx, None, info)
        how = f"exit {exit_code}" if exit_code is not None else "while the engine was not watching"
        if exit_code is not None and exit_code < 0:
            how = f"killed by signal {-exit_code}"
        return PhaseInfo.system_retryable_failure(
            "WorkerLost", f"reusable worker {state.get('worker')} (pid {state.get('pid')}) ended ({how}) while running "
            f"this action and left no outputs; see {self.work_dir / 'workers'}", info)

    # ---------------------------------------------------------------- abort / finalize
    async def abort(self, tctx: TaskExecutionContext) -> None:
        """Cancel this action only; a worker whose sync body will not stop is replaced (it says so itself)."""
        name = tctx.metadata.generated_name
        state = tctx.plugin_state.get()
        if self._fallback_owns(tctx, state):
            await self.fallback.abort(tctx)
            return
        pool = self._waiting_in.pop(name, None)
        if pool is not None:
            pool.forget(name)
        launched = self._launched.pop(name, None)
        self.journals.forget(tctx.output_prefix)
        if launched is not None:
            if not launched.action.done.done():
                launched.worker.cancel(launched.action)
                try:
                    await asyncio.wait_for(asyncio.shield(launched.action.done), ABORT_GRACE_SECONDS + 2)
                except asyncio.TimeoutError:
                    log.warning("worker %s did not stop %s: replacing the worker", launched.worker.id, name)
                    launched.worker.kill()
            self._forget_launch(launched.worker, tctx.output_prefix)
            return
        self._adopted.pop(name, None)
        pid, ticks = (state or {}).get("pid"), (state or {}).get("startTicks")
        if pid and alive(pid, ticks) and self._done_report(tctx, state) is None:
            # a previous engine's worker: no request channel is left to it, so it is stopped as a whole
            log.warning("aborting %s: stopping the adopted worker %s (pid %s)", name, state.get("worker"), pid)
            await stop(pid, lambda: gone(pid, ticks), ABORT_GRACE_SECONDS)

    def _fallback_owns(self, tctx: TaskExecutionContext, state: dict | None) -> bool:
        """Whether the action is (or would be) the container plugin's: a process it started, or, before any
        launch, a task that does not run on a worker."""
        if state is not None:
            return state.get("phase") == "Started" and not self._is_ours(state)
        try:
            return self._route(tctx) is None
        except PluginError:
            return True

    async def finalize(self, tctx: TaskExecutionContext) -> None:
        name = tctx.metadata.generated_name
        state = tctx.plugin_state.get()
        if self._fallback_owns(tctx, state):
            await self.fallback.finalize(tctx)
        pool = self._waiting_in.pop(name, None)
        if pool is not None:
            pool.forget(name)
        self._adopted.pop(name, None)

    # ---------------------------------------------------------------- pools
    async def _sweep(self) -> None:
        while self.pools:
            await asyncio.sleep(JANITOR_SECONDS)
            now = time.monotonic()
            for key, pool in list(self.pools.items()):
                for worker in pool.tick(now):
                    log.info("stopping idle reusable worker %s of %s", worker.id, pool.label)
                    asyncio.get_running_loop().create_task(worker.stop())
                if not pool.workers and not pool.waiting and now - pool.last_active >= pool.spec.idle_ttl:
                    del self.pools[key]

    def runs_of_worker(self, worker_id: str) -> set[tuple[str, str, str]]:
        """The runs a worker is running actions of now: what its credential covers."""
        for pool in self.pools.values():
            runs = pool.runs_of(worker_id)
            if runs:
                return runs
        return set()

    def snapshot(self) -> list[dict]:
        return [pool.snapshot() for pool in self.pools.values()]

    async def close(self) -> None:
        """Workers finish what they run, then exit; the next engine adopts those actions."""
        if self._janitor is not None:
            self._janitor.cancel()
            await asyncio.gather(self._janitor, return_exceptions=True)
        pools, self.pools = list(self.pools.values()), {}
        await asyncio.gather(*(p.close() for p in pools), return_exceptions=True)
        self._launched.clear()
        self._adopted.clear()
