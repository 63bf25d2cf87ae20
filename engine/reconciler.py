"""The TaskActionReconciler: Flyte's Reconcile, step by step (reference §2.2).

Where Flyte has a known wart we do the right thing and say so here:
* an in-place user retry records a FAILED event (with the error) for the failed attempt before the
  QUEUED event of the next one, and keeps errorState, instead of hiding the failure;
* deleting an already terminal TaskAction (garbage collection) records no extra ABORTED event;
* consecutive system failures are reset by an outcome (terminal phase or a new attempt), not by the
  Running report of a relaunch, so a task whose every launch crashes cannot loop forever (#7926).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

from flyteidl2.core import tasks_pb2
from flyteidl2.workflow import run_definition_pb2
from google.protobuf.message import DecodeError

from engine.cache import CACHE_MISS, CacheConfig, CacheError, TaskCache
from engine.quotas import ANNOTATION_QUEUE, ResourceManager
from engine.secret_store import (
    SecretNotFoundError,
    mask,
    secret_env,
    secret_file_refs,
    secret_file_values,
    secret_refs,
)
from engine.events import attempt_prefix, build_action_event
from engine.model import (
    COMPLETED_TIME_FORMAT,
    FINALIZER,
    LABEL_COMPLETED_TIME,
    LABEL_TERMINATION_STATUS,
    TERMINATED,
    ErrorState,
    PhaseTransition,
    TaskAction,
    TaskActionStatus,
    utcnow,
)
from engine.data_store import DataStore
from engine.paths import input_file, is_within, local_path, log_path
from engine.phases import PHASE_TABLE, ActionPhase, ConditionType, PluginPhase, Reason
from engine.plugins.core import (
    NON_RETRYABLE_CODES,
    SYSTEM,
    USER,
    CorruptedPluginStateError,
    ExecutionError,
    PhaseInfo,
    Plugin,
    PluginStateManager,
    StorageFaultError,
    TaskExecutionContext,
    TaskExecutionMetadata,
)
from engine.plugins.registry import PluginNotFoundError, PluginRegistry
from engine.storage_health import StorageHealth
from engine.store.base import ConflictError, EngineStore, EventRecord

log = logging.getLogger(__name__)

ANNOTATION_RUN_START_TIME = "taskdeck.flyte.org/run-start-time"
DEFAULT_MAX_SYSTEM_FAILURES = 3
DEFAULT_REQUEUE_SECONDS = 10.0
# A wait that something wakes (a process slot, a quota grant, a worker handed on): its recheck is only a
# safety net, so it need not come every requeue period (1,000 waiters every 10 s is CPU).
WOKEN_WAIT_RECHECK_SECONDS = 60.0
CONFLICT_RETRIES = 5
RESTART_MESSAGE = "restarting task"
STORAGE_RETRY_SECONDS = 2.0
STORAGE_BACKOFF_SECONDS = (1.0, 60.0)  # an action waiting on storage is retried from 1 s, doubling to 60 s
VERDICT_CACHE_SIZE = 1024  # live actions re-use theirs; each holds a parsed template
OWN_WRITES_KEPT = 65536
MAX_TEMPLATE_BYTES = 10 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Result:
    requeue_after: float | None = None


def max_attempts(template: tasks_pb2.TaskTemplate | None) -> int:
    if template is None or not template.HasField("metadata"):
        return 1
    return template.metadata.retries.retries + 1


MAX_RETRY_DELAY_SECONDS = 7 * 24 * 3600.0  # a backoff the SDK let through unbounded still ends


def retry_delay(template: tasks_pb2.TaskTemplate | None, retry_index: int) -> float:
    """Seconds before user retry ``retry_index`` (0 for the first) as the SDK's Backoff says:
    ``min(base * factor**n, cap)``; 0 without a backoff (retries fire back to back, as on Flyte)."""
    if template is None or not template.metadata.retries.HasField("backoff"):
        return 0.0
    backoff = template.metadata.retries.backoff
    base = _seconds(backoff.base)
    factor = backoff.factor if backoff.factor >= 1.0 else 1.0
    try:
        delay = base * factor ** max(retry_index, 0)
    except OverflowError:
        delay = float("inf")
    if backoff.HasField("cap"):
        delay = min(delay, _seconds(backoff.cap))
    return max(0.0, min(delay, MAX_RETRY_DELAY_SECONDS))


def status_changed(old: TaskActionStatus, new: TaskActionStatus) -> bool:
    """taskActionStatusChanged: stateJson, errorState and signal fields are not compared."""
    return (
        old.plugin_state_version != new.plugin_state_version
        or old.plugin_phase != new.plugin_phase
        or old.plugin_phase_version != new.plugin_phase_version
        or old.attempts != new.attempts
        or old.system_failures != new.system_failures
        or old.cache_status != new.cache_status
        or old.plugin_state != new.plugin_state
        or len(old.phase_history) != len(new.phase_history)
        or old.conditions != new.conditions
    )


def append_phase_history(status: TaskActionStatus, phase: str, message: str, now: dt.datetime) -> None:
    if status.phase_history and status.phase_history[-1].phase == phase:
        return
    status.phase_history.append(PhaseTransition.of(phase, now, message or None))


def map_phase_to_conditions(status: TaskActionStatus, info: PhaseInfo, now: dt.datetime) -> None:
    """Apply one row of the phase table: conditions, errorState (failures) and phaseHistory."""
    row = PHASE_TABLE[info.phase]
    if row.reason is None:
        return
    message = info.reason or row.reason
    status.set_condition(ConditionType.PROGRESSING, row.progressing, row.reason, message, now)
    if row.terminal_condition is not None:
        status.set_condition(row.terminal_condition, True, row.reason, message, now)
    if info.phase.is_failure and info.err is not None:
        status.error_state = ErrorState(code=info.err.code, kind=info.err.kind, message=info.err.message)
    append_phase_history(status, row.reason, message, now)


def state_json(task_action: TaskAction, phase: PluginPhase, now: dt.datetime) -> str:
    """createStateJSON (observability only). Names are DNS labels, so no JSON escaping is needed."""
    spec = task_action.spec
    return (f'{{"phase": "{phase.wire_name}", "actionId": "{spec.run_name}/{spec.action_name}", '
            f'"timestamp": "{now.year:04d}-{now.month:02d}-{now.day:02d}T{now.hour:02d}:{now.minute:02d}:'
            f'{now.second:02d}Z"}}')


class TaskActionReconciler:
    def __init__(
        self,
        store: EngineStore,
        registry: PluginRegistry,
        data_dir: Path,
        enqueue: Callable[[str], None],
        *,
        runtime_env: dict[str, str] | None = None,
        task_env: Callable[[str, str, str], dict[str, str]] | None = None,
        health: StorageHealth | None = None,
        max_system_failures: int = DEFAULT_MAX_SYSTEM_FAILURES,
        requeue_after: float = DEFAULT_REQUEUE_SECONDS,
        cluster: str = "",
        secrets=None,
        passed_env: Callable[[], frozenset[str]] = frozenset,
        quotas: ResourceManager | None = None,
        files: DataStore | None = None,
    ):
        if max_system_failures < 0 or requeue_after < 0:
            raise ValueError("max_system_failures and requeue_after must not be negative")
        self.store = store
        self.registry = registry
        self.secrets = secrets  # SecretStore: what tasks' secret requests get at launch
        self.quotas = quotas or ResourceManager()  # per project/domain and per queue limits on running actions
        self.passed_env = passed_env
        self.data_dir = Path(data_dir)
        self._logs_root = str(self.data_dir / "logs")
        self.data_roots = [os.path.realpath(self.data_dir)]
        self.files = files or DataStore(self.data_dir)  # where inputs and outputs live (an object store's prefix)
        # A spec is immutable per (uid, generation): validate and parse it once, not on every reconcile.
        self._verdicts: collections.OrderedDict[tuple[str, int], tuple] = collections.OrderedDict()
        self.enqueue = enqueue
        self.runtime_env = runtime_env if runtime_env is not None else {}
        self.task_env = task_env or (lambda project, domain, run: {})  # per run: its task credential
        self.health = health or StorageHealth(store, self.data_dir)
        self._storage_waits: dict[str, float] = {}  # action → its current storage backoff
        self.max_system_failures = max_system_failures or DEFAULT_MAX_SYSTEM_FAILURES
        self.requeue_after = requeue_after
        self.cluster = cluster
        self.clock: Callable[[], dt.datetime] = utcnow
        self.cache = TaskCache(store, on_released=enqueue, files=self.files)
        self._own_writes: dict[str, str] = {}  # TaskAction name → the resourceVersion we last wrote

    # ------------------------------------------------------------------ own writes
    def _wrote(self, task_action: TaskAction) -> None:
        """Remember a status this reconciler wrote: its watch event is an echo, not news."""
        self._own_writes[task_action.name] = task_action.metadata.resource_version
        if len(self._own_writes) > OWN_WRITES_KEPT:
            self._own_writes.pop(next(iter(self._own_writes)))

    def is_echo(self, name: str) -> bool:
        """True when the TaskAction is exactly as this reconciler last wrote it: a watch event for it is
        an echo of our own write, and the state has been acted on already. (A real child costs about two
        reconciles, launch and outcome, instead of about ten.)"""
        current = self.store.peek(name)
        if current is None:
            self._own_writes.pop(name, None)
            return False
        return self._own_writes.get(name) == current.resource_version

    # ------------------------------------------------------------------ entry point
    async def reconcile(self, name: str) -> Result:
        original = self.store.peek(name)  # committed and read-only; the working copy is mutated
        if original is None:
            return Result()
        if original.metadata.deletion_timestamp is not None:
            self.quotas.release(name)
            return await self.handle_abort_and_finalize(original.copy_deep())
        if original.status.is_terminal:
            self.quotas.release(name)
            if self.terminal_labels(original):  # only a copy may be touched: original is the committed object
                await self.ensure_terminal_labels(original.copy_deep())
            return Result()
        task_action = original.copy_deep()
        if task_action.is_condition:
            return await self.reconcile_condition(task_action, original)
        return await self.reconcile_task(task_action, original)

    # ------------------------------------------------------------------ tasks
    def validate(self, task_action: TaskAction) -> tuple[str, str] | tuple[Plugin, tasks_pb2.TaskTemplate]:
        spec = task_action.spec
        missing = [
            field for field, value in (
                ("runName", spec.run_name), ("project", spec.project), ("domain", spec.domain),
                ("actionName", spec.action_name), ("taskType", spec.task_type),
                ("taskTemplate", spec.task_template), ("inputUri", spec.input_uri),
                ("runOutputBase", spec.run_output_base),
            ) if not value
        ]
        if missing:
            return Reason.INVALID_SPEC, f"missing required fields: {', '.join(missing)}"
        for field, uri in (("inputUri", spec.input_uri), ("runOutputBase", spec.run_output_base)):
            if not self.is_allowed_uri(uri):
                return Reason.INVALID_SPEC, f"{field} {uri!r} is outside the engine's data directory"
        if len(spec.task_template) > MAX_TEMPLATE_BYTES:
            return Reason.INVALID_SPEC, f"taskTemplate is {len(spec.task_template)} bytes (limit {MAX_TEMPLATE_BYTES})"
        try:
            template = tasks_pb2.TaskTemplate()
            template.ParseFromString(spec.task_template)
        except (DecodeError, RecursionError, ValueError) as exc:
            return Reason.INVALID_SPEC, f"taskTemplate is not a valid core.TaskTemplate: {exc}"
        try:
            plugin = self.registry.resolve(spec.task_type)
        except PluginNotFoundError as exc:
            return Reason.PLUGIN_NOT_FOUND, str(exc)
        return plugin, template

    def _validated(self, task_action: TaskAction) -> tuple:
        key = (task_action.metadata.uid, task_action.metadata.generation)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self.validate(task_action)
            self._verdicts[key] = verdict
            if len(self._verdicts) > VERDICT_CACHE_SIZE:
                self._verdicts.popitem(last=False)
        return verdict

    async def reconcile_task(self, task_action: TaskAction, original: TaskAction) -> Result:
        verdict = self._validated(task_action)
        if isinstance(verdict[0], str):
            reason, message = verdict
            return await self._fail_validation(task_action, reason, message)
        plugin, template = verdict

        if FINALIZER not in task_action.metadata.finalizers:
            task_action.metadata.finalizers.append(FINALIZER)
            await self.store.update(task_action)  # carries on with the updated object: no extra round
            self._wrote(task_action)
            original = task_action.copy_deep()

        try:
            tctx = self.build_context(task_action, template)
        except Exception as exc:  # noqa: BLE001 - Flyte: requeue, nothing written
            log.warning("%s: cannot build the task execution context: %s", task_action.name, exc)
            return Result(self.requeue_after)

        if not await self.health.writable():
            # Storage refuses writes: launch nothing whose outcome could not be recorded.
            return Result(self._storage_backoff(task_action.name))

        expired, next_bound = expired_timeout(task_action, template, self.clock())
        waiting = backoff_remaining(task_action, template, self.clock())
        if expired is None and waiting > 0:  # a retry still in its backoff: nothing launches yet
            return Result(min(waiting, next_bound + 0.01) if next_bound is not None else waiting)
        if expired is not None:
            code, message = expired
            try:
                await plugin.abort(tctx)  # the whole attempt stops, process group included
            except Exception as exc:  # noqa: BLE001
                log.warning("%s: abort on %s failed: %s", task_action.name, code, exc)
            if code != "TaskTimeout":  # a queueing limit or the deadline ends the action, retries or not
                return await self.finalize_permanent_failure(task_action, original,
                                                             ExecutionError(code, message, USER))
            info = PhaseInfo.retryable_failure(code, message)  # a runtime timeout is retryable
        else:
            try:
                cache = await self.cache_config(task_action, template)
            except CacheError as exc:  # Flyte requeues such an action forever (§2.13): fail it instead
                return await self.finalize_permanent_failure(
                    task_action, original, ExecutionError("BadTaskSpecification", str(exc), USER))
            cached: PhaseInfo | None = None
            if cache is not None:
                already_running = task_action.status.plugin_phase == PluginPhase.RUNNING.wire_name
                try:
                    cached = await self.cache.before_execution(cache, already_running, tctx.output_prefix,
                                                               self.requeue_after, task_action.name)
                except StorageFaultError as exc:  # the cached outputs could not be copied in
                    return await self.wait_for_storage(task_action, original, exc)
                except CacheError as exc:  # fail closed: run nothing until the reservation can be taken
                    log.warning("%s: %s", task_action.name, exc)
                    return Result(STORAGE_RETRY_SECONDS)
            waiting = self._quota(task_action) if cached is None else None
            if cached is not None:
                info = cached  # a hit, or another owner computes it: the plugin is not called
            elif waiting is not None:
                # over a quota: nothing launches until a grant is handed on (that wakes it)
                info = PhaseInfo.waiting_for_resources(reason=waiting, woken=True)
            else:
                if template.security_context.secrets and task_action.status.plugin_state is None:
                    project, domain = task_action.spec.project, task_action.spec.domain
                    try:  # about to launch: the task's environment gets them
                        if plugin.mounts_secret_values:  # a local process: the values (variables, files)
                            tctx.secret_env = await self._secret_env(task_action, template)
                            tctx.secret_file_values = await secret_file_values(self.secrets, template, project,
                                                                               domain)
                        else:  # pods take what the cluster's Secrets keep by reference: only the rest is read
                            tctx.secret_refs = await secret_refs(self.secrets, template, project, domain)
                            tctx.secret_files = await secret_file_refs(self.secrets, template, project, domain)
                            tctx.secret_env = await self._secret_env(task_action, template, tctx.secret_refs)
                    except SecretNotFoundError as exc:  # deleted since the run was created
                        return await self.finalize_permanent_failure(
                            task_action, original, ExecutionError("SecretNotFound", str(exc), USER))
                try:
                    transition = await plugin.handle(tctx)
                except CorruptedPluginStateError as exc:
                    return await self.finalize_permanent_failure(
                        task_action, original, ExecutionError("CorruptedPluginState", str(exc), SYSTEM))
                except StorageFaultError as exc:  # not the task's fault, nor the plugin's: wait for storage
                    return await self.wait_for_storage(task_action, original, exc)
                except Exception as exc:  # noqa: BLE001 - any plugin exception is a system failure
                    return await self.record_system_error(task_action, original, plugin.id, exc)
                info = transition.info
                if info.err is not None and template.security_context.secrets:  # its error text may quote one
                    values = await self._given_secret_values(task_action, template, tctx)
                    info.err = dataclasses.replace(info.err, message=mask(info.err.message, values))
                self._storage_waits.pop(task_action.name, None)
                if cache is not None:
                    await self.finish_cache(cache, info, tctx)

        if info.phase == PluginPhase.RETRYABLE_FAILURE and info.err is not None and info.err.kind == SYSTEM:
            await self.reset_plugin_resource(task_action, plugin, tctx)
            error = _SystemError(f"[{info.err.code}] {info.err.message}", info.err.code)
            return await self.record_system_error(task_action, original, plugin.id, error)

        status = task_action.status
        now = self.clock()
        extra_events: list[EventRecord] = []
        restart_attempts = 0
        if info.phase == PluginPhase.RETRYABLE_FAILURE:
            attempts, limit = status.observed_attempts, tctx.metadata.max_attempts
            if attempts < limit:
                try:
                    await plugin.abort(tctx)
                except Exception as exc:  # noqa: BLE001 - only logged, as in Flyte
                    log.warning("%s: abort before restart failed: %s", task_action.name, exc)
                extra_events.append(build_action_event(
                    task_action, info, ActionPhase.FAILED, attempt=attempts, updated_time=now, cluster=self.cluster))
                if info.err is not None:
                    status.error_state = ErrorState(code=info.err.code, kind=info.err.kind, message=info.err.message)
                restart_attempts = attempts + 1
                delay = retry_delay(template, attempts - 1)
                info = PhaseInfo.queued(0, f"{RESTART_MESSAGE}: retrying in {delay:g}s" if delay else RESTART_MESSAGE)
            else:
                err = info.err or ExecutionError(
                    "MaxRetriesExceeded", f"task failed after {attempts} attempt(s)", USER)
                info = PhaseInfo.failed(PluginPhase.PERMANENT_FAILURE, err, info.info)

        if info.phase.is_terminal or restart_attempts:
            # Flyte resets on any non-system outcome, but then a relaunch that reports Running resets it too,
            # and a task whose every launch crashes loops forever (flyteorg/flyte#7926). Reset on outcomes.
            status.system_failures = 0
        map_phase_to_conditions(status, info, now)
        status.state_json = state_json(task_action, info.phase, now)
        new_state, version, written = tctx.plugin_state.new_state()
        if written:
            status.plugin_state, status.plugin_state_version = new_state, version
        if restart_attempts:
            status.plugin_state, status.plugin_state_version = None, 0
        status.plugin_phase = info.phase.wire_name
        status.plugin_phase_version = info.version
        status.attempts = restart_attempts or status.observed_attempts
        status.cache_status = info.info.cache_status
        if info.phase == PluginPhase.PERMANENT_FAILURE and info.err is not None and info.err.code in TIMEOUT_CODES:
            return await self.finalize_permanent_failure(task_action, original, info.err)
        await self.update_task_action_status(original, task_action, info, extra_events)
        if task_action.status.is_terminal or restart_attempts:
            self.quotas.release(task_action.name)  # a retry takes a grant again when it launches
        if task_action.status.is_terminal:
            await self.ensure_terminal_labels(task_action)
            return Result()
        if restart_attempts:  # our own write wakes nobody: launch the next attempt now, or after its backoff
            return Result(retry_delay(template, restart_attempts - 2))
        if info.phase == PluginPhase.RUNNING:  # a bound may start counting now
            _, next_bound = expired_timeout(task_action, template, self.clock())
        recheck = max(self.requeue_after, WOKEN_WAIT_RECHECK_SECONDS) if info.woken else self.requeue_after
        if next_bound is not None:
            return Result(min(recheck, next_bound + 0.01))
        return Result(recheck)

    def _quota(self, task_action: TaskAction) -> str | None:
        """None when the action may go on: granted by every quota that applies (taken as its attempt is
        about to launch; counted again, bound or not, when a restarted engine finds it launched), else why
        it waits."""
        if not self.quotas:
            return None
        spec, meta = task_action.spec, task_action.metadata
        parent = meta.owner_references[0].name if meta.owner_references else None
        queue = meta.annotations.get(ANNOTATION_QUEUE)
        if task_action.status.plugin_state is not None:
            self.quotas.adopt(task_action.name, spec.run_name, parent, spec.project, spec.domain, queue)
            return None
        name = task_action.name
        return self.quotas.allocate(name, spec.run_name, parent, spec.project, spec.domain, queue,
                                    wake=lambda: self.enqueue(name))

    async def _given_secret_values(self, task_action: TaskAction, template: tasks_pb2.TaskTemplate,
                                   tctx: TaskExecutionContext) -> list[str]:
        """Every secret value the task was given (variables and files), to mask in its error text: what this
        round's launch read, else read again (an error is mostly seen rounds after the launch, and pods took
        what Kubernetes Secrets keep by reference)."""
        if (tctx.secret_env or tctx.secret_file_values) and not tctx.secret_refs:
            return [*tctx.secret_env.values(), *tctx.secret_file_values.values()]
        if self.secrets is None:
            return []
        values: list[str] = []
        try:
            values += (await self._secret_env(task_action, template)).values()
        except SecretNotFoundError:
            pass  # deleted since the launch: nothing left to mask with
        try:
            values += (await secret_file_values(self.secrets, template, task_action.spec.project,
                                                task_action.spec.domain)).values()
        except SecretNotFoundError:
            pass
        return values

    async def _secret_env(self, task_action: TaskAction, template: tasks_pb2.TaskTemplate,
                          by_reference: Collection[str] = ()) -> dict[str, str]:
        """The secrets the task asks for: read when an attempt launches, and when its error is masked."""
        if self.secrets is None:
            return {}
        return await secret_env(self.secrets, template, task_action.spec.project, task_action.spec.domain,
                                self.passed_env(), by_reference)

    async def cache_config(self, task_action: TaskAction, template: tasks_pb2.TaskTemplate) -> CacheConfig | None:
        """The action's cache config (None: not discoverable, or run uncached); CacheError: no task id."""
        spec = task_action.spec
        return await self.cache.config(template, spec.cache_key, input_file(spec.input_uri),
                                       task_action.metadata.namespace, task_action.name)

    async def finish_cache(self, cache: CacheConfig, info: PhaseInfo, tctx: TaskExecutionContext) -> None:
        """finalizeCacheAfterExecution: a success populates the cache; any outcome releases the reservation."""
        if info.phase == PluginPhase.SUCCESS:
            meta = tctx.metadata
            info.info.cache_status = await self.cache.after_execution(
                cache, True, tctx.output_prefix, (meta.run_name, meta.action_name, meta.attempt))
        elif info.phase.is_failure:
            await self.cache.after_execution(cache, False, tctx.output_prefix, ())
        elif not info.info.cache_status:
            info.info.cache_status = CACHE_MISS  # looked up, not found: it runs

    async def _fail_validation(self, task_action: TaskAction, reason: str, message: str) -> Result:
        status, now = task_action.status, self.clock()
        status.set_condition(ConditionType.FAILED, True, reason, message, now)
        status.set_condition(ConditionType.PROGRESSING, False, reason, message, now)
        status.error_state = ErrorState(code=reason, kind=USER, message=message)
        try:
            await self.store.update_status(task_action)
        except Exception as exc:  # noqa: BLE001 - Flyte ignores this error; the next reconcile retries
            log.warning("%s: could not record %s: %s", task_action.name, reason, exc)
        return Result()

    def build_context(self, task_action: TaskAction,
                      template: tasks_pb2.TaskTemplate | None = None) -> TaskExecutionContext:
        spec, status = task_action.spec, task_action.status
        if template is None:
            template = tasks_pb2.TaskTemplate()
            template.ParseFromString(spec.task_template or b"")
        attempt = status.observed_attempts
        prefix = local_path(attempt_prefix(task_action, attempt))
        previous = (
            local_path(attempt_prefix(task_action, attempt - 1)) + "/_flytecheckpoints" if attempt >= 2 else ""
        )
        environment = dict(spec.env_vars or {})
        environment.update({
            "ACTION_NAME": spec.action_name,
            "RUN_NAME": spec.run_name,
            "_U_RUN_BASE": spec.run_output_base,
            "_U_ORG_NAME": "local",
            **self.task_env(spec.project, spec.domain, spec.run_name),
        })
        name = task_action.name
        metadata = TaskExecutionMetadata(
            namespace=task_action.metadata.namespace,
            owner_name=name,
            run_name=spec.run_name,
            action_name=spec.action_name,
            project=spec.project,
            domain=spec.domain,
            attempt=attempt,
            max_attempts=max_attempts(template),
            labels=task_action.metadata.labels,  # the working copy is private to this reconcile
            annotations=task_action.metadata.annotations,
            environment=environment,
            run_start_time=task_action.metadata.annotations.get(ANNOTATION_RUN_START_TIME, ""),
            parent_owner_name=(task_action.metadata.owner_references[0].name
                               if task_action.metadata.owner_references else None),
            owner_uid=task_action.metadata.uid,
            interruptible=bool(spec.interruptible),
        )
        return TaskExecutionContext(
            metadata=metadata,
            task_template_bytes=spec.task_template or b"",
            input_path=input_file(spec.input_uri),
            output_prefix=prefix,
            raw_output_prefix=prefix,
            checkpoint_prefix=f"{prefix}/_flytecheckpoints",
            prev_checkpoint_prefix=previous,
            log_path=self.log_path(spec.run_name, spec.action_name, attempt),
            plugin_state=PluginStateManager(status.plugin_state, status.plugin_state_version),
            enqueue_owner=lambda: self.enqueue(name),
            runtime_env=self.runtime_env,
            storage_root=self.data_roots[0],
            files=self.files if self.files.remote else None,
            _template=template,
        )

    def is_allowed_uri(self, uri: str) -> bool:
        """Local paths must stay inside the data roots, object store URIs inside the raw-data prefix: a task
        may not read or write elsewhere."""
        if self.files.remote:
            return self.files.contains(uri, self.files.root)
        if "://" in uri and not uri.startswith("file://"):
            return False  # no object store configured
        return is_within(local_path(uri), self.data_roots)

    def log_path(self, run_name: str, action_name: str, attempt: int) -> Path:
        return log_path(self._logs_root, run_name, action_name, attempt)

    # ------------------------------------------------------------------ storage faults
    def _storage_backoff(self, name: str) -> float:
        low, high = STORAGE_BACKOFF_SECONDS
        delay = min(self._storage_waits.get(name, low / 2) * 2, high)
        self._storage_waits[name] = delay
        return delay

    async def wait_for_storage(self, task_action: TaskAction, original: TaskAction,
                               fault: StorageFaultError) -> Result:
        """Keep the action waiting, with the reason in its status, and retry with backoff."""
        self.health.report_file_fault(fault.path, fault.error)
        delay = self._storage_backoff(task_action.name)
        log.warning("%s: %s; retrying in %.0f s", task_action.name, fault, delay)
        info = PhaseInfo.waiting_for_resources(reason=f"storage unavailable: {fault}")
        status, now = task_action.status, self.clock()
        map_phase_to_conditions(status, info, now)
        status.plugin_phase = info.phase.wire_name
        status.plugin_phase_version = info.version
        status.attempts = status.observed_attempts
        try:
            await self.update_task_action_status(original, task_action, info, [])
        except Exception as exc:  # noqa: BLE001 - the database may be failing too; the retry comes anyway
            log.warning("%s: could not record the storage wait: %s", task_action.name, exc)
        return Result(delay)

    # ------------------------------------------------------------------ failures
    async def reset_plugin_resource(self, task_action: TaskAction, plugin: Plugin, tctx: TaskExecutionContext) -> None:
        try:
            await plugin.abort(tctx)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: abort during reset failed: %s", task_action.name, exc)
        task_action.status.plugin_state = None
        task_action.status.plugin_state_version = 0

    async def record_system_error(
        self, task_action: TaskAction, original: TaskAction, plugin_id: str, error: Exception
    ) -> Result:
        code = getattr(error, "code", None)
        if code in NON_RETRYABLE_CODES:
            return await self.finalize_permanent_failure(
                task_action, original, ExecutionError(code, str(error), USER))
        status = task_action.status
        status.system_failures += 1
        message = str(error) or type(error).__name__
        if status.system_failures > self.max_system_failures:
            return await self.finalize_permanent_failure(task_action, original, ExecutionError(
                "MaxSystemFailuresExceeded",
                f'plugin "{plugin_id}" failed with system error {status.system_failures} times: {message}',
                SYSTEM,
            ))
        log.warning("%s: system failure %d/%d from plugin %s: %s", task_action.name, status.system_failures,
                    self.max_system_failures, plugin_id, message)
        status.error_state = ErrorState(code=code or "SystemError", kind=SYSTEM, message=message)
        if status_changed(original.status, status):
            try:
                await self.store.update_status(task_action)  # no conflict retry here, as in Flyte
            except Exception as exc:  # noqa: BLE001 - Flyte only logs this
                log.warning("%s: could not record the system failure: %s", task_action.name, exc)
        return Result(self.requeue_after)

    async def finalize_permanent_failure(
        self, task_action: TaskAction, original: TaskAction, error: ExecutionError
    ) -> Result:
        info = PhaseInfo.failed(PluginPhase.PERMANENT_FAILURE, error)
        status = task_action.status
        now = self.clock()
        if error.code in TIMEOUT_CODES:
            # Failed=True with reason TimedOut: the actions table and the events say TIMED_OUT.
            status.set_condition(ConditionType.PROGRESSING, False, Reason.TIMED_OUT, error.message, now)
            status.set_condition(ConditionType.FAILED, True, Reason.TIMED_OUT, error.message, now)
            status.error_state = ErrorState(code=error.code, kind=error.kind, message=error.message)
            append_phase_history(status, Reason.TIMED_OUT, error.message, now)
            event_phase = ActionPhase.TIMED_OUT
        else:
            map_phase_to_conditions(status, info, now)
            event_phase = None
        status.plugin_phase = PluginPhase.PERMANENT_FAILURE.wire_name
        status.plugin_phase_version = 0
        status.attempts = status.observed_attempts
        await self.release_cache(task_action)
        await self.update_task_action_status(original, task_action, info, [], event_phase)
        await self.ensure_terminal_labels(task_action)
        return Result()

    # ------------------------------------------------------------------ persistence
    async def update_task_action_status(
        self, original: TaskAction, task_action: TaskAction, info: PhaseInfo, extra_events: list[EventRecord],
        event_phase: ActionPhase | None = None,
    ) -> None:
        """Record the event, then persist the status, with conflict retry.

        Both go in one transaction, the event first: a status is never saved without its event, and a
        status refused for a conflict leaves no orphan event (the retry or the next reconcile sends it).
        """
        if not status_changed(original.status, task_action.status):
            return
        event = build_action_event(task_action, info, event_phase or PHASE_TABLE[info.phase].event_phase,
                                   cluster=self.cluster)
        await self.persist_status(task_action, [*extra_events, event])

    async def persist_status(self, task_action: TaskAction, events: list[EventRecord]) -> None:
        """Persist with conflict retry; a terminal status carries its terminal labels in the same call."""
        new_status = task_action.status
        labels = self.terminal_labels(task_action)
        candidate = task_action
        for attempt in range(CONFLICT_RETRIES):
            try:
                await self.store.update_status(candidate, events, labels)
                task_action.metadata.resource_version = candidate.metadata.resource_version
                self._wrote(task_action)
                if labels:
                    task_action.metadata.labels.update(labels)
                return
            except ConflictError:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                await asyncio.sleep(0.01)
                candidate = await self.store.get(task_action.name)
                candidate.status = new_status.copy_deep()

    def terminal_labels(self, task_action: TaskAction) -> dict[str, str] | None:
        """The GC labels a terminal TaskAction lacks, or None (not terminal, or already labelled)."""
        status, labels = task_action.status, task_action.metadata.labels
        if not status.is_terminal or (LABEL_TERMINATION_STATUS in labels and LABEL_COMPLETED_TIME in labels):
            return None
        completed = self.clock()
        for type_ in (ConditionType.SUCCEEDED, ConditionType.FAILED):
            cond = status.condition(type_)
            if cond is not None and cond.status == "True":
                completed = cond.last_transition_time
                break
        return {
            LABEL_TERMINATION_STATUS: TERMINATED,
            LABEL_COMPLETED_TIME: completed.astimezone(dt.timezone.utc).strftime(COMPLETED_TIME_FORMAT),
        }

    async def ensure_terminal_labels(self, task_action: TaskAction) -> None:
        labels = self.terminal_labels(task_action)
        if labels:
            await self.store.patch_labels(task_action.name, labels)
            task_action.metadata.labels.update(labels)

    # ------------------------------------------------------------------ abort / finalize
    async def handle_abort_and_finalize(self, task_action: TaskAction) -> Result:
        self._storage_waits.pop(task_action.name, None)
        if FINALIZER not in task_action.metadata.finalizers:
            return Result()
        try:
            plugin = self.registry.resolve(task_action.spec.task_type)
            tctx = self.build_context(task_action)
        except Exception as exc:  # noqa: BLE001 - FinalizationSkipped: nothing to clean up with
            log.warning("%s: finalization skipped: %s", task_action.name, exc)
            return await self._remove_finalizer(task_action)
        try:
            await plugin.abort(tctx)
            await plugin.finalize(tctx)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: abort/finalize failed, retrying: %s", task_action.name, exc)
            return Result(self.requeue_after)
        await self.release_cache(task_action)
        if not task_action.status.is_terminal:
            aborted_at = task_action.metadata.deletion_timestamp or self.clock()
            event = build_action_event(task_action, PhaseInfo.aborted(await self.abort_reason(task_action)),
                                       ActionPhase.ABORTED, updated_time=aborted_at, cluster=self.cluster)
            await self.store.record_events([event])
        return await self._remove_finalizer(task_action)

    async def abort_reason(self, task_action: TaskAction) -> str:
        """Why the action was aborted: the reason given for it, or for the ancestor whose abort reached it."""
        spec = task_action.spec
        name, hops = spec.action_name, 0
        while name and hops < 64:
            try:
                row = await self.store.get_action((spec.project, spec.domain, spec.run_name, name))
            except Exception:  # noqa: BLE001 - the reason is for display: never let it block an abort
                return "aborted"
            if row is None:
                break
            if row.abort_reason:
                return row.abort_reason if hops == 0 else f"{row.abort_reason} (aborted with {name})"
            name, hops = row.parent_action_name, hops + 1
        return "aborted"

    async def release_cache(self, task_action: TaskAction) -> None:
        """Give up the action's cache reservation, if it holds one, and wake those waiting for the key."""
        verdict = self._validated(task_action)
        if isinstance(verdict[0], str):
            return
        try:
            cache = await self.cache_config(task_action, verdict[1])
        except CacheError:
            return
        if cache is not None:
            await self.cache.release(cache)

    async def _remove_finalizer(self, task_action: TaskAction) -> Result:
        task_action.metadata.finalizers = [f for f in task_action.metadata.finalizers if f != FINALIZER]
        await self.store.update(task_action)
        return Result()

    # ------------------------------------------------------------------ conditions
    async def reconcile_condition(self, task_action: TaskAction, original: TaskAction) -> Result:
        """Conditions have no plugin: PAUSED until signalled, TIMED_OUT after their timeout.

        Each transition is also recorded as an ActionEvent (Flyte records none for conditions), so the
        events, the headless output and the console show when a condition started waiting, for what,
        and who answered it.
        """
        status, now = task_action.status, self.clock()
        requeue: float | None = None
        outcome: tuple[ActionPhase, str, ExecutionError | None] | None = None
        if status.signal_value:
            message = f'condition signalled by "{status.signalled_by}"'
            status.set_condition(ConditionType.PROGRESSING, False, Reason.SIGNALED, message, now)
            status.set_condition(ConditionType.SUCCEEDED, True, Reason.SIGNALED, message, now)
            append_phase_history(status, Reason.SIGNALED, message, now)
            outcome = (ActionPhase.SUCCEEDED, message, None)
        else:
            condition = run_definition_pb2.ConditionAction()
            try:
                if not task_action.spec.condition_spec:
                    raise ValueError("conditionSpec is empty")
                condition.ParseFromString(task_action.spec.condition_spec)
            except (DecodeError, ValueError) as exc:
                message = f"invalid condition spec: {exc}"
                status.set_condition(ConditionType.FAILED, True, Reason.INVALID_SPEC, message, now)
                status.set_condition(ConditionType.PROGRESSING, False, Reason.INVALID_SPEC, message, now)
                status.error_state = ErrorState(code=Reason.INVALID_SPEC, kind=USER, message=message)
                outcome = (ActionPhase.FAILED, message, ExecutionError(Reason.INVALID_SPEC, message, USER))
            else:
                timeout = condition.timeout.ToTimedelta() if condition.HasField("timeout") else dt.timedelta(0)
                created = task_action.metadata.creation_timestamp or now
                deadline = created + timeout
                if timeout > dt.timedelta(0) and now >= deadline:
                    message = f"condition timed out after {timeout} without a signal"
                    status.set_condition(ConditionType.FAILED, True, Reason.TIMED_OUT, message, now)
                    status.set_condition(ConditionType.PROGRESSING, False, Reason.TIMED_OUT, message, now)
                    status.error_state = ErrorState(code="ConditionTimedOut", kind=USER, message=message)
                    append_phase_history(status, Reason.TIMED_OUT, message, now)
                    outcome = (ActionPhase.TIMED_OUT, message, ExecutionError("ConditionTimedOut", message, USER))
                else:
                    status.set_condition(ConditionType.PROGRESSING, True, Reason.PAUSED, "waiting for signal", now)
                    append_phase_history(status, Reason.PAUSED, "waiting for signal", now)
                    asks = condition.prompt or condition.name
                    outcome = (ActionPhase.PAUSED, f"waiting for a signal: {asks}" if asks else "waiting for a signal",
                               None)
                    if timeout > dt.timedelta(0):
                        requeue = max((deadline - now).total_seconds(), 0.0)
        if status.conditions != original.status.conditions or len(status.phase_history) != len(
                original.status.phase_history):
            events = []
            if outcome is not None:
                phase, reason, error = outcome
                info = PhaseInfo(PluginPhase.UNDEFINED, reason=reason, err=error)
                events.append(build_action_event(task_action, info, phase, attempt=1, updated_time=now,
                                                 cluster=self.cluster))
            await self._update_condition_status(task_action, events)
        if status.is_terminal:
            await self.ensure_terminal_labels(task_action)
        return Result(requeue)

    async def _update_condition_status(self, task_action: TaskAction, events: list[EventRecord]) -> None:
        """Copy only conditions, phaseHistory and errorState, so a concurrent Signal write is kept."""
        for attempt in range(CONFLICT_RETRIES):
            latest = await self.store.get(task_action.name)
            latest.status.conditions = task_action.status.conditions
            latest.status.phase_history = task_action.status.phase_history
            latest.status.error_state = task_action.status.error_state
            try:
                await self.store.update_status(latest, events)
                task_action.metadata = latest.metadata
                return
            except ConflictError:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                await asyncio.sleep(0.01)


