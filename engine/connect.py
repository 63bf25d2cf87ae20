"""The controller services the ``flyte`` SDK calls from inside a running task, over the Connect protocol.

flyteidl2's generated ASGI applications serve ``QueueService`` (EnqueueAction, AbortQueuedAction,
AbortQueuedRun), ``StateService.Watch`` and the unified ``ActionsService`` (Enqueue, WatchForUpdates,
Abort, Signal) that the SDK uses with ``_U_USE_ACTIONS=1``. They are thin: every RPC goes through the
engine's runs service, so a parent's children are ordinary TaskActions reconciled like any other.

Watch semantics (what the SDK's informer needs): the parent's known children first, then a sentinel,
then live updates; a task's update carries ``output_uri`` (its attempt's prefix, where outputs.pb is once it
succeeded; a trace's, its output file), a failed one the ``ExecutionError``; a signalled condition its value.

Every request's identifiers are checked against flyteidl2's rules (``engine/names.py``) and against the
caller's credential: a task process holds its run's token and reaches nothing outside that run.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.actions import actions_service_pb2
from flyteidl2.actions.actions_service_connect import ActionsService, ActionsServiceASGIApplication
from flyteidl2.common import identifier_pb2
from flyteidl2.core import execution_pb2, literals_pb2
from flyteidl2.workflow import queue_service_pb2, run_definition_pb2, state_service_pb2
from flyteidl2.workflow.queue_service_connect import QueueService, QueueServiceASGIApplication
from flyteidl2.workflow.state_service_connect import StateService, StateServiceASGIApplication

from engine.errors import InvalidRunError, RunNotFoundError
from engine.http_gate import DEFAULT_MAX_BODY_BYTES, BoundedGzip, current_principal, harden_connect_app
from engine.names import InvalidNameError, check_action_id, check_action_name
from engine.phases import ActionPhase
from engine.model import ACTION_TYPE_CONDITION, ACTION_TYPE_TRACE
from engine.runs import ParentGoneError, RunsService
from engine.store.base import ActionRecord, ActionsChanged, AlreadyExistsError, StorageUnavailableError

log = logging.getLogger(__name__)

_disconnected: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar("disconnected", default=None)

# A watch quiet this long compares its children with the table: a missed notification heals, not hangs.
WATCH_RESYNC_SECONDS = 10.0
# A child's non-terminal phase waits this long before it is sent: one that ends meanwhile sends its end only
# (the SDK's informer only records a non-terminal phase; its waits end on the terminal one).
WATCH_HOLD_SECONDS = 0.5

_ERROR_KIND = {"USER": execution_pb2.ExecutionError.USER, "SYSTEM": execution_pb2.ExecutionError.SYSTEM}


def disconnect_aware(app):
    """ASGI wrapper: record the client's disconnect where a streaming handler can await it.

    connectrpc checks for a disconnect only between messages, so an idle stream would never end.
    """

    async def wrapped(scope, receive, send):
        event = asyncio.Event()
        token = _disconnected.set(event)

        async def watched_receive():
            message = await receive()
            if message.get("type") == "http.disconnect":
                event.set()
            return message

        try:
            await app(scope, watched_receive, send)
        finally:
            _disconnected.reset(token)

    wrapped.path = app.path  # type: ignore[attr-defined]
    return wrapped


class ControllerServices:
    """The engine side of the SDK's controller: enqueue, watch, abort, signal."""

    def __init__(self, runs: RunsService, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.runs = runs
        self.max_body_bytes = max_body_bytes
        self.closing = asyncio.Event()

    def apps(self) -> list:
        options = {"read_max_bytes": self.max_body_bytes, "compressions": [BoundedGzip(self.max_body_bytes)]}
        return [
            disconnect_aware(harden_connect_app(QueueServiceASGIApplication(_QueueService(self), **options))),
            disconnect_aware(harden_connect_app(StateServiceASGIApplication(_StateService(self), **options))),
            disconnect_aware(harden_connect_app(ActionsServiceASGIApplication(_ActionsService(self), **options))),
        ]

    async def authorize(self, action_id: identifier_pb2.ActionIdentifier, *, field: str = "action_id") -> None:
        """The identifier is well formed, names an existing run, and the caller's credential covers it."""
        try:
            check_action_id(action_id, field=field)
        except InvalidNameError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
        run_id = action_id.run
        principal = current_principal()
        if principal is None or not principal.covers(run_id.project, run_id.domain, run_id.name):
            raise ConnectError(Code.PERMISSION_DENIED,
                               f"the credential of {principal or 'nobody'} does not cover run {run_id.name!r}")
        if await self.runs.run_scope(run_id.name) != (run_id.project, run_id.domain):
            raise ConnectError(Code.NOT_FOUND, f"run {run_id.project}/{run_id.domain}/{run_id.name} not found")

    # ------------------------------------------------------------------ enqueue
    async def enqueue(self, action_id: identifier_pb2.ActionIdentifier, parent: str, input_uri: str,
                      run_output_base: str, group: str, task=None, trace=None, condition=None) -> None:
        runs, run_name, name = self.runs, action_id.run.name, action_id.name
        await self.authorize(action_id)
        try:
            check_action_name(parent, field="parent_action_name")
        except InvalidNameError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
        try:
            if condition is None:  # a condition reads and writes no files
                run = action_id.run
                runs.check_inside_run(run.project, run.domain, run_name, follow_links=True, inputUri=input_uri,
                                      runOutputBase=run_output_base,
                                      outputUri=trace.outputs.output_uri if trace is not None else "")
            if trace is not None:
                await runs.record_trace(run_name, name, parent, trace, input_uri, group)
            elif condition is not None:
                if await self._exists(action_id):
                    return  # a condition that already exists is a success, as in Flyte
                await runs.create_condition(run_name, name, parent, condition, group)
            elif task is not None:
                cache_key = task.cache_key.value if task.HasField("cache_key") else ""
                await runs.create_action(run_name, name, parent, task.spec, input_uri,
                                         run_output_base=run_output_base or None, group=group, cache_key=cache_key,
                                         queue=task.queue)
            else:
                raise ConnectError(Code.INVALID_ARGUMENT, "one of task, trace or condition is required")
        except AlreadyExistsError as exc:
            raise ConnectError(Code.ALREADY_EXISTS, str(exc)) from None
        except ParentGoneError as exc:
            code = Code.ABORTED if "aborted" in str(exc) else Code.NOT_FOUND
            raise ConnectError(code, str(exc)) from None
        except (InvalidRunError, ValueError) as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
        except StorageUnavailableError as exc:
            raise ConnectError(Code.UNAVAILABLE, f"storage unavailable: {exc}") from None

    async def _exists(self, action_id) -> bool:
        return await self.runs.find_action(action_id.run.name, action_id.name) is not None

    # ------------------------------------------------------------------ abort / signal
    async def abort(self, action_id: identifier_pb2.ActionIdentifier, reason: str) -> None:
        await self.authorize(action_id)
        try:
            await self.runs.abort_action(action_id.run.name, action_id.name, reason or "aborted by the SDK")
        except RunNotFoundError:
            pass  # already gone: abort is idempotent

    async def signal(self, action_id, value: literals_pb2.Literal, by: str) -> None:
        await self.authorize(action_id)
        try:
            await self.runs.signal(action_id.run.name, action_id.name, value, by or "sdk")
        except RunNotFoundError as exc:
            raise ConnectError(Code.NOT_FOUND, str(exc)) from None
        except InvalidRunError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None

    # ------------------------------------------------------------------ watch
    async def watch(self, parent_id: identifier_pb2.ActionIdentifier) -> AsyncIterator[
            state_service_pb2.ActionUpdate | None]:
        """Children of ``parent_id``: snapshot, then None (the sentinel), then live updates."""
        await self.authorize(parent_id, field="parent_action_id")
        run_id, parent = parent_id.run, parent_id.name
        pending: dict[str, None] = {}
        wake = asyncio.Event()

        def on_change(change) -> None:
            if isinstance(change, ActionsChanged):
                for key in change.keys:
                    if key[2] == run_id.name:
                        pending[key[3]] = None
                        wake.set()

        unsubscribe = self.runs.subscribe(on_change)  # subscribe before listing: nothing falls in between
        disconnected = _disconnected.get() or asyncio.Event()
        sent: dict[str, tuple] = {}
        try:
            root = await self.runs.get_run(run_id.name)
            for record in await self.runs.list_actions(run_id.name):
                if record.parent_action_name == parent:
                    update = self.action_update(run_id, record)
                    sent[record.name] = _signature(update)
                    yield update
            yield None
            stop = asyncio.ensure_future(self._first(disconnected, self.closing))
            loop = asyncio.get_running_loop()
            held: dict[str, tuple[float, state_service_pb2.ActionUpdate, tuple]] = {}  # name → (due, update, sig)
            try:
                while not stop.done():
                    due = min((d for d, _, _ in held.values()), default=None)
                    timeout = WATCH_RESYNC_SECONDS if due is None else max(due - loop.time(), 0.0)
                    waiter = asyncio.ensure_future(wake.wait())
                    await asyncio.wait({waiter, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    if stop.done():
                        break
                    woken = wake.is_set()
                    resync = not woken and due is None
                    wake.clear()
                    records = []
                    if resync:  # quiet for a while: compare with the table, so a missed notification heals
                        records = [r for r in await self.runs.list_actions(run_id.name)
                                   if r.parent_action_name == parent]
                    elif woken:
                        names = list(pending)
                        pending.clear()  # one read for all that changed since the last pass
                        records = await self.runs.actions_of(root.project, root.domain, run_id.name, names)
                    now = loop.time()
                    for record in records:
                        if record is None or record.parent_action_name != parent:
                            continue
                        name = record.name
                        update = self.action_update(run_id, record)
                        signature = _signature(update)
                        if sent.get(name) == signature:
                            held.pop(name, None)
                            continue
                        if resync:
                            log.warning("watch of %s/%s: %s changed without a notification",
                                        run_id.name, parent, name)
                        if not ActionPhase(update.phase).is_terminal and not resync:
                            # a child that ends soon sends its end alone: fewer messages for both sides
                            first_due = held[name][0] if name in held else now + WATCH_HOLD_SECONDS
                            held[name] = (first_due, update, signature)
                            continue
                        held.pop(name, None)
                        sent[name] = signature
                        yield update
                    for name in [n for n, (d, _, _) in held.items() if d <= now]:
                        _, update, signature = held.pop(name)
                        sent[name] = signature
                        yield update
            finally:
                stop.cancel()
        finally:
            unsubscribe()

    async def watch_responses(self, parent_id: identifier_pb2.ActionIdentifier, response_type) -> AsyncIterator:
        """``watch`` as a stream of ``response_type`` (StateService's WatchResponse or ActionsService's
        WatchForUpdatesResponse: both carry an action_update or a control_message)."""
        async for update in self.watch(parent_id):
            if update is None:
                yield response_type(control_message=state_service_pb2.ControlMessage(sentinel=True))
            else:
                yield response_type(action_update=update)

    @staticmethod
    async def _first(*events: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def action_update(self, run_id: identifier_pb2.RunIdentifier, record: ActionRecord) -> state_service_pb2.ActionUpdate:
        phase = ActionPhase(record.phase)
        update = state_service_pb2.ActionUpdate(
            action_id=identifier_pb2.ActionIdentifier(run=run_id, name=record.name), phase=int(phase))
        if record.action_type == ACTION_TYPE_TRACE:
            spec = run_definition_pb2.ActionSpec()
            spec.ParseFromString(record.action_spec or b"")
            update.output_uri = spec.trace.outputs.output_uri
        elif record.action_type != ACTION_TYPE_CONDITION:
            # Every update names where the attempt writes its outputs (read only once it succeeded), as
            # Flyte's do: the SDK's informer warns at each update without one.
            update.output_uri = f"{record.run_output_base.rstrip('/')}/{record.name}/{record.attempts or 1}"
        if phase in (ActionPhase.FAILED, ActionPhase.TIMED_OUT):
            update.error.CopyFrom(execution_pb2.ExecutionError(
                code=record.error_code or "Unknown", message=record.error_message or "",
                kind=_ERROR_KIND.get(record.error_kind or "", execution_pb2.ExecutionError.UNKNOWN)))
        if record.action_type == ACTION_TYPE_CONDITION and phase == ActionPhase.SUCCEEDED:
            obj = self.runs.task_action_of(record)
            if obj is not None and obj.status.signal_value:
                update.value.ParseFromString(obj.status.signal_value)
        return update


def _signature(update: state_service_pb2.ActionUpdate) -> tuple:
    return (update.phase, update.output_uri, update.HasField("error"), update.HasField("value"))


class _QueueService(QueueService):
    def __init__(self, services: ControllerServices):
        self.services = services

    async def enqueue_action(self, request, ctx):
        kind = request.WhichOneof("spec")
        await self.services.enqueue(
            request.action_id, request.parent_action_name, request.input_uri, request.run_output_base,
            request.group, **{kind: getattr(request, kind)} if kind else {})
        return queue_service_pb2.EnqueueActionResponse()

    async def abort_queued_action(self, request, ctx):
        await self.services.abort(request.action_id, request.reason)
        return queue_service_pb2.AbortQueuedActionResponse()

    async def abort_queued_run(self, request, ctx):
        await self.services.abort(identifier_pb2.ActionIdentifier(run=request.run_id, name="a0"), request.reason)
        return queue_service_pb2.AbortQueuedRunResponse()


class _StateService(StateService):
    def __init__(self, services: ControllerServices):
        self.services = services

    def watch(self, request, ctx):
        return self.services.watch_responses(request.parent_action_id, state_service_pb2.WatchResponse)

    async def put(self, request, ctx):  # the SDK has no call sites; accepted and ignored
        await self.services.authorize(request.action_id)
        return state_service_pb2.PutResponse(action_id=request.action_id)

    async def get(self, request, ctx):
        await self.services.authorize(request.action_id)
        return state_service_pb2.GetResponse(action_id=request.action_id)


class _ActionsService(ActionsService):
    def __init__(self, services: ControllerServices):
        self.services = services

    async def enqueue(self, request, ctx):
        action = request.action
        kind = action.WhichOneof("spec")
        await self.services.enqueue(
            action.action_id, action.parent_action_name, action.input_uri, action.run_output_base, action.group,
            **{kind: getattr(action, kind)} if kind else {})
        return actions_service_pb2.EnqueueResponse()

    def watch_for_updates(self, request, ctx):
        return self.services.watch_responses(request.parent_action_id, actions_service_pb2.WatchForUpdatesResponse)

    async def update(self, request, ctx):  # the SDK has no call sites; attempts/cache status come from the engine
        await self.services.authorize(request.action_id)
        return actions_service_pb2.UpdateResponse()

    async def abort(self, request, ctx):
        await self.services.abort(request.action_id, request.reason)
        return actions_service_pb2.AbortResponse()

    async def signal(self, request, ctx):
        await self.services.signal(request.action_id, request.value, _principal(request.signalled_by))
        return actions_service_pb2.SignalResponse()


def _principal(identity) -> str:
    """The subject of an EnrichedIdentity (user or application), for status.signalledBy."""
    if identity.HasField("user"):
        return identity.user.id.subject or identity.user.spec.email or "user"
    if identity.HasField("application"):
        return identity.application.id.subject or identity.application.spec.name or "application"
    return ""
