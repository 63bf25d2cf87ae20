"""The runs service: create runs, read runs/actions/events, wait for and abort them.

CreateRun as in Flyte (reference §4.6): the run name is ``r`` + 19 random characters, inputs go to
``<run base>/inputs/inputs.pb``, the task spec is stored by digest, and the root action row (QUEUED,
attempts 1) and its TaskAction ``<run>-a0`` are written in one transaction.
"""

from __future__ import annotations

import asyncio
import re
import html
import base64
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from flyteidl2.common import identifier_pb2
from flyteidl2.core import literals_pb2, tasks_pb2, types_pb2
from flyteidl2.task import common_pb2, run_pb2, task_definition_pb2
from flyteidl2.workflow import run_definition_pb2
from google.protobuf.message import DecodeError

from engine import cache
from engine.errors import InvalidRunError, RunNotFoundError
from engine.events import build_action_event
from engine.data_store import DataStore
from engine.literals import inputs_message, outputs_to_dict, read_inputs, read_outputs
from engine.quotas import ANNOTATION_QUEUE
from engine.secret_store import is_file_request
from engine.support import check_secrets, check_supported
from engine.names import check_action_name, check_env_vars, check_run_id, check_run_name
from engine.model import (
    ACTION_TYPE_CONDITION,
    ACTION_TYPE_TASK,
    ACTION_TYPE_TRACE,
    FINALIZER,
    ROOT_ACTION_NAME,
    ObjectMeta,
    TaskAction,
    TaskActionSpec,
    TaskActionStatus,
    base_labels,
    owner_reference_to,
    task_action_name,
    utcnow,
)
from engine.phases import ActionPhase
from engine.plugins.task_setup import ANNOTATION_CODE_DIR, substitute_template
from engine.plugins.core import PhaseInfo
from engine.paths import input_file, local_path, resolves_within
from engine.reconciler import ANNOTATION_RUN_START_TIME
from engine.store.base import (
    ActionKey,
    ActionRecord,
    ActionsChanged,
    CacheEntry,
    Change,
    ConflictError,
    EngineStore,
    EventRecord,
    NotFoundError,
    OwnerGoneError,
    StorageUnavailableError,
)

RUN_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery util/rand
RUN_NAME_LENGTH = 20
MAX_LIST_LIMIT = 100_000
log = logging.getLogger(__name__)
RECHECK_SECONDS = 2.0
MAX_WAIT_SECONDS = 24 * 3600

RETRYABLE_PHASES = frozenset({ActionPhase.FAILED, ActionPhase.ABORTED, ActionPhase.TIMED_OUT})


_SIGNAL_TYPES = {
    types_pb2.SimpleType.BOOLEAN: "boolean",
    types_pb2.SimpleType.INTEGER: "integer",
    types_pb2.SimpleType.FLOAT: "float_value",
    types_pb2.SimpleType.STRING: "string_value",
}


def check_signal_value(condition: run_definition_pb2.ConditionAction, value: literals_pb2.Literal) -> None:
    """A signal must be a primitive of the condition's declared simple type."""
    expected = _SIGNAL_TYPES.get(condition.type.simple)
    actual = value.scalar.primitive.WhichOneof("value") if value.scalar.HasField("primitive") else None
    if expected is None or actual != expected:
        wanted = types_pb2.SimpleType.Name(condition.type.simple) if expected else "a simple type"
        raise InvalidRunError(f"condition {condition.name!r} expects {wanted}, got {actual or 'no primitive'}")


def signal_literal(condition: run_definition_pb2.ConditionAction, text: str) -> literals_pb2.Literal:
    """Parse typed text input (bool, int, float, str) into the condition's literal."""
    simple = condition.type.simple
    try:
        if simple == types_pb2.SimpleType.BOOLEAN:
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "yes", "no", "1", "0", "y", "n"):
                raise ValueError(f"not a boolean: {text!r}")
            primitive = literals_pb2.Primitive(boolean=lowered in ("true", "yes", "1", "y"))
        elif simple == types_pb2.SimpleType.INTEGER:
            primitive = literals_pb2.Primitive(integer=int(text))
        elif simple == types_pb2.SimpleType.FLOAT:
            primitive = literals_pb2.Primitive(float_value=float(text))
        elif simple == types_pb2.SimpleType.STRING:
            primitive = literals_pb2.Primitive(string_value=text)
        else:
            raise ValueError("the condition has no simple type")
    except ValueError as exc:
        raise InvalidRunError(str(exc)) from None
    return literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=primitive))


class ParentGoneError(LookupError):
    """A child was enqueued under a parent that does not exist or is being aborted."""


_name_random = random.SystemRandom()


def generate_run_name() -> str:
    return "r" + "".join(_name_random.choices(RUN_NAME_ALPHABET, k=RUN_NAME_LENGTH - 1))


def check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRunError(f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}", field="limit")
    return limit


def stamped_spec(task_spec: task_definition_pb2.TaskSpec, run_start_iso: str):
    """A copy of the spec with the run's start time in its container args: (spec, template, bytes).

    The start time becomes part of the spec, so parents that hash it into child names stay stable.
    """
    spec = task_definition_pb2.TaskSpec()
    spec.CopyFrom(task_spec)
    template = spec.task_template
    if run_start_iso and template.WhichOneof("target") == "container":
        args = [substitute_template(a, {"runstarttime": run_start_iso}) for a in template.container.args]
        del template.container.args[:]
        template.container.args.extend(args)
    return spec, template, spec.SerializeToString(deterministic=True)


