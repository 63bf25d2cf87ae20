"""Shared test helpers: TaskAction builders, a scripted plugin, and engine polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from flyteidl2.core import identifier_pb2, interface_pb2, literals_pb2, tasks_pb2, types_pb2
from flyteidl2.task import common_pb2, task_definition_pb2

from engine.auth import endpoint_with_credential
from engine.literals import primitive_literal
from engine.model import ObjectMeta, TaskAction, TaskActionSpec, base_labels, owner_reference_to, task_action_name
from engine.plugins.core import PhaseInfo, Plugin, TaskExecutionContext, Transition


def make_task_action(run: str = "rtest", action: str = "a0", *, parent: TaskAction | None = None,
                     task_type: str = "scripted", template: bytes | None = None, finalizers=None,
                     input_uri: str = "/tmp/in", run_output_base: str = "/tmp/out") -> TaskAction:
    if template is None:
        template = tasks_pb2.TaskTemplate(type=task_type).SerializeToString()
    metadata = ObjectMeta(
        name=task_action_name(run, action),
        labels=base_labels("p", "d", run, action, "task", parent is None),
        finalizers=list(finalizers or []),
    )
    if parent is not None:
        metadata.owner_references = [owner_reference_to(parent)]
    return TaskAction(
        metadata=metadata,
        spec=TaskActionSpec(
            run_name=run, project="p", domain="d", action_name=action,
            parent_action_name=parent.spec.action_name if parent is not None else None,
            input_uri=input_uri, run_output_base=run_output_base, task_type=task_type, task_template=template,
        ),
    )


class ScriptedPlugin(Plugin):
    """Returns the scripted PhaseInfos one per handle (the last repeats); an Exception item is raised."""

    id = "scripted"
    task_types = ("scripted",)

    def __init__(self, script: list | Callable[[TaskExecutionContext, int], object] | None = None):
        self.script = script if script is not None else [PhaseInfo.success()]
        self.handled: list[tuple[str, int]] = []  # (generated name, attempt)
        self.aborted: list[str] = []
        self.finalized: list[str] = []

    async def handle(self, tctx: TaskExecutionContext) -> Transition:
        index = len(self.handled)
        self.handled.append((tctx.metadata.generated_name, tctx.metadata.attempt))
        if callable(self.script):
            item = self.script(tctx, index)
        else:
            item = self.script[min(index, len(self.script) - 1)]
        if isinstance(item, BaseException):
            raise item
        return Transition.of(item)

    async def abort(self, tctx: TaskExecutionContext) -> None:
        self.aborted.append(tctx.metadata.generated_name)

    async def finalize(self, tctx: TaskExecutionContext) -> None:
        self.finalized.append(tctx.metadata.generated_name)


def task_spec(task_type: str, inputs: dict[str, types_pb2.LiteralType] | None = None, *, retries: int = 0,
              name: str = "test.task") -> task_definition_pb2.TaskSpec:
    interface = interface_pb2.TypedInterface()
    for key, literal_type in (inputs or {}).items():
        interface.inputs.variables.add(key=key, value=interface_pb2.Variable(type=literal_type))
    template = tasks_pb2.TaskTemplate(
        id=identifier_pb2.Identifier(resource_type=identifier_pb2.TASK, project="p", domain="d", name=name,
                                     version="v1"),
        type=task_type, interface=interface,
        metadata=tasks_pb2.TaskMetadata(retries=literals_pb2.RetryStrategy(retries=retries)),
    )
    return task_definition_pb2.TaskSpec(task_template=template, short_name=name.rsplit(".", 1)[-1])


def shell_spec(script: str, *, outputs: dict[str, types_pb2.LiteralType] | None = None,
               retries: int = 0) -> task_definition_pb2.TaskSpec:
    """A container task running ``sh -c script`` (Flyte's template variables are substituted)."""
    spec = task_spec("container", retries=retries)
    spec.task_template.container.CopyFrom(tasks_pb2.Container(image="local", args=["sh", "-c", script]))
    for key, literal_type in (outputs or {}).items():
        spec.task_template.interface.outputs.variables.add(key=key, value=interface_pb2.Variable(type=literal_type))
    return spec


def cached_spec(*, serializable: bool = False, version: str = "v1", name: str = "test.cached",
                task_type: str = "scripted") -> task_definition_pb2.TaskSpec:
    """A discoverable task with one int input ``x``."""
    spec = task_spec(task_type, {"x": types_pb2.LiteralType(simple=types_pb2.SimpleType.INTEGER)}, name=name)
    metadata = spec.task_template.metadata
    metadata.discoverable = True
    metadata.discovery_version = version
    metadata.cache_serializable = serializable
    return spec


def int_inputs(x: int) -> common_pb2.Inputs:
    return common_pb2.Inputs(literals=[common_pb2.NamedLiteral(name="x", value=primitive_literal(x))])


def sleep_spec() -> task_definition_pb2.TaskSpec:
    return task_spec("core-sleep", {"duration": types_pb2.LiteralType(simple=types_pb2.SimpleType.DURATION)},
                     name="bench.sleep")


def sleep_inputs(seconds: float) -> common_pb2.Inputs:
    return common_pb2.Inputs(literals=[common_pb2.NamedLiteral(name="duration", value=primitive_literal(seconds))])


async def eventually(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01):
    """Poll an (a)sync predicate until it returns something truthy; fail with the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


def run_endpoint(engine, run) -> str:
    """The engine's address with ``run``'s task credential, as a task process of that run gets it."""
    return endpoint_with_credential(engine.url, engine.authority.run_token(run.project, run.domain, run.run_name))


def owner_headers(engine) -> dict[str, str]:
    return {"authorization": f"Bearer {engine.authority.owner_token}", "content-type": "application/json"}


async def dump_engine_state(engine, run_name: str) -> None:
    """Print what a stuck run looks like: the run's actions, the work queue, every busy asyncio task's stack."""
    import io
    import sys
    import time

    out = sys.stderr
    for action in await engine.runs.list_actions(run_name):
        obj = engine.store.peek(task_action_name(run_name, action.name))
        print(f"action {action.name} row phase {action.phase} abort {action.abort_requested_at} "
              f"ended {action.ended_at} now {time.time()}", file=out)
        if obj is not None:
            print(f"  deletion {obj.metadata.deletion_timestamp} finalizers {obj.metadata.finalizers} "
                  f"plugin {obj.status.plugin_phase} state {obj.status.plugin_state}", file=out)
            for condition in obj.status.conditions:
                print(f"  {condition.type} {condition.status} {condition.reason} {condition.message}", file=out)
    queue = engine.manager.queue
    print(f"queue: processing {sorted(queue._processing)} dirty {sorted(queue._dirty)} "
          f"timers {sorted(queue._timers)}", file=out)
    for task in asyncio.all_tasks():
        stack = io.StringIO()
        task.print_stack(file=stack)
        if "self.queue.get()" not in stack.getvalue():  # idle reconcile workers say nothing
            print(f"--- task {task.get_name()}\n{stack.getvalue()}", file=out)


def write_tasks(directory, body: str) -> str:
    """A flyte tasks file ``wf.py`` (environment ``env`` already made) in ``directory/code``; its path."""
    import textwrap
    from pathlib import Path

    path = Path(directory) / "code" / "wf.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('import time\n\nimport flyte\n\nenv = flyte.TaskEnvironment(name="wf")\n'
                    + textwrap.dedent(body))
    return str(path)


async def start_sdk_task(engine, file, task_name: str, **inputs):
    """Start a run of the real flyte task ``task_name`` of ``file`` (project proj, domain dev; the file's
    directory is the code directory); inputs as the CLI takes them. Returns the run's record."""
    from pathlib import Path

    from engine.sdk import inputs_from_strings, load_task, serialize_task

    file = Path(file)
    task = load_task(file, task_name)
    spec = serialize_task(task, project="proj", domain="dev", root_dir=file.parent)
    return await engine.runs.create_run(spec, inputs_from_strings(task, {k: str(v) for k, v in inputs.items()}),
                                        project="proj", domain="dev", code_dir=str(file.parent))


async def run_sdk_task(engine, file, task_name: str, timeout: float = 120, **inputs):
    """``start_sdk_task``, then wait for the run's result."""
    record = await start_sdk_task(engine, file, task_name, **inputs)
    return await engine.runs.wait_for_run(record.run_name, timeout=timeout)


async def until(pilot, predicate, timeout: float = 15.0):
    """Pause a Pilot-driven app until ``predicate()`` holds (fail after ``timeout`` seconds)."""
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError("condition not met")


def process_cpu_seconds(pid: int) -> float:
    """CPU time every thread of a process has used, in nanosecond resolution (schedstat's first field)."""
    from pathlib import Path

    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


def live_processes(match) -> list[int]:
    """Pids of live (not zombie) processes for which ``match(cmdline, proc_dir)`` holds."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
            if stat[stat.rfind(")") + 2] != "Z" and match(cmdline, entry):
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def task_file(directory, filename: str, text: str, *needs: str):
    """``text`` written to ``directory/code/filename`` (the code directory of the run); skips the test when a
    module of ``needs`` (an SDK plugin, its engine) is not installed."""
    import pytest

    for module in needs:
        pytest.importorskip(module)
    path = directory / "code" / filename
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


async def cli(data_dir, *args: str, stdin: str | None = None, timeout: float = 120) -> tuple[int, str, str]:
    """``taskdeck --data-dir DATA ARGS...`` as a subprocess, without blocking the loop an engine under test
    serves from: (exit code, stdout, stderr)."""
    import asyncio
    import sys

    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "console.cli", "--data-dir", str(data_dir), *args, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(done.communicate((stdin or "").encode()), timeout)
    return done.returncode, out.decode(), err.decode()
