"""What the control-plane services share: the doors they use, error translation, and the lookups every
RPC starts with (the run or action a request names, the project it belongs to, its inputs and task)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.task import common_pb2, task_definition_pb2
from flyteidl2.workflow import run_definition_pb2

from engine.action_types import ACTION_TYPE_CONDITION
from engine.auth import Authority
from engine.client.local import LocalClient
from engine.control_plane import messages
from engine.errors import AlreadyExistsError, InvalidRunError, PermissionDeniedError, StorageUnavailableError
from engine.http_gate import current_principal
from engine.names import InvalidNameError, check_action_name, check_run_id
from engine.paths import resolves_within
from engine.store.base import ActionRecord

log = logging.getLogger(__name__)

INPUTS_DIR = "inputs"  # <data>/uploads/<project>/<domain>/inputs/<hash>/inputs.pb: what UploadInputs stores


@contextlib.contextmanager
def translate_errors():
    """The engine's errors as Connect codes, with their messages (what the CLI prints)."""
    try:
        yield
    except ConnectError:
        raise
    except InvalidNameError as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
    except AlreadyExistsError as exc:
        raise ConnectError(Code.ALREADY_EXISTS, str(exc)) from None
    except InvalidRunError as exc:
        raise ConnectError(Code.INVALID_ARGUMENT, str(exc)) from None
    except PermissionDeniedError as exc:
        raise ConnectError(Code.PERMISSION_DENIED, str(exc)) from None
    except LookupError as exc:
        raise ConnectError(Code.NOT_FOUND, str(exc.args[0] if exc.args else exc)) from None
    except StorageUnavailableError as exc:
        raise ConnectError(Code.UNAVAILABLE, f"storage unavailable: {exc}") from None


def require_owner() -> None:
    """The control plane is the owner's: a task's run credential reaches only the SDK's controller services."""
    principal = current_principal()
    if principal is None or not principal.is_owner:
        raise ConnectError(Code.PERMISSION_DENIED, f"the credential of {principal or 'nobody'} does not reach "
                                                   "Flyte's control-plane services")


class OwnerOnly:
    """A service whose every RPC first checks that the owner asks."""

    def __init__(self, service):
        self._service = service

    def __getattr__(self, name: str):
        attribute = getattr(self._service, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute

        def guarded(request, ctx):
            require_owner()
            return attribute(request, ctx)

        return guarded


def project_of(request) -> tuple[str, str]:
    """(project, domain) of a request naming a run, a project or a task, checked by the names rules."""
    for field in ("run_id", "project_id", "task_id"):
        if request.HasField(field):
            ident = getattr(request, field)
            project = ident.name if field == "project_id" else ident.project
            with translate_errors():
                check_run_id(project, ident.domain, "r")
            return project, ident.domain
    raise ConnectError(Code.INVALID_ARGUMENT, "the request names no run, project or task")


class ContextService:
    """A control-plane service: it reaches the engine through the context's client and services."""

    def __init__(self, context: ControlPlaneContext):
        self.ctx = context

    @property
    def services(self):
        return self.ctx.client.services


@dataclasses.dataclass
class ControlPlaneContext:
    client: LocalClient
    authority: Authority
    data_dir: Path
    closing: asyncio.Event
    plain_url: str = ""  # the plain-HTTP address signed upload URLs point at (set once the server listens)
    files: Any = None  # the engine's DataStore (engine/data_store.py): with --raw-data, uploads end up there

    def upload_uri(self, project: str, domain: str, folder: str, filename: str) -> str:
        """Where an upload is read by tasks: the upload store's file, or its copy on the object store."""
        if self.files is not None:
            return self.files.upload_uri(project, domain, folder, filename)
        return str(self.uploads / project / domain / folder / filename)

    @property
    def runs(self):
        return self.client.runs

    @property
    def uploads(self) -> Path:
        return self.data_dir / "uploads"

    # ------------------------------------------------------------------ lookups
    async def run_record(self, run_id) -> ActionRecord:
        check_run_id(run_id.project, run_id.domain, run_id.name)
        record = await self.runs.find_run(run_id.name)
        if record is None or (record.project, record.domain) != (run_id.project, run_id.domain):
            raise LookupError(f"run {run_id.project}/{run_id.domain}/{run_id.name} not found")
        return record

    async def action_record(self, action_id) -> ActionRecord:
        run = await self.run_record(action_id.run)
        check_action_name(action_id.name or "a0")
        record = await self.runs.find_action(run.run_name, action_id.name or "a0")
        if record is None:
            raise LookupError(f"action {action_id.name!r} not found in run {run.run_name!r}")
        return record

    async def action_details(self, record: ActionRecord) -> run_definition_pb2.ActionDetails:
        events = await self.runs.list_events(record.key)
        logs = self.client.services.logs

        def log_exists() -> dict[int, bool]:
            return {n: logs.path(record.run_name, record.name, n).exists() for n in range(1, record.attempts + 1)}

        present = await asyncio.to_thread(log_exists)
        return messages.action_details(record, events, lambda n: self.runs.attempt_prefix_of(record, n),
                                       lambda n: present.get(n, False), self.condition_of(record))

    def condition_of(self, record: ActionRecord):
        """A condition action's ConditionAction while the engine keeps it (None for other actions)."""
        if record.action_type != ACTION_TYPE_CONDITION:
            return None
        try:
            return self.runs.condition_of(record.run_name, record.name)
        except LookupError:
            return None

    # ------------------------------------------------------------------ what a new run is made of
    def inputs_path(self, project: str, domain: str, digest: str) -> Path:
        return self.uploads / project / domain / INPUTS_DIR / digest / "inputs.pb"

    async def inputs_of(self, request, project: str, domain: str) -> common_pb2.Inputs:
        """A CreateRun's inputs: given inline, or offloaded by UploadInputs (inside the upload store only)."""
        if request.HasField("inputs"):
            return request.inputs
        if not request.HasField("offloaded_input_data"):
            return common_pb2.Inputs()
        uri = request.offloaded_input_data.uri
        root = self.uploads / project / domain / INPUTS_DIR
        if not resolves_within(uri, [str(root)]):
            raise InvalidRunError(f"offloaded inputs {uri!r} are not ones this engine stored for {project}/{domain}",
                                  field="offloadedInputData")

        def read() -> common_pb2.Inputs:
            inputs = common_pb2.Inputs()
            with open(uri, "rb") as f:
                inputs.ParseFromString(f.read())
            return inputs

        try:
            return await asyncio.to_thread(read)
        except FileNotFoundError:
            raise InvalidRunError(f"offloaded inputs {uri} are gone: upload them again",
                                  field="offloadedInputData") from None

    async def task_spec_of(self, request, project: str, domain: str) -> tuple[task_definition_pb2.TaskSpec, str | None]:
        """(the task spec, the code directory a deployed task with a bundle runs in) of a CreateRun."""
        if request.HasField("task_spec"):
            return request.task_spec, None
        if not request.HasField("task_id"):
            raise InvalidRunError("CreateRun needs a task_spec or a task_id", field="taskSpec")
        task_id = request.task_id
        tasks = self.client.services.tasks
        record = await tasks.get(task_id.project or project, task_id.domain or domain, task_id.name,
                                 task_id.version or None)
        spec = task_definition_pb2.TaskSpec()
        spec.ParseFromString(record.spec)
        return spec, await asyncio.to_thread(tasks.code_dir, record)