def spec_digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@dataclasses.dataclass
class RunResult:
    run: ActionRecord
    outputs: dict[str, Any] | None
    error: dict[str, str] | None

    @property
    def phase(self) -> ActionPhase:
        return ActionPhase(self.run.phase)

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run.run_name,
            "phase": self.phase.name,
            "outputs": self.outputs,
            "error": self.error,
        }


class RunsService:
    def __init__(self, store: EngineStore, data_dir: Path,
                 report_file_fault: Callable[[str, OSError], None] | None = None,
                 passed_env: Callable[[], frozenset[str]] = frozenset,
                 plugin_for: Callable[[str], str] | None = None, secrets=None, files: DataStore | None = None,
                 why_no_secret_files: Callable[[str], Awaitable[str | None]] | None = None):
        self.store = store
        self.files = files or DataStore(data_dir)  # inputs and outputs: the data directory or an object store
        self.secrets = secrets  # the SecretStore the up-front check of a task's secret requests reads
        self.plugin_for = plugin_for  # task type → the id of the plugin that would run it
        # task type → why its tasks cannot have secrets mounted as files, or None: they can
        self.why_no_secret_files = why_no_secret_files
        self.passed_env = passed_env  # engine variables task processes get (--pass-env) and that are set
        self.data_dir = Path(data_dir)
        self._data_root = self.files.root
        self._report_file_fault = report_file_fault or (lambda path, exc: None)

    def run_base(self, project: str, domain: str, run_name: str) -> str:
        return f"{self._data_root}/{project}/{domain}/{run_name}"

    async def create_run(
        self,
        task_spec: task_definition_pb2.TaskSpec,
        inputs: common_pb2.Inputs | None = None,
        *,
        project: str = "flytesnacks",
        domain: str = "development",
        name: str | None = None,
        code_dir: str | None = None,
        env_vars: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        queue: str = "",
        run_start_time: dt.datetime | None = None,
    ) -> ActionRecord:
        """A new run; ``run_start_time``: when it counts as started (a trigger's scheduled time, which the SDK
        gives its kickoff-time input), else now."""
        run_name = generate_run_name() if name is None else name
        check_run_id(project, domain, run_name, new_run=name is not None)
        env_vars = check_env_vars(env_vars)
        template = tasks_pb2.TaskTemplate()
        template.CopyFrom(task_spec.task_template)
        if not template.type:
            raise InvalidRunError("the task template has no type")
        await self._check_supported(template, project, domain)
        started = run_start_time or utcnow()
        start_iso = started.isoformat()
        spec, template, spec_bytes = stamped_spec(task_spec, start_iso)
        digest = spec_digest(spec_bytes)

        run_base = self.run_base(project, domain, run_name)
        input_uri = f"{run_base}/inputs/inputs.pb"
        try:
            await self.files.awrite(input_uri, (inputs or common_pb2.Inputs()).SerializeToString())
        except OSError as exc:
            self._report_file_fault(input_uri, exc)
            raise StorageUnavailableError(f"cannot write the run's inputs: {exc.strerror or exc}") from None
        # Flyte's runs service gives a discoverable root its cache key; ours is the SDK's formula (engine/cache.py).
        root_cache_key = cache.cache_key(template, inputs or common_pb2.Inputs()) \
            if cache.is_discoverable(template) else ""

        action_id = identifier_pb2.ActionIdentifier(
            run=identifier_pb2.RunIdentifier(project=project, domain=domain, name=run_name), name=ROOT_ACTION_NAME)
        action_spec = run_definition_pb2.ActionSpec(
            action_id=action_id, input_uri=input_uri, run_output_base=run_base,
            task=run_definition_pb2.TaskAction(spec=spec),
        )
        run_spec = run_pb2.RunSpec(
            labels=run_pb2.Labels(values=labels or {}),
            annotations=run_pb2.Annotations(values={**(annotations or {}), ANNOTATION_RUN_START_TIME: start_iso,
                                                    **({ANNOTATION_CODE_DIR: code_dir} if code_dir else {})}),
            envs=run_pb2.Envs(values=[literals_pb2.KeyValuePair(key=k, value=v) for k, v in (env_vars or {}).items()]),
        )
        now = time.time()
        record = ActionRecord(
            project=project, domain=domain, run_name=run_name, name=ROOT_ACTION_NAME, run_spec=run_spec.SerializeToString(),
            parent_action_name=None, phase=int(ActionPhase.QUEUED), action_type=ACTION_TYPE_TASK,
            task_project=template.id.project or None, task_domain=template.id.domain or None,
            task_name=template.id.name or None, task_version=template.id.version or None,
            task_type=template.type, short_name=spec.short_name or None,
            environment_name=spec.environment.name or None, function_name=template.id.name.rsplit(".", 1)[-1],
            action_spec=action_spec.SerializeToString(), task_spec_digest=digest,
            input_uri=input_uri, run_output_base=run_base, created_at=now, updated_at=now, attempts=1,
            cache_key=cache.catalog_key(template, root_cache_key) if root_cache_key else None,
        )
        all_labels = dict(labels or {})
        all_labels.update(base_labels(project, domain, run_name, ROOT_ACTION_NAME, "task", is_root=True))
        all_annotations = dict(annotations or {})
        all_annotations[ANNOTATION_RUN_START_TIME] = start_iso
        if code_dir:
            all_annotations[ANNOTATION_CODE_DIR] = code_dir
        if queue:
            all_annotations[ANNOTATION_QUEUE] = _checked_queue(queue)
        task_action = TaskAction(
            metadata=ObjectMeta(
                name=task_action_name(run_name, ROOT_ACTION_NAME), labels=all_labels, annotations=all_annotations,
                creation_timestamp=started, finalizers=[FINALIZER],  # set here, it costs no write of its own
            ),
            spec=TaskActionSpec(
                run_name=run_name, project=project, domain=domain, action_name=ROOT_ACTION_NAME,
                input_uri=input_uri, run_output_base=run_base, task_type=template.type,
                short_name=(spec.short_name or template.id.name)[:63],
                task_template=template.SerializeToString(), env_vars=env_vars or None, cache_key=root_cache_key,
                interruptible=template.metadata.interruptible if template.metadata.HasField("interruptible") else None,
            ),
        )
        await self.store.create_run_action(record, task_action, (digest, spec_bytes))
        return record

    async def create_action(
        self,
        run_name: str,
        action_name: str,
        parent_action_name: str,
        task_spec: task_definition_pb2.TaskSpec,
        input_uri: str,
        *,
        run_output_base: str | None = None,
        group: str = "",
        cache_key: str = "",
        queue: str = "",
    ) -> ActionRecord:
        """Create a child task action under a live parent (what EnqueueAction does).

        The child inherits the parent's run-scoped labels, annotations and env vars, and gets an owner
        reference to the parent, so aborting the parent cascades. Raises AlreadyExistsError for a
        duplicate (run, action) and ParentGoneError when the parent is missing or being aborted.
        """
        self._check_child(run_name, action_name, parent_action_name)
        parent = await self._live_parent(run_name, parent_action_name)  # read-only: no copy per child
        project, domain = parent.spec.project, parent.spec.domain
        spec, template, spec_bytes = stamped_spec(
            task_spec, parent.metadata.annotations.get(ANNOTATION_RUN_START_TIME, ""))
        await self._check_supported(template, project, domain)
        output_base = run_output_base or parent.spec.run_output_base
        self.check_inside_run(project, domain, run_name, inputUri=input_uri, runOutputBase=output_base)
        labels = {k: v for k, v in parent.metadata.labels.items() if not k.startswith("flyte.org/")}
        labels.update(base_labels(project, domain, run_name, action_name, "task", is_root=False))
        catalog_key = None
        if cache.is_discoverable(template):
            key = cache_key
            if not key:  # the SDK sends one; anything else gets the same formula's
                with contextlib.suppress(OSError, ValueError, DecodeError):
                    key = cache.cache_key(template, await self._inputs_message(input_file(input_uri)))
            catalog_key = cache.catalog_key(template, key) if key else None
            cache_key = key  # the TaskAction carries it, as Flyte's does: reconciles need not recompute it
        now = time.time()
        record = ActionRecord(
            project=project, domain=domain, run_name=run_name, name=action_name,
            parent_action_name=parent_action_name, phase=int(ActionPhase.QUEUED), action_type=ACTION_TYPE_TASK,
            task_project=template.id.project or None, task_domain=template.id.domain or None,
            task_name=template.id.name or None, task_version=template.id.version or None,
            task_type=template.type, short_name=spec.short_name or None,
            environment_name=spec.environment.name or None, function_name=template.id.name.rsplit(".", 1)[-1],
            action_group=group, task_spec_digest=spec_digest(spec_bytes), input_uri=input_uri,
            run_output_base=output_base, created_at=now, updated_at=now, attempts=1, cache_key=catalog_key,
        )
        task_action = TaskAction(
            metadata=ObjectMeta(
                name=task_action_name(run_name, action_name), labels=labels,
                annotations=child_annotations(parent.metadata.annotations, queue),
                owner_references=[owner_reference_to(parent)], finalizers=[FINALIZER],
            ),
            spec=TaskActionSpec(
                run_name=run_name, project=project, domain=domain, action_name=action_name,
                parent_action_name=parent_action_name, input_uri=input_uri, run_output_base=output_base,
                task_type=template.type, short_name=(spec.short_name or template.id.name)[:63],
                task_template=template.SerializeToString(), group=group, cache_key=cache_key,
                env_vars=dict(parent.spec.env_vars) if parent.spec.env_vars is not None else None,  # not shared
                interruptible=template.metadata.interruptible if template.metadata.HasField("interruptible") else None,
            ),
        )
        try:
            await self.store.create_run_action(record, task_action, (record.task_spec_digest, spec_bytes))
        except OwnerGoneError:
            raise ParentGoneError(f"parent action {parent_action_name!r} of run {run_name!r} is being aborted") from None
        return record

    async def _check_supported(self, template, project: str, domain: str) -> None:
        """What the task needs that this engine cannot give is refused before anything is written."""
        check_supported(template, self.passed_env, self.plugin_for)
        if template.security_context.secrets:
            no_file_mounts = "this engine mounts no secret files"
            if self.why_no_secret_files is not None and any(is_file_request(s)
                                                            for s in template.security_context.secrets):
                no_file_mounts = await self.why_no_secret_files(template.type)
            await check_secrets(template, project, domain, self.secrets or _NoSecrets(), self.passed_env,
                                no_file_mounts)

    @staticmethod
    def _check_child(run_name: str, action_name: str, parent_action_name: str) -> None:
        check_run_name(run_name)
        check_action_name(action_name)
        check_action_name(parent_action_name, field="parent")

    def check_inside_run(self, project: str, domain: str, run_name: str, *, follow_links: bool = False,
                         **uris: str) -> None:
        """Every named URI must lie inside the run's own directory: a task reaches nothing else.

        ``follow_links`` resolves symlinks first, for paths a client sent (a syscall per path part, so the
        Connect door does it once; the service's own check is the syscall-free one).
        """
        base = self.run_base(project, domain, run_name)
        links = follow_links and not self.files.remote  # an object store has no links
        for field, uri in uris.items():
            if uri and not (resolves_within(local_path(uri), [base]) if links else self.files.contains(uri, base)):
                raise InvalidRunError(f"{field} {uri!r} is outside the run's directory {base}", field=field)

    async def _live_parent(self, run_name: str, parent_action_name: str) -> TaskAction:
        parent = self.store.peek(task_action_name(run_name, parent_action_name))
        if parent is None:
            raise ParentGoneError(f"parent action {parent_action_name!r} of run {run_name!r} does not exist")
        if parent.metadata.deletion_timestamp is not None:
            raise ParentGoneError(f"parent action {parent_action_name!r} of run {run_name!r} is being aborted")
        return parent

    async def record_trace(self, run_name: str, action_name: str, parent_action_name: str,
                           trace: run_definition_pb2.TraceAction, input_uri: str = "", group: str = "") -> ActionRecord:
        """A ``@flyte.trace`` step the parent already ran: an action row, no TaskAction (as in Flyte)."""
        self._check_child(run_name, action_name, parent_action_name)
        parent = await self._live_parent(run_name, parent_action_name)
        spec = parent.spec
        self.check_inside_run(spec.project, spec.domain, run_name, inputUri=input_uri,
                              outputUri=trace.outputs.output_uri)
        start = trace.start_time.ToDatetime(tzinfo=dt.timezone.utc).timestamp() if trace.HasField(
            "start_time") else time.time()
        end = trace.end_time.ToDatetime(tzinfo=dt.timezone.utc).timestamp() if trace.HasField(
            "end_time") else start
        action_spec = run_definition_pb2.ActionSpec(
            action_id=identifier_pb2.ActionIdentifier(
                run=identifier_pb2.RunIdentifier(project=spec.project, domain=spec.domain, name=run_name),
                name=action_name),
            parent_action_name=parent_action_name, input_uri=input_uri, run_output_base=spec.run_output_base,
            trace=trace, group=group,
        )
        phase = ActionPhase(trace.phase) if trace.phase else ActionPhase.SUCCEEDED
        record = ActionRecord(
            project=spec.project, domain=spec.domain, run_name=run_name, name=action_name,
            parent_action_name=parent_action_name, phase=int(phase), action_type=ACTION_TYPE_TRACE,
            task_name=trace.name or None, task_type="trace", short_name=(trace.name or "trace")[:63],
            function_name=trace.name, action_group=group, action_spec=action_spec.SerializeToString(),
            input_uri=input_uri, run_output_base=spec.run_output_base, created_at=start, updated_at=time.time(),
            ended_at=end if phase.is_terminal else None,
            duration_ms=int(max(end - start, 0) * 1000) if phase.is_terminal else None, attempts=1,
        )
        if phase == ActionPhase.FAILED:
            record.error_kind, record.error_code, record.error_message = "USER", "TraceFailed", "trace step failed"
        await self.store.create_run_action(record, None, None)
        return record

    async def create_condition(self, run_name: str, action_name: str, parent_action_name: str,
                               condition: run_definition_pb2.ConditionAction, group: str = "") -> ActionRecord:
        """A condition (human input): PAUSED until signalled, TIMED_OUT after its timeout."""
        simple = condition.type.simple if condition.type.HasField("simple") else None
        if simple not in _SIGNAL_TYPES:
            raise InvalidRunError("a condition's type must be a simple BOOLEAN, INTEGER, FLOAT or STRING")
        self._check_child(run_name, action_name, parent_action_name)
        parent = await self._live_parent(run_name, parent_action_name)
        spec = parent.spec
        labels = {k: v for k, v in parent.metadata.labels.items() if not k.startswith("flyte.org/")}
        labels.update(base_labels(spec.project, spec.domain, run_name, action_name, "condition", is_root=False))
        now = time.time()
        record = ActionRecord(
            project=spec.project, domain=spec.domain, run_name=run_name, name=action_name,
            parent_action_name=parent_action_name, phase=int(ActionPhase.QUEUED),
            action_type=ACTION_TYPE_CONDITION, task_name=condition.name or None, task_type="condition",
            short_name=(condition.name or "condition")[:63], function_name=condition.name, action_group=group,
            run_output_base=spec.run_output_base, created_at=now, updated_at=now, attempts=1,
        )
        task_action = TaskAction(
            metadata=ObjectMeta(name=task_action_name(run_name, action_name), labels=labels,
                                annotations=dict(parent.metadata.annotations),
                                owner_references=[owner_reference_to(parent)]),
            spec=TaskActionSpec(
                run_name=run_name, project=spec.project, domain=spec.domain, action_name=action_name,
                parent_action_name=parent_action_name, action_type="condition",
                condition_spec=condition.SerializeToString(), run_output_base=spec.run_output_base,
                short_name=(condition.name or "condition")[:63], group=group,
            ),
        )
        try:
            await self.store.create_run_action(record, task_action, None)
        except OwnerGoneError:
            raise ParentGoneError(f"parent action {parent_action_name!r} of run {run_name!r} is being aborted") from None
        return record

    async def signal(self, run_name: str, action_name: str, value: literals_pb2.Literal,
                     signalled_by: str = "taskdeck") -> None:
        """Give a paused condition its value. The same value again is a no-op; another value is refused."""
        check_run_name(run_name)
        check_action_name(action_name)
        name = task_action_name(run_name, action_name)
        for attempt in range(5):
            try:
                obj = await self.store.get(name)
            except NotFoundError:
                raise RunNotFoundError(f"action {action_name!r} of run {run_name!r} not found") from None
            if not obj.is_condition:
                raise InvalidRunError(f"{run_name}/{action_name} is not a condition")
            condition = run_definition_pb2.ConditionAction()
            condition.ParseFromString(obj.spec.condition_spec or b"")
            check_signal_value(condition, value)
            payload = value.SerializeToString(deterministic=True)
            if obj.status.signal_value is not None:
                if obj.status.signal_value == payload:
                    return
                raise InvalidRunError(f"{run_name}/{action_name} was already signalled with another value")
            if obj.status.is_terminal:
                raise InvalidRunError(f"{run_name}/{action_name} has already ended")
            obj.status.signal_value = payload
            obj.status.signalled_by = signalled_by
            obj.status.signalled_at = utcnow()
            try:
                await self.store.update_status(obj)
                return
            except ConflictError:
                await asyncio.sleep(0.01 * (attempt + 1))
        raise InvalidRunError(f"{run_name}/{action_name} kept changing; signal again")

    async def signal_text(self, run_name: str, action: str, text: str, signalled_by: str = "taskdeck") -> str:
        """Signal a condition from typed text; ``action`` is the action's name or its condition's name."""
        run = await self.get_run(run_name)
        actions = await self.store.list_actions(run.project, run.domain, run.run_name)
        matches = [a for a in actions if a.action_type == ACTION_TYPE_CONDITION and action in (a.name, a.short_name)]
        paused = [a for a in matches if ActionPhase(a.phase) == ActionPhase.PAUSED]
        target = (paused or matches or [None])[0]
        if target is None:
            raise RunNotFoundError(f"no condition {action!r} in run {run_name!r}")
        obj = self.store.peek(task_action_name(run.run_name, target.name))
        if obj is None:
            raise InvalidRunError(f"condition {action!r} has already been cleaned up")
        condition = run_definition_pb2.ConditionAction()
        condition.ParseFromString(obj.spec.condition_spec or b"")
        await self.signal(run.run_name, target.name, signal_literal(condition, text), signalled_by)
        return target.name

    async def retry_action(self, run_name: str, action_name: str = ROOT_ACTION_NAME, *,
                           who: str = "taskdeck", why: str = "") -> list[str]:
        """Re-run a failed, aborted or timed-out action as a new attempt, in its run.

        Its failed/aborted/timed-out descendants are re-run too, so a re-run parent finds them working;
        succeeded descendants are kept, and the parent's SDK reuses them (their names are deterministic).
        The new attempt's QUEUED event says who retried and why. Returns the re-run action names.
        """
        run = await self.get_run(run_name)
        check_action_name(action_name)
        rows = await self.store.list_actions(run.project, run.domain, run.run_name)
        by_name = {r.name: r for r in rows}
        target = by_name.get(action_name)
        if target is None:
            raise RunNotFoundError(f"action {action_name!r} not found in run {run_name!r}")
        if ActionPhase(target.phase) not in RETRYABLE_PHASES:
            raise InvalidRunError(f"{run_name}/{action_name} is {ActionPhase(target.phase).name}: only failed, "
                                  "aborted or timed-out actions can be retried")
        if target.action_type != ACTION_TYPE_TASK:
            raise InvalidRunError(f"{run_name}/{action_name} is not a task action")
        children: dict[str, list[ActionRecord]] = {}
        for row in rows:
            if row.parent_action_name:
                children.setdefault(row.parent_action_name, []).append(row)
        targets, frontier = [target], [target]
        while frontier:  # breadth first: parents before their children
            nxt = [c for p in frontier for c in children.get(p.name, [])
                   if c.action_type == ACTION_TYPE_TASK and ActionPhase(c.phase) in RETRYABLE_PHASES]
            targets += nxt
            frontier = [c for p in frontier for c in children.get(p.name, [])]
        # The old TaskActions go first (deleting the target cascades to its subtree; finished ones record nothing).
        for row in targets:
            name = task_action_name(run.run_name, row.name)
            if self.store.peek(name) is not None:
                with contextlib.suppress(NotFoundError):
                    await self.store.delete(name)
        async with asyncio.timeout(30):
            while any(self.store.peek(task_action_name(run.run_name, r.name)) is not None for r in targets):
                await asyncio.sleep(0.02)
        run_spec = run_pb2.RunSpec()
        run_spec.ParseFromString(run.run_spec or b"")
        reason = f"retried by {who}" + (f": {why}" if why else "")
        for row in targets:
            await self._restart(row, run_spec, reason)
        return [r.name for r in targets]

    async def _restart(self, row: ActionRecord, run_spec, reason: str) -> None:
        spec_bytes = await self.store.get_task_spec(row.task_spec_digest or "")
        if spec_bytes is None:
            raise InvalidRunError(f"the task spec of {row.run_name}/{row.name} is not stored; it cannot be retried")
        spec = task_definition_pb2.TaskSpec()
        spec.ParseFromString(spec_bytes)
        template = spec.task_template
        is_root = row.parent_action_name is None
        labels = dict(run_spec.labels.values)
        labels.update(base_labels(row.project, row.domain, row.run_name, row.name, "task", is_root=is_root))
        owners = []
        if not is_root:
            parent = self.store.peek(task_action_name(row.run_name, row.parent_action_name))
            if parent is not None and parent.metadata.deletion_timestamp is None:
                owners = [owner_reference_to(parent)]
        attempts = (row.attempts or 1) + 1
        task_action = TaskAction(
            metadata=ObjectMeta(name=task_action_name(row.run_name, row.name), labels=labels,
                                annotations=dict(run_spec.annotations.values), owner_references=owners,
                                finalizers=[FINALIZER]),
            spec=TaskActionSpec(
                run_name=row.run_name, project=row.project, domain=row.domain, action_name=row.name,
                parent_action_name=row.parent_action_name, input_uri=row.input_uri,
                run_output_base=row.run_output_base, task_type=template.type,
                short_name=(spec.short_name or template.id.name)[:63], task_template=template.SerializeToString(),
                env_vars={kv.key: kv.value for kv in run_spec.envs.values} or None, group=row.action_group,
            ),
            status=TaskActionStatus(attempts=attempts),
        )
        event = build_action_event(task_action, PhaseInfo.queued(0, reason), ActionPhase.QUEUED, attempt=attempts)
        await self.store.restart_action(row.key, attempts, task_action, [event])

    # ------------------------------------------------------------------ reads
    async def get_run(self, run_name: str) -> ActionRecord:
        check_run_name(run_name)
        run = await self.store.find_run(run_name)
        if run is None:
            raise RunNotFoundError(f"run {run_name!r} not found")
        return run

    async def find_run(self, run_name: str) -> ActionRecord | None:
        check_run_name(run_name)
        return await self.store.find_run(run_name)

    async def run_scope(self, run_name: str) -> tuple[str, str] | None:
        """(project, domain) of the run, or None when it does not exist: from its root's TaskAction while
        that lives (in memory: the hot path of every enqueue), else from the actions table."""
        check_run_name(run_name)
        root = self.store.peek(task_action_name(run_name, ROOT_ACTION_NAME))
        if root is not None and root.metadata.deletion_timestamp is None:
            return root.spec.project, root.spec.domain
        run = await self.store.find_run(run_name)
        return (run.project, run.domain) if run is not None else None

    async def find_action(self, run_name: str, action_name: str) -> ActionRecord | None:
        """The action's row, or None when the run or the action does not exist."""
        run = await self.find_run(run_name)
        if run is None:
            return None
        return await self.store.get_action((run.project, run.domain, run.run_name, action_name))

    async def get_action(self, key: ActionKey) -> ActionRecord | None:
        return await self.store.get_action(key)

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """``callback`` after each commit that changed runs data (see ``RunsRepository.subscribe``)."""
        return self.store.subscribe(callback)

    async def actions_of(self, project: str, domain: str, run_name: str, names: list[str]) -> list[ActionRecord]:
        """The named actions (validated names) of a run whose identity the caller has checked: one read."""
        return await self.store.get_actions(project, domain, run_name, names)

    async def get_actions(self, run_name: str, names: list[str]) -> list[ActionRecord]:
        """The named actions of the run that exist."""
        run = await self.get_run(run_name)
        for name in names:
            check_action_name(name)
        return await self.store.get_actions(run.project, run.domain, run.run_name, names)

    async def waiting_conditions(self, run_names: list[str] | None = None) -> dict[str, tuple[str, ...]]:
        """run → the (short) names of its conditions waiting for a signal, for the runs that have any."""
        waiting: dict[str, list[str]] = {}
        for run, _, short_name in await self.store.paused_conditions(run_names):
            waiting.setdefault(run, []).append(short_name)
        return {run: tuple(names) for run, names in waiting.items()}

    async def run_counts(self) -> dict[int, int]:
        """Runs per phase, a running run that waits on a condition counted as PAUSED."""
        counts = await self.store.phase_counts()
        running, paused = int(ActionPhase.RUNNING), int(ActionPhase.PAUSED)
        for run_name in await self.waiting_conditions():
            root = await self.store.find_run(run_name)
            if root is not None and root.phase == running:
                counts[running] -= 1
                counts[paused] = counts.get(paused, 0) + 1
        return {phase: n for phase, n in counts.items() if n}

    def task_action_named(self, run_name: str, action_name: str) -> TaskAction | None:
        check_run_name(run_name)
        check_action_name(action_name)
        return self.store.peek(task_action_name(run_name, action_name))

    async def action_io(self, run_name: str, action_name: str,
                        attempt: int) -> tuple[dict | None, dict | None, dict | None]:
        """An attempt's decoded inputs, once it succeeded its outputs, and the report it wrote (its path and a
        text summary), read off the event loop."""
        record = await self.find_action(run_name, action_name)
        if record is None:
            raise RunNotFoundError(f"action {action_name!r} not found in run {run_name!r}")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= max(record.attempts, 1):
            raise InvalidRunError(f"attempt must be from 1 to {max(record.attempts, 1)}", field="attempt")

        def read() -> tuple[dict | None, dict | None, dict | None]:
            try:
                inputs = self.inputs_of(record) if record.input_uri else None
            except (OSError, ValueError, DecodeError):
                inputs = None  # unreadable: nothing to show, not an error of the reader's
            outputs = None
            if ActionPhase(record.phase) == ActionPhase.SUCCEEDED and record.action_type != ACTION_TYPE_CONDITION:
                try:
                    outputs = read_outputs(f"{self.attempt_prefix_of(record, attempt)}/outputs.pb", self.files.read)
                except (OSError, ValueError, DecodeError):
                    outputs = None
            report = None
            if record.action_type not in (ACTION_TYPE_CONDITION,):
                report = read_report(f"{self.attempt_prefix_of(record, attempt)}/{REPORT_FILE}",
                                     self.files.read if self.files.remote else None)
            return inputs, outputs, report

        return await asyncio.to_thread(read)

    async def action_data(self, run_name: str, action_name: str) -> tuple[common_pb2.Inputs, common_pb2.Outputs,
                                                                          str, str]:
        """(inputs, outputs, inputs URI, outputs URI) of an action as messages (outputs empty until it succeeded),
        read off the event loop: what Flyte's GetActionData answers."""
        record = await self.find_action(run_name, action_name)
        if record is None:
            raise RunNotFoundError(f"action {action_name!r} not found in run {run_name!r}")
        inputs_uri = ""
        if record.input_uri:
            inputs_uri = local_path(record.input_uri)
            inputs_uri = inputs_uri if inputs_uri.endswith(".pb") else f"{inputs_uri}/inputs.pb"
        outputs_uri = ""
        if record.action_type != ACTION_TYPE_CONDITION and record.run_output_base:
            outputs_uri = f"{self.attempt_prefix_of(record, record.attempts or 1)}/outputs.pb"

        def read() -> tuple[common_pb2.Inputs, common_pb2.Outputs]:
            inputs, outputs = common_pb2.Inputs(), common_pb2.Outputs()
            with contextlib.suppress(OSError, ValueError, DecodeError):
                if inputs_uri:
                    inputs = inputs_message(inputs_uri, self.files.read)
            if outputs_uri and ActionPhase(record.phase) == ActionPhase.SUCCEEDED:
                with contextlib.suppress(OSError, DecodeError):
                    outputs.ParseFromString(self.files.read(outputs_uri))
            return inputs, outputs

        inputs, outputs = await asyncio.to_thread(read)
        return inputs, outputs, inputs_uri, outputs_uri

    def condition_of(self, run_name: str, action_name: str) -> run_definition_pb2.ConditionAction:
        """What a condition asks (its name, prompt, description and type); NotFound once it is cleaned up."""
        obj = self.task_action_named(run_name, action_name)
        if obj is None or not obj.is_condition:
            raise RunNotFoundError(f"no condition {action_name!r} in run {run_name!r} (or it has been cleaned up)")
        condition = run_definition_pb2.ConditionAction()
        condition.ParseFromString(obj.spec.condition_spec or b"")
        return condition

    async def list_runs(self, limit: int = 200) -> list[ActionRecord]:
        return await self.store.list_runs(check_limit(limit))

    async def list_actions(self, run_name: str) -> list[ActionRecord]:
        run = await self.get_run(run_name)
        return await self.store.list_actions(run.project, run.domain, run.run_name)

    async def list_events(self, key: ActionKey) -> list[EventRecord]:
        return await self.store.list_events(key)

    async def result(self, run_name: str, action_name: str = ROOT_ACTION_NAME) -> RunResult:
        run = await self.get_run(run_name)
        check_action_name(action_name)
        if action_name != ROOT_ACTION_NAME:
            found = await self.store.get_action((run.project, run.domain, run.run_name, action_name))
            if found is None:
                raise RunNotFoundError(f"action {action_name!r} not found in run {run_name!r}")
            run = found
        outputs = None
        if run.phase == ActionPhase.SUCCEEDED:
            prefix = self.attempt_prefix_of(run, run.attempts or 1)
            try:
                outputs = outputs_to_dict(await self.files.aread(f"{prefix}/outputs.pb"))
            except FileNotFoundError:
                outputs = {}
        error = None
        if run.error_kind is not None or run.phase in (ActionPhase.FAILED, ActionPhase.TIMED_OUT,
                                                        ActionPhase.ABORTED):
            error = {"kind": run.error_kind or "", "code": run.error_code or "",
                     "message": run.error_message or ""}
            if run.phase == ActionPhase.ABORTED and not run.error_message:
                error = {"kind": "", "code": "Aborted", "message": run.abort_reason or "aborted"}
        return RunResult(run, outputs, error)

    def task_action_of(self, action: ActionRecord) -> TaskAction | None:
        """The action's TaskAction while it exists (read-only: the committed object)."""
        return self.store.peek(task_action_name(action.run_name, action.name))

    def attempt_prefix_of(self, action: ActionRecord, attempt: int) -> str:
        return local_path(f"{action.run_output_base.rstrip('/')}/{action.name}/{attempt}")

    def inputs_of(self, action: ActionRecord) -> dict[str, Any] | None:
        path = local_path(action.input_uri)
        return read_inputs(path if path.endswith(".pb") else f"{path}/inputs.pb", self.files.read)

    async def _inputs_message(self, path: str) -> common_pb2.Inputs:
        inputs = common_pb2.Inputs()
        inputs.ParseFromString(await self.files.aread(path))
        return inputs

    async def wait_for_run(self, run_name: str, timeout: float | None = None,
                           action_name: str = ROOT_ACTION_NAME) -> RunResult:
        """Wait until the run's root action (or ``action_name``) is terminal in the actions table."""
        if timeout is not None and not (isinstance(timeout, (int, float)) and 0 <= timeout <= MAX_WAIT_SECONDS):
            raise InvalidRunError(f"timeout must be a number of seconds from 0 to {MAX_WAIT_SECONDS}",
                                  field="timeout")
        run = await self.get_run(run_name)
        check_action_name(action_name)
        key = (run.project, run.domain, run.run_name, action_name)
        changed = asyncio.Event()

        def on_change(change) -> None:
            if isinstance(change, ActionsChanged) and key in change.keys:
                changed.set()

        unsubscribe = self.store.subscribe(on_change)
        try:
            async with asyncio.timeout(timeout):
                notified = True
                while True:
                    changed.clear()
                    current = await self.store.get_action(key)
                    if current is None:
                        raise RunNotFoundError(f"action {action_name!r} not found in run {run_name!r}")
                    if ActionPhase(current.phase).is_terminal:
                        if not notified:
                            log.warning("run %s: %s ended without a change notification", run_name, action_name)
                        return await self.result(run_name, action_name)
                    try:  # re-read now and then: a wait must never hang on a missed notification
                        await asyncio.wait_for(changed.wait(), RECHECK_SECONDS)
                        notified = True
                    except TimeoutError:
                        notified = False
        finally:
            unsubscribe()

    # ------------------------------------------------------------------ task cache
    async def list_cache(self, task_name: str | None = None, limit: int = 1000) -> list[CacheEntry]:
        return await self.store.cache_list(task_name, check_limit(limit))

    async def evict_cache(self, keys: list[str] | None = None, task_name: str | None = None,
                          everything: bool = False) -> int:
        """Evict entries by key or by task; everything only when asked for in so many words."""
        if keys is None and task_name is None and not everything:
            raise InvalidRunError("name the entries to evict: keys, a task, or everything")
        return await self.store.cache_delete(keys, task_name)

    # ------------------------------------------------------------------ abort
    async def abort_action(self, run_name: str, action_name: str = ROOT_ACTION_NAME,
                           reason: str = "aborted by user") -> None:
        """Abort an action and its subtree: its TaskAction is deleted, the deletion cascades."""
        run = await self.get_run(run_name)
        check_action_name(action_name)
        key = (run.project, run.domain, run.run_name, action_name)
        if await self.store.get_action(key) is None:
            raise RunNotFoundError(f"action {action_name!r} not found in run {run_name!r}")
        await self.store.mark_abort_requested(key, reason, time.time())
        try:
            await self.store.delete(task_action_name(run.run_name, action_name))
        except NotFoundError:
            pass  # already gone: abort is idempotent



