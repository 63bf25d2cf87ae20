"""Flyte's TaskService, ProjectService and IdentityService over the engine's registered tasks and projects.

A task deployed by ``flyte deploy`` keeps its spec as the CLI built it: its container arguments fetch the
code bundle the CLI uploaded (``--tgz``), so its runs work in a directory of their own, not the caller's tree.
"""

from __future__ import annotations

import getpass

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.auth import identity_pb2
from flyteidl2.auth.identity_connect import IdentityService
from flyteidl2.project import project_service_pb2 as pp
from flyteidl2.project.project_service_connect import ProjectService
from flyteidl2.secret import definition_pb2 as sd
from flyteidl2.secret import payload_pb2 as sp
from flyteidl2.secret.secret_connect import SecretService
from flyteidl2.task import task_definition_pb2 as td
from flyteidl2.task import task_service_pb2 as ts
from flyteidl2.task.task_service_connect import TaskService

from engine.control_plane import messages
from engine.control_plane.common import ContextService, ControlPlaneContext, translate_errors
from engine.names import check_run_id
from engine.store.base import ProjectRecord, TaskRecord


def _task_id(record: TaskRecord) -> td.TaskIdentifier:
    return td.TaskIdentifier(project=record.project, domain=record.domain, name=record.name, version=record.version)


def _task_metadata(record: TaskRecord, spec: td.TaskSpec) -> td.TaskMetadata:
    metadata = td.TaskMetadata(short_name=spec.short_name or record.name.rsplit(".", 1)[-1],
                               environment_name=spec.environment.name,
                               short_description=spec.documentation.short_description)
    if (stamp := messages.timestamp(record.created_at)) is not None:
        metadata.deployed_at.CopyFrom(stamp)
    return metadata


def _spec(record: TaskRecord) -> td.TaskSpec:
    spec = td.TaskSpec()
    spec.ParseFromString(record.spec)
    return spec


class TaskServiceImpl(ContextService, TaskService):
    def __init__(self, context: ControlPlaneContext, deploy_trigger):
        super().__init__(context)
        self.deploy_trigger = deploy_trigger  # (TaskTrigger, project, domain, task name, version) → its record

    @property
    def tasks(self):
        return self.services.tasks

    async def deploy_task(self, request, ctx):
        task_id = request.task_id
        spec = td.TaskSpec()
        spec.CopyFrom(request.spec)
        template_id = spec.task_template.id
        if not template_id.name:  # the CLI names the task in the request; the template may repeat it
            template_id.name = task_id.name
        if not template_id.version:
            template_id.version = task_id.version
        if (template_id.name, template_id.version) != (task_id.name, task_id.version):
            raise ConnectError(Code.INVALID_ARGUMENT, "task_id and the spec's template id name different tasks")
        with translate_errors():
            await self.tasks.deploy(spec.SerializeToString(deterministic=True), project=task_id.project,
                                    domain=task_id.domain)
        for trigger in request.triggers:
            await self.deploy_trigger(trigger, task_id.project, task_id.domain, task_id.name, task_id.version)
        return ts.DeployTaskResponse()

    async def get_task_details(self, request, ctx):
        task_id = request.task_id
        with translate_errors():
            record = await self.tasks.get(task_id.project, task_id.domain, task_id.name, task_id.version or None)
        spec = _spec(record)
        return ts.GetTaskDetailsResponse(details=td.TaskDetails(
            task_id=_task_id(record), metadata=_task_metadata(record, spec), spec=spec))

    async def list_tasks(self, request, ctx):
        project = request.project_id.name if request.HasField("project_id") else None
        domain = request.project_id.domain if request.HasField("project_id") and request.project_id.domain else None
        with translate_errors():
            if project:
                check_run_id(project, domain or "development", "r")
            records = await self.tasks.list(project, domain)
        try:
            records = [r for r in records if messages.matches(r, request.request.filters, messages.TASK_FIELDS)]
        except ValueError as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
        sort = request.request.sort_by
        if sort.key in ("created_at", "deployed_at", "name", "version"):
            field = sort.key if sort.key in ("name", "version") else "created_at"
            records.sort(key=lambda r: getattr(r, field), reverse=sort.direction == sort.DESCENDING)
        limit = request.request.limit or len(records)
        return ts.ListTasksResponse(tasks=[td.Task(task_id=_task_id(r), metadata=_task_metadata(r, _spec(r)))
                                           for r in records[:limit]])

    async def list_versions(self, request, ctx):
        name = request.task_name
        with translate_errors():
            records = [r for r in await self.tasks.list(name.project, name.domain) if r.name == name.name]
        return ts.ListVersionsResponse(versions=[
            ts.ListVersionsResponse.VersionResponse(version=r.version, deployed_at=messages.timestamp(r.created_at))
            for r in records])


