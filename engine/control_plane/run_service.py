"""Flyte's RunService for the stock CLI and ``flyte.init(endpoint=...)``: create, list, describe, watch,
abort and signal runs. Runs made here are ordinary runs (the console, ``taskdeck get``, abort and retry
drive them); every call goes through the client interface or the runs service."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.core import literals_pb2
from flyteidl2.workflow import run_service_pb2
from flyteidl2.workflow.run_service_connect import RunService

from engine.control_plane import messages
from engine.control_plane.common import ContextService, ControlPlaneContext, project_of, translate_errors
from engine.phases import ActionPhase
from engine.store.base import ActionsChanged

LIST_LIMIT = 1000
WATCH_RESYNC_SECONDS = 5.0


class RunServiceImpl(ContextService, RunService):
    def __init__(self, context: ControlPlaneContext):
        super().__init__(context)
        self.client = context.client
        self.runs = context.client.runs

    # ------------------------------------------------------------------ create
    async def create_run(self, request, ctx):
        with translate_errors():
            project, domain = project_of(request)
            name = request.run_id.name if request.HasField("run_id") and request.run_id.name else None
            inputs = await self.ctx.inputs_of(request, project, domain)
            spec, code_dir = await self.ctx.task_spec_of(request, project, domain)
            env_vars = {kv.key: kv.value for kv in request.run_spec.envs.values} if request.HasField("run_spec") else {}
            view = await self.client.create_run(spec.SerializeToString(), inputs.SerializeToString(), project=project,
                                                domain=domain, name=name, code_dir=code_dir, env_vars=env_vars,
                                                queue=request.run_spec.queue if request.HasField("run_spec") else "")
            record = await self.runs.get_run(view.run_name)
        return run_service_pb2.CreateRunResponse(run=messages.run(record))

    # ------------------------------------------------------------------ read
    async def get_run_details(self, request, ctx):
        with translate_errors():
            record = await self.ctx.run_record(request.run_id)
            details = await self.ctx.action_details(record)
        return run_service_pb2.GetRunDetailsResponse(details=messages.run_details(record, details))

    async def get_action_details(self, request, ctx):
        with translate_errors():
            record = await self.ctx.action_record(request.action_id)
            details = await self.ctx.action_details(record)
        return run_service_pb2.GetActionDetailsResponse(details=details)

    async def get_action_data(self, request, ctx):
        with translate_errors():
            record = await self.ctx.action_record(request.action_id)
            inputs, outputs, _, _ = await self.runs.action_data(record.run_name, record.name)
        return run_service_pb2.GetActionDataResponse(inputs=inputs, outputs=outputs)

    async def get_action_data_u_r_is(self, request, ctx):
        with translate_errors():
            record = await self.ctx.action_record(request.action_id)
            _, _, inputs_uri, outputs_uri = await self.runs.action_data(record.run_name, record.name)
        return run_service_pb2.GetActionDataURIsResponse(inputs_uri=inputs_uri, outputs_uri=outputs_uri)

    async def list_runs(self, request, ctx):
        with translate_errors():
            limit = min(request.request.limit or 100, LIST_LIMIT)
            records = await self.runs.list_runs(LIST_LIMIT)
            if request.HasField("project_id"):
                wanted = request.project_id
                records = [r for r in records if r.project == wanted.name
                           and (not wanted.domain or r.domain == wanted.domain)]
            if request.HasField("task_name") and request.task_name.name:
                records = [r for r in records if r.task_name == request.task_name.name]
        return run_service_pb2.ListRunsResponse(runs=[messages.run(r) for r in records[:limit]])

    async def list_actions(self, request, ctx):
        with translate_errors():
            record = await self.ctx.run_record(request.run_id)
            actions = await self.runs.list_actions(record.run_name)
            try:
                actions = [a for a in actions if messages.matches(a, request.request.filters)]
            except ValueError as exc:
                raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
        return run_service_pb2.ListActionsResponse(actions=[messages.action(a, self.ctx.condition_of(a))
                                                            for a in actions])

    # ------------------------------------------------------------------ watch
    def watch_action_details(self, request, ctx) -> AsyncIterator:
        return self._watch(request.action_id, lambda record, details:
                           run_service_pb2.WatchActionDetailsResponse(details=details))

    def watch_run_details(self, request, ctx) -> AsyncIterator:
        from flyteidl2.common import identifier_pb2

        root = identifier_pb2.ActionIdentifier(run=request.run_id, name="a0")
        return self._watch(root, lambda record, details: run_service_pb2.WatchRunDetailsResponse(
            details=messages.run_details(record, details)))

    async def _watch(self, action_id, respond) -> AsyncIterator:
        """The action's details now and at every change, ending after the terminal one."""
        with translate_errors():
            record = await self.ctx.action_record(action_id)
        wake = asyncio.Event()

        def on_change(change) -> None:
            if isinstance(change, ActionsChanged) and any(k[2] == record.run_name and k[3] == record.name
                                                           for k in change.keys):
                wake.set()

        unsubscribe = self.runs.subscribe(on_change)
        sent = None
        try:
            while True:
                record = await self.runs.find_action(record.run_name, record.name) or record
                details = await self.ctx.action_details(record)
                signature = details.SerializeToString(deterministic=True)
                if signature != sent:
                    sent = signature
                    yield respond(record, details)
                if ActionPhase(record.phase).is_terminal or self.ctx.closing.is_set():
                    return
                wake.clear()
                try:
                    await asyncio.wait_for(wake.wait(), WATCH_RESYNC_SECONDS)
                except asyncio.TimeoutError:
                    pass  # re-read anyway: logs_available turns true without a row change
        finally:
            unsubscribe()

    def watch_runs(self, request, ctx):
        raise ConnectError(Code.UNIMPLEMENTED, "WatchRuns is not served; the TaskDeck console watches runs")

    def watch_actions(self, request, ctx):
        raise ConnectError(Code.UNIMPLEMENTED, "WatchActions is not served; use ListActions")

    def watch_cluster_events(self, request, ctx):
        raise ConnectError(Code.UNIMPLEMENTED, "a local engine has no cluster events")

    def watch_groups(self, request, ctx):
        raise ConnectError(Code.UNIMPLEMENTED, "WatchGroups is not served")

    async def get_action_log_context(self, request, ctx):
        with translate_errors():
            record = await self.ctx.action_record(request.action_id)
            details = await self.ctx.action_details(record)
        attempts = [a for a in details.attempts if a.attempt == (request.attempt or record.attempts)]
        response = run_service_pb2.GetActionLogContextResponse(cluster="local")
        if attempts:
            response.log_context.CopyFrom(attempts[0].log_context)
        return response

    # ------------------------------------------------------------------ commands
    async def abort_run(self, request, ctx):
        with translate_errors():
            record = await self.ctx.run_record(request.run_id)
            await self.client.abort(record.run_name, "a0", request.reason or "aborted with the flyte CLI")
        return run_service_pb2.AbortRunResponse()

    async def abort_action(self, request, ctx):
        with translate_errors():
            record = await self.ctx.action_record(request.action_id)
            await self.client.abort(record.run_name, record.name, request.reason or "aborted with the flyte CLI")
        return run_service_pb2.AbortActionResponse()

    async def signal_event(self, request, ctx):
        payload = request.payload
        kind = payload.WhichOneof("value")
        if kind is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "payload needs a bool, int, float or string value")
        primitive = literals_pb2.Primitive(**{{"bool_value": "boolean", "int_value": "integer",
                                               "float_value": "float_value",
                                               "string_value": "string_value"}[kind]: getattr(payload, kind)})
        value = literals_pb2.Literal(scalar=literals_pb2.Scalar(primitive=primitive))
        with translate_errors():
            record = await self.ctx.action_record(request.action_id)
            await self.runs.signal(record.run_name, record.name, value, f"{os.environ.get('USER', 'owner')} (flyte CLI)")
        return run_service_pb2.SignalEventResponse()