TIMEOUT_CODES = frozenset({"TaskTimeout", "QueuedTimeout", "DeadlineExceeded"})


def _seconds(duration) -> float:
    return duration.seconds + duration.nanos / 1e9


def attempt_started_at(status: TaskActionStatus) -> dt.datetime | None:
    """When the current attempt started executing (None if it has not), from phaseHistory."""
    for entry in reversed(status.phase_history):
        if entry.phase == Reason.EXECUTING:
            return entry.occurred_at
        if entry.phase == Reason.QUEUED:
            return None
    return None


def attempt_queued_at(task_action: TaskAction) -> dt.datetime | None:
    """When the current attempt was queued: its restart, else the action's creation."""
    for entry in reversed(task_action.status.phase_history):
        if entry.phase == Reason.QUEUED and (entry.message or "").startswith(RESTART_MESSAGE):
            return entry.occurred_at
    return task_action.metadata.creation_timestamp


def backoff_remaining(task_action: TaskAction, template: tasks_pb2.TaskTemplate, now: dt.datetime) -> float:
    """Seconds until a user retry that has not launched may launch (0: now). From the restart's entry in
    phaseHistory, so an engine restarted meanwhile waits out the same backoff."""
    status = task_action.status
    if status.observed_attempts < 2 or status.plugin_state is not None:
        return 0.0
    delay = retry_delay(template, status.observed_attempts - 2)
    if delay <= 0:
        return 0.0
    restarted = None
    for entry in reversed(status.phase_history):
        if entry.phase == Reason.QUEUED and (entry.message or "").startswith(RESTART_MESSAGE):
            restarted = entry.occurred_at
            break
        if entry.phase != Reason.QUEUED:
            return 0.0  # the attempt got further than queued: it launched
    if restarted is None:
        return 0.0
    return max(0.0, delay - (now - restarted).total_seconds())


