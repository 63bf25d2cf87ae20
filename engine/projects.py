"""Projects and their domains (Flyte's ProjectService): every run, action, task, trigger and secret belongs to
one. A default project, ``flytesnacks`` with Flyte's three domains, exists out of the box; a run in an
unknown project or domain is refused naming the projects there are and the command that creates one."""

from __future__ import annotations

import time

from engine.errors import InvalidRunError
from engine.names import check_run_id
from engine.store.base import ProjectRecord

DEFAULT_PROJECT = "flytesnacks"
DEFAULT_DOMAINS = ("development", "staging", "production")  # Flyte's defaults


class UnknownProjectError(InvalidRunError):
    pass


class ProjectsService:
    def __init__(self, repository, clock=time.time):
        self.repository = repository
        self.clock = clock

    async def ensure_default(self) -> None:
        await self.repository.project_create(ProjectRecord(
            DEFAULT_PROJECT, DEFAULT_PROJECT, "the default project", DEFAULT_DOMAINS, self.clock()))

    async def create(self, project_id: str, *, name: str = "", description: str = "",
                     domains: tuple[str, ...] = DEFAULT_DOMAINS) -> ProjectRecord:
        for domain in domains or ("",):
            check_run_id(project_id, domain, "r")
        if len(name) > 255 or len(description) > 1024:
            raise InvalidRunError("a project's name is at most 255 characters, its description 1024", field="name")
        record = ProjectRecord(project_id, name or project_id, description, tuple(domains), self.clock())
        if not await self.repository.project_create(record):
            existing = await self.repository.project_get(project_id)
            if existing is not None and existing.domains == record.domains:
                return existing  # creating what exists is fine, as with flyte create project
            raise InvalidRunError(f"project {project_id!r} exists with domains {', '.join(existing.domains)}",
                                  field="id")
        return record

    async def list(self) -> list[ProjectRecord]:
        return await self.repository.project_list()

    async def check(self, project: str, domain: str) -> None:
        """UnknownProjectError unless ``project`` exists and has ``domain`` (a bad name is refused by the
        names rules first, as at every door)."""
        check_run_id(project, domain, "r")
        record = await self.repository.project_get(project)
        if record is None:
            known = ", ".join(p.id for p in await self.repository.project_list()) or "none"
            raise UnknownProjectError(f"project {project!r} does not exist (projects: {known}); create it with "
                                      f"`taskdeck project create {project}`", field="project")
        if domain not in record.domains:
            raise UnknownProjectError(f"project {project!r} has no domain {domain!r} (its domains: "
                                      f"{', '.join(record.domains)})", field="domain")
