"""Flyte's TriggerService over the engine's triggers (``engine/triggers.py``): what ``flyte create trigger``,
``flyte get trigger`` and ``flyte update trigger --activate/--deactivate`` call, and the triggers
``flyte deploy`` sends with a task. A trigger's offloaded inputs are read back in when it is deployed,
so each run it fires carries them."""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.common import identifier_pb2
from flyteidl2.task import task_definition_pb2 as td
from flyteidl2.trigger import trigger_definition_pb2 as tg
from flyteidl2.trigger import trigger_service_pb2 as tsv
from flyteidl2.trigger.trigger_service_connect import TriggerService

from engine.control_plane import messages
from engine.control_plane.common import ContextService, translate_errors
from engine.names import check_run_id
from engine.store.base import TriggerRecord


def _details(record: TriggerRecord) -> tg.TriggerDetails:
    trigger = td.TaskTrigger()
    trigger.ParseFromString(record.spec)
    details = tg.TriggerDetails(
        id=identifier_pb2.TriggerIdentifier(name=_name(record), revision=record.revision),
        spec=tg.TriggerSpec(inputs=trigger.spec.inputs, run_spec=trigger.spec.run_spec, active=record.active,
                            task_version=record.task_version, description=trigger.spec.description),
        automation_spec=trigger.automation_spec, description=trigger.spec.description)
    if (stamp := messages.timestamp(record.updated_at)) is not None:
        details.status.updated_at.CopyFrom(stamp)
        details.status.deployed_at.CopyFrom(stamp)
    return details


def _name(record: TriggerRecord) -> identifier_pb2.TriggerName:
    return identifier_pb2.TriggerName(project=record.project, domain=record.domain, name=record.name,
                                      task_name=record.task_name)


def _trigger(record: TriggerRecord) -> tg.Trigger:
    details = _details(record)
    return tg.Trigger(id=details.id, status=details.status, active=record.active,
                      automation_spec=details.automation_spec)


class TriggerServiceImpl(ContextService, TriggerService):
    @property
    def triggers(self):
        return self.services.triggers

    async def deploy(self, trigger: td.TaskTrigger, project: str, domain: str, task_name: str,
                     task_version: str) -> TriggerRecord:
        """Register one trigger of a task (its version: the one given, else the latest deployed)."""
        with translate_errors():
            check_run_id(project, domain, "r")
            if not task_version:
                task_version = (await self.services.tasks.get(project, domain, task_name)).version
            if trigger.spec.HasField("offloaded_input_data") and not trigger.spec.inputs.literals:
                trigger.spec.inputs.CopyFrom(await self.ctx.inputs_of(trigger.spec, project, domain))
                trigger.spec.ClearField("offloaded_input_data")
            return await self.triggers.deploy(trigger.SerializeToString(deterministic=True), project=project,
                                              domain=domain, task_name=task_name, task_version=task_version)

    async def deploy_trigger(self, request, ctx):
        name, spec = request.name, request.spec
        trigger = td.TaskTrigger(name=name.name, automation_spec=request.automation_spec, spec=td.TaskTriggerSpec(
            active=spec.active, inputs=spec.inputs, run_spec=spec.run_spec, description=spec.description))
        if spec.HasField("offloaded_input_data"):
            trigger.spec.offloaded_input_data.CopyFrom(spec.offloaded_input_data)
        if not request.automation_spec.HasField("schedule"):
            raise ConnectError(Code.INVALID_ARGUMENT, "a trigger here needs a schedule (--schedule): triggers "
                                                      "fired only on demand are not supported")
        record = await self.deploy(trigger, name.project, name.domain, name.task_name, spec.task_version)
        return tsv.DeployTriggerResponse(trigger=_details(record))

    async def _find(self, name: identifier_pb2.TriggerName) -> TriggerRecord:
        with translate_errors():
            check_run_id(name.project, name.domain, "r")
            for record in await self.triggers.list(name.project, name.domain):
                if record.name == name.name and (not name.task_name or record.task_name == name.task_name):
                    return record
        raise ConnectError(Code.NOT_FOUND, f"no trigger {name.name!r} in {name.project}/{name.domain}")

    async def get_trigger_details(self, request, ctx):
        return tsv.GetTriggerDetailsResponse(trigger=_details(await self._find(request.name)))

    async def list_triggers(self, request, ctx):
        project = request.project_id.name if request.HasField("project_id") else None
        domain = request.project_id.domain if request.HasField("project_id") and request.project_id.domain else None
        with translate_errors():
            records = await self.triggers.list(project, domain)
        if request.HasField("task_name") and request.task_name.name:
            records = [r for r in records if r.task_name == request.task_name.name]
        return tsv.ListTriggersResponse(triggers=[_trigger(r) for r in records])

    async def update_triggers(self, request, ctx):
        for name in request.names:
            record = await self._find(name)
            with translate_errors():
                await self.triggers.set_active(record.name, request.active, project=record.project,
                                               domain=record.domain)
        return tsv.UpdateTriggersResponse()

    async def delete_triggers(self, request, ctx):
        raise ConnectError(Code.UNIMPLEMENTED, "triggers are kept with their history here: deactivate one instead "
                                               "(`flyte update trigger NAME TASK --deactivate`)")