def _project(record: ProjectRecord) -> pp.Project:
    return pp.Project(id=record.id, name=record.name, description=record.description,
                      domains=[pp.Domain(id=d, name=d) for d in record.domains])


class ProjectServiceImpl(ContextService, ProjectService):
    @property
    def projects(self):
        return self.services.projects

    async def create_project(self, request, ctx):
        project = request.project
        domains = tuple(d.id for d in project.domains) or None
        with translate_errors():
            await self.projects.create(project.id, name=project.name, description=project.description,
                                       **({"domains": domains} if domains else {}))
        return pp.CreateProjectResponse()

    async def update_project(self, request, ctx):
        raise ConnectError(Code.UNIMPLEMENTED, "projects cannot be changed once created")

    async def get_project(self, request, ctx):
        with translate_errors():
            for record in await self.projects.list():
                if record.id == request.id:
                    return pp.GetProjectResponse(project=_project(record))
        raise ConnectError(Code.NOT_FOUND, f"project {request.id!r} does not exist")

    async def list_projects(self, request, ctx):
        with translate_errors():
            records = await self.projects.list()
        limit = request.limit or len(records)
        return pp.ListProjectsResponse(projects=pp.Projects(projects=[_project(r) for r in records[:limit]]))


class IdentityServiceImpl(IdentityService):
    async def user_info(self, request, ctx):
        user = getpass.getuser()
        return identity_pb2.UserInfoResponse(subject=user, name=user, preferred_username=user,
                                             additional_claims=None)


def _secret(info) -> sd.Secret:
    secret = sd.Secret(id=sd.SecretIdentifier(name=info.name, project=info.project, domain=info.domain),
                       secret_metadata=sd.SecretMetadata(
                           type=sd.SecretType.SECRET_TYPE_GENERIC,
                           secret_status=sd.SecretStatus(overall_status=sd.OverallStatus.FULLY_PRESENT)))
    if (stamp := messages.timestamp(info.created_at)) is not None:
        secret.secret_metadata.created_time.CopyFrom(stamp)
    return secret


class SecretServiceImpl(ContextService, SecretService):
    """Secrets by scope (project and domain, a project, or global); values go in and never come out."""

    @property
    def store(self):
        return self.services.secrets

    async def create_secret(self, request, ctx):
        return await self._put(request, sp.CreateSecretResponse())

    async def update_secret(self, request, ctx):
        return await self._put(request, sp.UpdateSecretResponse())

    async def _put(self, request, response):
        spec = request.secret_spec
        if spec.type == sd.SecretType.SECRET_TYPE_IMAGE_PULL_SECRET:
            raise ConnectError(Code.INVALID_ARGUMENT, "image pull secrets have no use here: this engine pulls no "
                                                      "images (tasks run from the local environment)")
        value = spec.binary_value or spec.string_value.encode()
        ident = request.id
        with translate_errors():
            await self.store.put(ident.name, value, project=ident.project, domain=ident.domain)
        return response

    async def get_secret(self, request, ctx):
        ident = request.id
        with translate_errors():
            for info in await self.store.list():
                if (info.name, info.project, info.domain) == (ident.name, ident.project, ident.domain):
                    return sp.GetSecretResponse(secret=_secret(info))
        raise ConnectError(Code.NOT_FOUND, f"no secret {ident.name!r} in "
                                           f"{'/'.join(p for p in (ident.project, ident.domain) if p) or 'the global scope'}")

    async def delete_secret(self, request, ctx):
        ident = request.id
        with translate_errors():
            await self.store.delete(ident.name, project=ident.project, domain=ident.domain)
        return sp.DeleteSecretResponse()

    async def list_secrets(self, request, ctx):
        with translate_errors():
            infos = await self.store.list()
        if request.project:
            infos = [i for i in infos if i.project in ("", request.project)]
        if request.domain:
            infos = [i for i in infos if i.domain in ("", request.domain)]
        return sp.ListSecretsResponse(secrets=[_secret(i) for i in infos[:request.limit or None]])
