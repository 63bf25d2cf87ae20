"""Bridge to the official ``flyte`` SDK: load a task from a Python file, serialize it to a
``flyteidl2.task.TaskSpec`` with the SDK's own serializer, and turn command-line values into inputs.

The SDK is imported lazily so the engine runs without it (e.g. for ``core-sleep`` tasks).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.util
import inspect
import pathlib
import re
import sys
import typing
from typing import Any

from flyteidl2.task import common_pb2, task_definition_pb2


class TaskLoadError(Exception):
    pass


def load_tasks(file: str | pathlib.Path, environment: str | None = None) -> list:
    """Every task ``file`` defines (those of the task environment named ``environment``, if given)."""
    from flyte._task import TaskTemplate

    module = _load_module(file)
    tasks = [v for v in vars(module).values() if isinstance(v, TaskTemplate)]
    if environment is not None:
        tasks = [t for t in tasks if getattr(t, "parent_env_name", None) == environment]
        if not tasks:
            envs = sorted({getattr(t, "parent_env_name", None) or "-" for t in vars(module).values()
                           if isinstance(t, TaskTemplate)})
            raise TaskLoadError(f"{file} has no task environment {environment!r} (environments: {', '.join(envs)})")
    return tasks


def deployed_task(spec: task_definition_pb2.TaskSpec):
    """A stand-in for a registered task's Python object: what parsing its inputs needs (the SDK's guessed
    interface from the spec, as ``flyte run deployed-task`` builds it)."""
    import types

    from flyte.types import guess_interface

    _register_dataframe_handlers()  # a DataFrame input's type is known only once pandas/pyarrow handlers are
    return types.SimpleNamespace(name=spec.task_template.id.name, docs=None, func=None,
                                 native_interface=guess_interface(spec.task_template.interface, spec.default_inputs))


def _register_dataframe_handlers() -> None:
    """The SDK registers its pandas and pyarrow DataFrame handlers only once those libraries are imported
    (a task module does that); a registered task's interface is read without its module."""
    for library in ("pandas", "pyarrow"):
        with contextlib.suppress(ImportError):
            importlib.import_module(library)
    from flyte.io._dataframe import lazy_import_dataframe_handler

    lazy_import_dataframe_handler()


def load_task(file: str | pathlib.Path, task_name: str):
    """Import ``file`` as a module (its directory on sys.path, as ``flyte run`` does) and return the task."""
    from flyte._task import TaskTemplate

    module = _load_module(file)
    task = getattr(module, task_name, None)
    if not isinstance(task, TaskTemplate):
        available = sorted(k for k, v in vars(module).items() if isinstance(v, TaskTemplate))
        raise TaskLoadError(f"{file} has no task named {task_name!r}; tasks: {', '.join(available) or 'none'}")
    return task


def _load_module(file: str | pathlib.Path):
    """Import ``file`` as a module (its directory on sys.path while it imports, as ``flyte run`` does)."""
    path = pathlib.Path(file).resolve()
    if not path.is_file():
        raise TaskLoadError(f"{file}: no such file")
    module_name = path.stem
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise TaskLoadError(f"cannot load {file} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # its directory on sys.path while it imports (its sibling modules), not after: a file there named like
    # a library (a bench's requests.py) would shadow that library for the rest of the process
    added = str(path.parent) not in sys.path
    if added:
        sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - user code: report, never crash
        raise TaskLoadError(f"failed to import {file}: {type(exc).__name__}: {exc}") from exc
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(path.parent))
    return module