REPORT_FILE = "report.html"  # where the SDK's flyte.report.flush writes an attempt's report
REPORT_SUMMARY_CHARS = 400


def read_report(path: str, read: Callable[[str], bytes] | None = None) -> dict | None:
    """{path, bytes, summary} of an attempt's report.html (the summary: its text, tags and scripts
    stripped), or None when it wrote none. ``read``: how to read it where it is (an object store's URI)."""
    try:
        if read is not None:
            data = read(path)
            size, head = len(data), data[:256 * 1024].decode(errors="replace")
        else:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(256 * 1024).decode(errors="replace")
    except OSError:
        return None
    body = re.split(r"(?i)<body[^>]*>", head, maxsplit=1)[-1]
    body = re.sub(r"(?is)<(script|style|nav)\b.*?</\1>", " ", body)  # code, and the tabs' navigation
    text = " ".join(html.unescape(re.sub(r"(?s)<[^>]+>", " ", body)).split())
    return {"path": path, "bytes": size, "summary": text[:REPORT_SUMMARY_CHARS]}


class _NoSecrets:
    """The secret store of a RunsService given none: it holds nothing."""

    async def resolve(self, name: str, *, project: str, domain: str) -> bytes:
        from engine.secret_store import SecretNotFoundError

        raise SecretNotFoundError(name)


def _checked_queue(queue: str) -> str:
    if not isinstance(queue, str) or len(queue) > 63 or not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?", queue):
        raise InvalidRunError(f"queue {queue!r} must be 1 to 63 letters, digits, '.', '_' or '-'", field="queue")
    return queue


def child_annotations(inherited: dict[str, str], queue: str) -> dict[str, str]:
    """A child's annotations: its parent's run-scoped ones, with its own queue (the task's, not the parent's)."""
    out = {k: v for k, v in inherited.items() if k != ANNOTATION_QUEUE}
    if queue:
        out[ANNOTATION_QUEUE] = _checked_queue(queue)
    return out
