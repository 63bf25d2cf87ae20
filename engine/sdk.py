"""Bridge to the official ``flyte`` SDK: load a task from a Python file, serialize it to a
``flyteidl2.task.TaskSpec`` with the SDK's own serializer, and turn command-line values into inputs.

The SDK is imported lazily so the engine runs without it (e.g. for ``core-sleep`` tasks).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import pathlib
import sys
import typing
from typing import Any

from flyteidl2.task import common_pb2, task_definition_pb2


class TaskLoadError(Exception):
    pass


def load_task(file: str | pathlib.Path, task_name: str):
    """Import ``file`` as a module (its directory on sys.path, as ``flyte run`` does) and return the task."""
    path = pathlib.Path(file).resolve()
    if not path.is_file():
        raise TaskLoadError(f"{file}: no such file")
    module_name = path.stem
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskLoadError(f"cannot load {file} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - user code: report, never crash
        raise TaskLoadError(f"failed to import {file}: {type(exc).__name__}: {exc}") from exc
    from flyte._task import TaskTemplate

    task = getattr(module, task_name, None)
    if not isinstance(task, TaskTemplate):
        available = sorted(k for k, v in vars(module).items() if isinstance(v, TaskTemplate))
        raise TaskLoadError(f"{file} has no task named {task_name!r}; tasks: {', '.join(available) or 'none'}")
    return task


def code_version(root_dir: pathlib.Path) -> str:
    """A version for the serialized task: a digest of the Python sources next to the task file."""
    digest = hashlib.sha256()
    for source in sorted(root_dir.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def serialize_task(task, *, project: str, domain: str, root_dir: pathlib.Path,
                   version: str | None = None) -> task_definition_pb2.TaskSpec:
    from flyte._internal.runtime.task_serde import translate_task_to_wire
    from flyte.models import SerializationContext

    context = SerializationContext(
        version=version or code_version(root_dir), project=project, domain=domain, org="local", root_dir=root_dir)
    return translate_task_to_wire(task, context)


def _parse_value(raw: str, annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "types.UnionType"):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if raw.lower() in ("none", "null") and len(args) < len(typing.get_args(annotation)):
            return None
        annotation = args[0] if len(args) == 1 else annotation
    if annotation is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "y"):
            return True
        if lowered in ("false", "0", "no", "n"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if annotation is int:
        return int(raw)
    if annotation is float:
        return float(raw)
    if annotation is str:
        return raw
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("the JSON value is nested too deeply") from None


def inputs_from_strings(task, raw: dict[str, str]) -> common_pb2.Inputs:
    """Convert ``--name value`` pairs to the task's Inputs, checking names, types and required inputs."""
    from flyte._internal.runtime.convert import convert_from_native_to_inputs

    interface = task.native_interface
    unknown = sorted(set(raw) - set(interface.inputs))
    if unknown:
        raise ValueError(f"unknown input(s) {', '.join(unknown)}; {task.name} takes: "
                         f"{', '.join(interface.inputs) or 'no inputs'}")
    values: dict[str, Any] = {}
    for name, (annotation, _default) in interface.inputs.items():
        if name in raw:
            try:
                values[name] = _parse_value(raw[name], annotation)
            except ValueError as exc:
                raise ValueError(f"--{name}: {exc}") from exc
    missing = [n for n in interface.required_inputs() if n not in values]
    if missing:
        raise ValueError(f"missing required input(s): {', '.join('--' + m for m in missing)}")

    async def convert() -> common_pb2.Inputs:
        try:
            return (await convert_from_native_to_inputs(interface, **values)).proto_inputs
        except (TypeError, ValueError, AssertionError, RecursionError) as exc:  # the SDK's type checks
            raise ValueError("; ".join(line.strip() for line in str(exc).splitlines() if line.strip())) from None

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(convert())
    import concurrent.futures  # called from inside a loop: convert on a private loop in a thread

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(convert())).result()