def code_version(root_dir: pathlib.Path) -> str:
    """A version for the serialized task: a digest of the Python sources next to the task file."""
    digest = hashlib.sha256()
    for source in sorted(root_dir.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def serialize_task(task, *, project: str, domain: str, root_dir: pathlib.Path,
                   version: str | None = None, with_defaults: bool = False,
                   bundle: tuple[str, str] | None = None) -> task_definition_pb2.TaskSpec:
    """The task's TaskSpec; ``with_defaults``: with its inputs' default values (``default_inputs``), as
    ``flyte deploy`` registers them, so a run of the registered task can leave them out; ``bundle``: (the
    stored code bundle, its digest) its ``a0`` fetches (``--tgz``), as a cluster's fast registration."""
    from flyte._internal.runtime.task_serde import translate_task_to_wire
    from flyte.models import CodeBundle, SerializationContext

    code_bundle = CodeBundle(computed_version=bundle[1], tgz=bundle[0], destination=".") if bundle else None
    context = SerializationContext(
        version=version or (bundle[1] if bundle else code_version(root_dir)), project=project, domain=domain,
        org="local", root_dir=root_dir, code_bundle=code_bundle)
    defaults = _in_scratch_context(lambda: _default_inputs(task)) if with_defaults else None
    return translate_task_to_wire(task, context, default_inputs=defaults)


def task_triggers(task, spec: task_definition_pb2.TaskSpec) -> list[bytes]:
    """The task's triggers (``triggers=``), serialized by the SDK's own ``to_task_trigger``."""
    if not getattr(task, "triggers", None):
        return []
    from flyte._internal.runtime.trigger_serde import to_task_trigger

    async def serialize():
        return [(await to_task_trigger(t, task.name, spec.task_template.interface.inputs,
                                       list(spec.default_inputs))).SerializeToString() for t in task.triggers]

    return _in_scratch_context(serialize)


async def _default_inputs(task):
    from flyte._internal.runtime.convert import convert_upload_default_inputs

    return await convert_upload_default_inputs(task.interface)


def _in_scratch_context(make_coroutine, directory: str | None = None):
    """Run an SDK coroutine with ``directory`` as its raw-data path (for transformers that ask for one), or a
    throwaway one."""
    import tempfile

    from flyte._context import internal_ctx, root_context_var
    from flyte.models import RawDataPath

    async def run(directory: str):
        token = root_context_var.set(internal_ctx().new_raw_data_path(RawDataPath(path=directory)))
        try:
            return await make_coroutine()
        finally:
            root_context_var.reset(token)

    def in_directory():
        if directory is not None:
            return asyncio.run(run(directory))
        with tempfile.TemporaryDirectory(prefix="taskdeck-scratch-") as scratch:
            return asyncio.run(run(scratch))

    return _blocking(in_directory)


def _blocking(work):
    """``work()`` (which runs its own event loop) from sync code, on a thread when a loop runs here already."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return work()
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


class InputError(ValueError):
    """A task input that is missing, unknown or not of its type: one line, naming the input."""


class HelpRequested(Exception):
    """``--help`` was asked for: the task's inputs, as ``flyte run FILE TASK --help`` lists them."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class _LocalRun:
    """What the SDK's parameter types look at to take paths as they are (``flyte run --local``); the
    engine then stores the files (``staged_files``) instead of the SDK uploading them."""

    class run_args:
        local = True


def inputs_command(task, prog: str):
    """A click command whose options are the task's inputs, built by the SDK's own ``to_click_option``:
    the same types, converters, defaults and help as ``flyte run``. An input named ``help`` leaves only
    ``-h`` to ask for help."""
    import click
    from flyte._internal.runtime.types_serde import transform_native_to_typed_interface
    from flyte.cli._params import to_click_option
    from flyte.cli._run import _resolve_default_val

    interface = transform_native_to_typed_interface(task.native_interface)
    params = []
    for entry in interface.inputs.variables if interface is not None else []:
        python_type, marker = task.native_interface.inputs[entry.key]
        default = _resolve_default_val(task.native_interface, entry.key, marker, python_type)
        option = to_click_option(entry.key, entry.value, python_type, default)
        if not isinstance(option.type, click.types.BoolParamType):  # click reads flags off the type itself
            option.type = _naming_errors_type()(option.type)
        params.append(option)
    summary, described = docstring_help(task)
    for option in params:
        if not option.help and option.name in described:
            option.help = described[option.name]
    help_names = [n for n in ("-h", "--help") if n.lstrip("-") not in task.native_interface.inputs]

    def ask_for_help(ctx, _param, wanted):
        if wanted and not ctx.resilient_parsing:
            raise HelpRequested(ctx.get_help())

    params.append(click.Option(help_names, is_flag=True, expose_value=False, is_eager=True, callback=ask_for_help,
                               help="Show the task's inputs and exit."))
    docs = (task.docs.__help__str__() if getattr(task, "docs", None) else None) or summary
    return click.Command(prog, params=params, help=docs, add_help_option=False, no_args_is_help=False)


_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+):\s*(.*)$")
_GOOGLE_ARG = re.compile(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$")


def docstring_help(task) -> tuple[str | None, dict[str, str]]:
    """(the description, {input: its help}) from the task function's docstring, Sphinx (``:param x:``) or
    Google style (``Args:``); the SDK leaves both out of its help."""
    func = getattr(task, "func", None)
    doc = inspect.getdoc(func) if func is not None else None
    if not doc:
        return None, {}
    description: list[str] = []
    params: dict[str, str] = {}
    current: str | None = None
    in_args = False
    for line in doc.splitlines():
        stripped = line.strip()
        sphinx = _SPHINX_PARAM.match(stripped)
        if sphinx:
            current, in_args = sphinx.group(1), False
            params[current] = sphinx.group(2)
            continue
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args, current = True, None
            continue
        if in_args and stripped and not line.startswith((" ", "\t")):
            in_args, current = False, None  # the next section
        if in_args and (google := _GOOGLE_ARG.match(stripped)) and google.group(1) in task.native_interface.inputs:
            current = google.group(1)
            params[current] = google.group(2)
            continue
        if stripped.startswith(":") or (stripped.endswith(":") and not line.startswith(" ") and stripped[:-1].isalpha()):
            current, in_args = None, stripped.lower() in ("args:", "arguments:", "parameters:")
            continue
        if current is not None and stripped:
            params[current] = f"{params[current]} {stripped}".strip()
        elif current is None and not in_args and not params:
            description.append(line)
    text = "\n".join(description).strip()
    return text or None, {k: v for k, v in params.items() if v}


@functools.cache
def _naming_errors_type():
    import click

    class NamingErrors(click.ParamType):
        """The SDK's type, with any error it raises reported as a bad value of the option (some of its
        converters raise a plain ValueError, which would not say which input was wrong)."""

        def __init__(self, inner: click.ParamType):
            self.inner = inner
            self.name = inner.name

        def get_metavar(self, param, ctx):
            return self.inner.get_metavar(param, ctx)

        def convert(self, value, param, ctx):
            try:
                return self.inner.convert(value, param, ctx)
            except click.BadParameter:
                raise
            except RecursionError:
                self.fail("the value is nested too deeply", param, ctx)
            except Exception as exc:  # noqa: BLE001 - the SDK's converters raise what they raise
                self.fail(str(exc) or type(exc).__name__, param, ctx)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    return NamingErrors


def parse_inputs(task, argv: list[str], prog: str) -> dict[str, Any]:
    """Native values of the task's inputs from ``--name value`` arguments, parsed as ``flyte run`` parses
    them; InputError in one line for a bad value, HelpRequested for ``--help``."""
    import click

    command = inputs_command(task, prog)
    try:  # the SDK's converters print warnings: to stderr, stdout may be JSON
        with contextlib.redirect_stdout(sys.stderr), command.make_context(prog, list(argv), obj=_LocalRun()) as ctx:
            values = dict(ctx.params)
    except click.ClickException as exc:
        raise InputError(_one_line(exc.format_message())) from None
    missing = [p for p in command.params if isinstance(p, click.Option) and p.required
               and values.get(p.name) is None]
    if missing:  # as flyte run says it
        ctx = click.Context(command, info_name=prog, obj=_LocalRun())
        raise InputError("Missing required parameter(s): " + ", ".join(
            f"--{p.name} (type: {p.type.get_metavar(p, ctx) or p.type.name.upper()})" for p in missing))
    return {k: v for k, v in values.items() if v is not None or k in task.native_interface.required_inputs()
            or _optional(task.native_interface.inputs[k][0])}


def _optional(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines)


def local_files(values: Any) -> list[str]:
    """Local paths the inputs name through flyte.io File, Dir or DataFrame values, at any depth."""
    found: list[str] = []
    _walk(values, lambda path: found.append(path) or path)
    return found


def with_staged_files(values: Any, staged: dict[str, str]) -> Any:
    """The inputs with each local path replaced by where the engine stored that file."""
    return _walk(values, lambda path: staged.get(path, path))


def _walk(value: Any, swap):
    import dataclasses

    from flyte.io import DataFrame, Dir, File

    if isinstance(value, (File, Dir)):
        path = str(value.path)
        if _is_local(path):
            new = swap(path)
            return value.model_copy(update={"path": new}) if new != path else value
        return value
    if isinstance(value, DataFrame):
        uri = str(value.uri or "")
        if uri and _is_local(uri):
            new = swap(uri)
            return value.model_copy(update={"uri": new}) if new != uri else value
        return value
    if isinstance(value, dict):
        return {k: _walk(v, swap) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, swap) for v in value]
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_walk(v, swap) for v in value))
    if isinstance(value, tuple):
        return tuple(_walk(v, swap) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _walk(getattr(value, f.name), swap) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    if hasattr(value, "model_fields") and hasattr(value, "model_copy") and not isinstance(value, type):
        return value.model_copy(update={name: _walk(getattr(value, name), swap) for name in value.model_fields})
    return value


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def inputs_from_values(task, values: dict[str, Any], scratch: str | None = None) -> common_pb2.Inputs:
    """The task's Inputs from native values, by the SDK's type engine (a type mismatch is an InputError).

    Some transformers write data while converting (a DataFrame from a local CSV is copied to the raw-data
    path): it goes to ``scratch``, whose files the caller stores in the engine (``uris_under``) before
    the directory goes; without ``scratch``, what is written is thrown away (a check of the values)."""
    from flyte._internal.runtime.convert import convert_from_native_to_inputs

    interface = task.native_interface

    async def convert() -> common_pb2.Inputs:
        try:
            return (await convert_from_native_to_inputs(interface, **values)).proto_inputs
        except (TypeError, ValueError, AssertionError, RecursionError) as exc:  # the SDK's type checks
            raise InputError("; ".join(line.strip() for line in str(exc).splitlines() if line.strip())) from None

    return _in_scratch_context(convert, scratch)


def uris_under(inputs: common_pb2.Inputs, directory: str) -> list[str]:
    """Blob and DataFrame URIs of the inputs that lie in ``directory`` (what the conversion wrote)."""
    found: list[str] = []
    _each_uri(inputs, lambda uri: found.append(uri) or uri, directory)
    return found


def with_uris_replaced(inputs: common_pb2.Inputs, mapping: dict[str, str]) -> common_pb2.Inputs:
    _each_uri(inputs, lambda uri: mapping.get(uri, uri), "")
    return inputs


def _each_uri(inputs: common_pb2.Inputs, swap, directory: str) -> None:
    from engine.literals import rewrite_uris

    inside = directory.rstrip("/") + "/"
    for named in inputs.literals:
        rewrite_uris(named.value, lambda uri: swap(uri) if not directory or uri.startswith(inside) else uri)


async def stored_inputs(task, values: dict[str, Any], stage) -> common_pb2.Inputs:
    """The task's Inputs with each local File/Dir/DataFrame path stored first (``await stage(absolute path)``
    returns where the engine keeps it), and whatever the SDK writes while converting (a DataFrame's copy)
    stored the same way, so no input names a file that goes away."""
    import tempfile

    staged = {path: await stage(str(pathlib.Path(path.removeprefix("file://")).resolve()))
              for path in local_files(values)}
    with tempfile.TemporaryDirectory(prefix="taskdeck-inputs-") as scratch:
        inputs = inputs_from_values(task, with_staged_files(values, staged), scratch)
        written = {uri: await stage(uri) for uri in uris_under(inputs, scratch)}
    return with_uris_replaced(inputs, written)


def inputs_from_strings(task, raw: dict[str, str]) -> common_pb2.Inputs:
    """Inputs from ``{name: text}`` as ``flyte run`` would take ``--name text`` (a bool's text says whether
    to give its flag): for callers that hold values rather than a command line."""
    argv: list[str] = []
    unknown = sorted(set(raw) - set(task.native_interface.inputs))
    if unknown:
        raise InputError(f"unknown input(s) {', '.join(unknown)}; {task.name} takes: "
                         f"{', '.join(task.native_interface.inputs) or 'no inputs'}")
    for name, text in raw.items():
        annotation, default = task.native_interface.inputs[name]
        if annotation is bool:
            wanted = str(text).lower() in ("true", "1", "yes", "y")
            if wanted:
                argv.append(f"--{name}")
            elif default is True:
                argv.append(f"--no-{name}")
            continue
        argv += [f"--{name}", str(text)]
    return inputs_from_values(task, parse_inputs(task, argv, task.name))
