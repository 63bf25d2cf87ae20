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
from flyteidl2.task import task_definition_pb2 as td
from flyteidl2.task import task_service_pb2 as ts
from flyteidl2.task.task_service_connect import TaskService

from engine.control_plane import messages
from engine.control_plane.common import ControlPlaneContext, translate_errors
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


class TaskServiceImpl(TaskService):
    def __init__(self, context: ControlPlaneContext):
        self.ctx = context

    @property
    def tasks(self):
        return self.ctx.client.services.tasks

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
        if request.triggers:
            raise ConnectError(Code.UNIMPLEMENTED, "triggers deployed with `flyte deploy` are not served yet: "
                                                   "deploy them with `taskdeck deploy`")
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


class ProjectServiceImpl(ProjectService):
    def __init__(self, context: ControlPlaneContext):
        self.ctx = context

    @property
    def projects(self):
        return self.ctx.client.services.projects

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