def expired_timeout(task_action: TaskAction, template: tasks_pb2.TaskTemplate,
                    now: dt.datetime) -> tuple[tuple[str, str] | None, float | None]:
    """((code, message) of the first bound exceeded, or None; seconds until the next bound, or None)."""
    md = template.metadata
    bounds: list[tuple[str, str, dt.datetime]] = []
    created = task_action.metadata.creation_timestamp
    if md.HasField("timeouts") and md.timeouts.HasField("deadline") and created is not None:
        limit = _seconds(md.timeouts.deadline)
        if limit > 0:
            bounds.append(("DeadlineExceeded", f"the action passed its deadline of {limit:g}s",
                           created + dt.timedelta(seconds=limit)))
    started = attempt_started_at(task_action.status)
    if started is None:
        queued = attempt_queued_at(task_action)
        if md.HasField("timeouts") and md.timeouts.HasField("queued_timeout") and queued is not None:
            limit = _seconds(md.timeouts.queued_timeout)
            if limit > 0:
                bounds.append(("QueuedTimeout", f"the attempt waited longer than {limit:g}s to start",
                               queued + dt.timedelta(seconds=limit)))
    elif md.HasField("timeout"):
        limit = _seconds(md.timeout)
        if limit > 0:
            bounds.append(("TaskTimeout", f"the attempt ran longer than its timeout of {limit:g}s",
                           started + dt.timedelta(seconds=limit)))
    for code, message, at in bounds:
        if now >= at:
            return (code, message), None
    remaining = [(at - now).total_seconds() for _, _, at in bounds]
    return None, (min(remaining) if remaining else None)


class _SystemError(Exception):
    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code

