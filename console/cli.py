"""The ``taskdeck`` command.

``taskdeck``                         the console (on the engine serving the data directory, or its own)
``taskdeck --headless``              the engine alone, one line per action event
``taskdeck run FILE.py TASK --x 1``  run a task and print its outputs (``--tui``: in the console)
``taskdeck get runs|actions RUN|events RUN``, ``abort``, ``retry``, ``signal``, ``cache``, ``token``

Every command goes through the client interface (``engine/client``): to the engine serving the data
directory (or ``--engine URL``), with its token. Reads of a directory no engine serves are made from its
database, read-only; a command that changes something starts an engine in the background when none
serves (it stops by itself once idle). Global options (``--data-dir``, ``--engine``, ``--json``, ...) go
before or after the command; for ``run``, before ``TASK``: after it everything is a task input.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import getpass
import hashlib
import json
import logging
import os
import pathlib
import signal
import sys
import time
from typing import Any

from engine.client import (
    ActionPhase,
    AlreadyExistsError,
    CredentialError,
    DataDirError,
    EngineAlreadyRunningError,
    EngineClient,
    EngineUnavailableError,
    InvalidRunError,
    PermissionDeniedError,
    RunNotFoundError,
    StorageUnavailableError,
    check_action_name,
    check_run_id,
    check_run_name,
    connect,
    default_data_dir,
    ensure_credential,
    read_credential,
    strict_dumps,
)
from engine.client.remote import RemoteClient
from console import flyte_config, k8s_command

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class CliError(Exception):
    pass


# --------------------------------------------------------------------------- output
def _duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _first_line(error: dict | None) -> str:
    if not error:
        return ""
    text = f"{error.get('code') or error.get('kind') or 'error'}: {error.get('message', '')}"
    return text.splitlines()[0][:80] if text else ""


def print_table(rows: list[list[str]], headers: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def print_result(result: dict, as_json: bool) -> int:
    if as_json:
        print(strict_dumps({k: result.get(k) for k in ("run", "phase", "outputs", "error")}))
    else:
        print(f"run {result['run']}: {result['phase']}")
        for name, value in (result.get("outputs") or {}).items():
            print(f"  {name} = {json.dumps(value)}")
        if result.get("error"):
            error = result["error"]
            print(f"  error [{error.get('kind') or '-'}] {error.get('code')}: {error.get('message')}")
    return EXIT_OK if result.get("phase") == ActionPhase.SUCCEEDED.name else EXIT_FAILED


# --------------------------------------------------------------------------- reaching an engine
ENGINE_OPTIONS = (  # (dest, flag): options a command passes on to an engine it starts
    ("max_system_failures", "--max-system-failures"), ("max_processes", "--max-processes"),
    ("gc_ttl", "--gc-ttl"), ("share_group", "--share-group"), ("advertise_host", "--advertise-host"),
    ("max_body_bytes", "--max-body-bytes"), ("task_start", "--task-start"), ("reuse", "--reuse"),
    ("max_clusters", "--max-clusters"), ("k8s_config", "--k8s-config"), ("backend", "--backend"),
    ("kubeconfig", "--kubeconfig"), ("context", "--context"), ("namespace", "--namespace"),
    ("database", "--database"), ("tasks_on", "--tasks-on"), ("advertise_url", "--advertise-url"),
    ("lease_seconds", "--lease-seconds"), ("raw_data", "--raw-data"), ("listen", "--listen"),
)
REPEATED_ENGINE_OPTIONS = (("quota", "--quota"), ("queue_limit", "--queue-limit"))


def engine_args(args: argparse.Namespace, allow: list[pathlib.Path] = ()) -> list[str]:
    out: list[str] = []
    for dest, flag in ENGINE_OPTIONS:
        value = getattr(args, dest, None)
        if value is not None and value != DEFAULTS.get(dest):
            out += [flag, str(value)]
    if getattr(args, "in_cluster", False):
        out.append("--in-cluster")
    for name in args.pass_env or ():
        out += ["--pass-env", name]
    for task_type, plugin_id in args.plugin_for or ():
        out += ["--plugin-for", f"{task_type}={plugin_id}"]
    for dest, flag in REPEATED_ENGINE_OPTIONS:
        for item in getattr(args, dest, None) or ():
            out += [flag, item]
    for directory in [*(args.allow_dir or ()), *allow]:
        out += ["--allow-dir", str(directory)]
    return out


def engine_config(args: argparse.Namespace):
    from engine.engine import EngineConfig

    sized = {"max_processes": args.max_processes} if args.max_processes else {}
    if getattr(args, "lease_seconds", None):
        sized["lease_seconds"] = args.lease_seconds
    if getattr(args, "listen", None):
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            raise CliError(f"--listen takes HOST:PORT (0.0.0.0:8080), not {args.listen!r}")
        sized.update(host=host.strip("[]"), port=int(port))
    return EngineConfig(**sized, data_dir=args.data_dir, max_system_failures=args.max_system_failures,
                        gc_ttl_seconds=args.gc_ttl,
                        task_start=args.task_start, reuse=args.reuse == "on",
                        plugin_for_task_types=dict(args.plugin_for or ()), max_clusters=args.max_clusters,
                        k8s_config=args.k8s_config,
                        project_quotas=parse_limits(args.quota or (), "--quota"),
                        queue_quotas=parse_limits(args.queue_limit or (), "--queue-limit"),
                        max_body_bytes=args.max_body_bytes, share_group=args.share_group,
                        pass_env=tuple(args.pass_env or ()), advertise_host=args.advertise_host,
                        allowed_code_dirs=tuple(args.allow_dir) if args.allow_dir else None,
                        backend=args.backend, kubeconfig=args.kubeconfig, kube_context=args.context,
                        namespace=args.namespace, in_cluster=args.in_cluster,
                        tasks_on=args.tasks_on, advertise_url=args.advertise_url, raw_data=args.raw_data,
                        database=args.database or (os.environ.get("TASKDECK_DATABASE") or None
                                                   if args.backend == "kubernetes" else None))


def parse_limits(items, flag: str) -> dict[str, int]:
    from engine.quotas import QuotaConfigError, parse_limits as parse

    try:
        return parse(list(items), flag)
    except QuotaConfigError as exc:
        raise CliError(str(exc)) from None


def build_engine(engine_class, args: argparse.Namespace):
    from engine.errors import ConfigFileError, PluginNotFoundError

    try:
        return engine_class(engine_config(args))
    except PluginNotFoundError as exc:
        raise CliError(f"--plugin-for: {exc}") from None
    except ConfigFileError as exc:
        raise CliError(f"--k8s-config: {exc}") from None
    except ValueError as exc:  # a setting the engine refuses (--namespace), or a cluster it cannot configure
        raise CliError(str(exc)) from None


def plugin_for(text: str) -> tuple[str, str]:
    task_type, sep, plugin_id = text.partition("=")
    if not sep or not task_type.strip() or not plugin_id.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not TASK_TYPE=PLUGIN_ID")
    return task_type.strip(), plugin_id.strip()


def remote(args: argparse.Namespace) -> RemoteClient | None:
    """The engine serving the data directory (or at --engine), or None."""
    return connect(args.data_dir, url=args.engine, token_file=args.token_file)


@contextlib.asynccontextmanager
async def reader(args: argparse.Namespace):
    """A client to read with: the live engine, else the data directory's database (read-only)."""
    client = remote(args)
    if client is not None:
        try:
            yield client
        finally:
            await client.close()
        return
    if not (args.data_dir / "taskdeck.db").exists():
        raise CliError(f"no TaskDeck data in {args.data_dir} (no engine serves it and it holds no database); "
                       "pass the right --data-dir")
    from engine.client.local import read_only_client  # the embedded store: only when no engine serves

    async with read_only_client(args.data_dir) as client:
        yield client


@contextlib.asynccontextmanager
async def writer(args: argparse.Namespace, allow: list[pathlib.Path] = ()):
    """A client that can change runs: the live engine, else one started in the background for this."""
    client = remote(args)
    if client is None:
        from console.background import BackgroundEngineError, idle_seconds, start_background_engine

        try:
            url = await asyncio.to_thread(start_background_engine, args.data_dir, engine_args(args, allow))
        except BackgroundEngineError as exc:
            raise CliError(str(exc)) from None
        if not args.json:
            say(f"started an engine in the background at {url} (it stops after {idle_seconds():g} s idle; "
                f"log: {args.data_dir / 'engine.log'})")
        client = connect(args.data_dir, url=url, token_file=args.token_file)
    try:
        yield client
    finally:
        await client.close()


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- commands
class PreparedRun:
    """A task loaded and serialized, and its inputs parsed (files not yet stored)."""

    def __init__(self, task, spec: bytes, values: dict, code_dir: str, checked: bytes, task_file: str = ""):
        self.task, self.spec, self.values, self.code_dir = task, spec, values, code_dir
        self.checked = checked  # the inputs as given: converted once up front, so a bad one starts nothing
        self.queue = getattr(task, "queue", None) or ""  # the task's queue=, for queue limits
        self.task_file = task_file

    async def bundled_spec(self, client: EngineClient, project: str, domain: str) -> bytes:
        """The task's spec with its code bundle (the modules it loaded from its directory) stored in the engine
        first: its actions fetch the bundle (``--tgz``) and work in their own directories, as on a cluster."""
        import tempfile

        from engine.code_bundle import loaded_files, make_bundle
        from engine.sdk import serialize_task

        root = pathlib.Path(self.code_dir)
        with tempfile.TemporaryDirectory(prefix="taskdeck-bundle-") as scratch:
            try:
                bundle, digest = make_bundle(loaded_files(root, pathlib.Path(self.task_file)), root,
                                             pathlib.Path(scratch))
            except (OSError, ValueError) as exc:
                raise CliError(f"cannot bundle the task's code: {exc}") from None
            stored = await client.stage_input(str(bundle), project=project, domain=domain)
        spec = serialize_task(self.task, project=project, domain=domain, root_dir=root, bundle=(stored, digest))
        return spec.SerializeToString()

    async def inputs(self, client: EngineClient, project: str, domain: str) -> bytes:
        """The inputs, with each local File/Dir/DataFrame path stored in the engine's upload store first."""
        from engine.sdk import InputError, local_files, stored_inputs

        if not local_files(self.values):
            return self.checked

        async def stage(path: str) -> str:
            try:
                return await client.stage_input(path, project=project, domain=domain)
            except InvalidRunError as exc:
                raise CliError(f"input file {path}: {exc}") from None

        try:
            return (await stored_inputs(self.task, self.values, stage)).SerializeToString()
        except InputError as exc:
            raise CliError(str(exc)) from None


def _prepare_run(args: argparse.Namespace) -> PreparedRun:
    """Load and serialize the task and parse its inputs as `flyte run` does (`--help` lists them)."""
    from engine.sdk import HelpRequested, InputError, TaskLoadError, inputs_from_values, load_task, local_files, \
        parse_inputs, serialize_task

    file = pathlib.Path(args.file)
    check_run_id(args.project, args.domain, "r" if args.name is None else args.name, new_run=args.name is not None)
    try:
        task = load_task(file, args.task)
        task_args = list(args.task_args)
        if task_args[:1] == ["--"]:
            task_args = task_args[1:]
        if not args.double_dash:  # after --, everything is a task input
            for flag in ("json", "tui"):  # run flags may trail the inputs unless the task has such an input
                if f"--{flag}" in task_args and flag not in task.native_interface.inputs:
                    task_args.remove(f"--{flag}")
                    setattr(args, flag, True)
        values = parse_inputs(task, task_args, f"taskdeck run {args.file} {args.task}")
        for name, value in values.items():
            for path in local_files(value):
                if not os.path.exists(path.removeprefix("file://")):
                    raise InputError(f"--{name}: no such file or directory: {path}")
        checked = inputs_from_values(task, values).SerializeToString()
        spec = serialize_task(task, project=args.project, domain=args.domain, root_dir=file.resolve().parent)
    except HelpRequested as shown:
        print(shown.text, end="" if shown.text.endswith("\n") else "\n")
        raise SystemExit(EXIT_OK) from None
    except (TaskLoadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    return PreparedRun(task, spec.SerializeToString(), values, str(file.resolve().parent), checked, str(file))


DEPLOYED = "deployed-task"  # `taskdeck run deployed-task NAME[@VERSION]`, as `flyte run deployed-task`


def cmd_run(args: argparse.Namespace) -> int:
    if args.file == DEPLOYED:
        return asyncio.run(_run_and_wait(args, None))
    prepared = _prepare_run(args)
    if args.tui:
        return _run_in_console(args, prepared)
    return asyncio.run(_run_and_wait(args, prepared))


async def _submit_deployed(args: argparse.Namespace, client: EngineClient):
    """A run of a registered task: its inputs parsed from the registered interface, files stored first."""
    from flyteidl2.task import task_definition_pb2

    from engine.sdk import HelpRequested, InputError, deployed_task, inputs_from_values, parse_inputs

    name, _, version = args.task.partition("@")
    record = await client.get_task(name, project=args.project, domain=args.domain, version=version or None)
    spec = task_definition_pb2.TaskSpec()
    spec.ParseFromString(base64.b64decode(record["taskSpec"]))
    task = deployed_task(spec)
    task_args = [a for a in args.task_args if a != "--"] if args.task_args[:1] == ["--"] else list(args.task_args)
    try:
        # off the loop: the SDK reads registered defaults with asyncio.run
        values = await asyncio.to_thread(parse_inputs, task, task_args, f"taskdeck run {DEPLOYED} {args.task}")
        checked = inputs_from_values(task, values).SerializeToString()
    except HelpRequested as shown:
        print(shown.text, end="" if shown.text.endswith("\n") else "\n")
        raise SystemExit(EXIT_OK) from None
    except InputError as exc:
        raise CliError(str(exc)) from None
    prepared = PreparedRun(task, b"", values, "", checked)
    inputs = await prepared.inputs(client, args.project, args.domain)
    return await client.run_task(name, inputs, project=args.project, domain=args.domain,
                                 version=record["version"], run_name=args.name)


async def _run_and_wait(args: argparse.Namespace, prepared: PreparedRun | None) -> int:
    async with writer(args, allow=[pathlib.Path(prepared.code_dir)] if prepared else []) as client:
        try:
            if prepared is None:
                run = await _submit_deployed(args, client)
            else:
                inputs = await prepared.inputs(client, args.project, args.domain)
                spec = await prepared.bundled_spec(client, args.project, args.domain)
                run = await client.create_run(spec, inputs, project=args.project, domain=args.domain,
                                              name=args.name, queue=prepared.queue)
        except AlreadyExistsError:
            raise CliError(f"a run named {args.name!r} already exists; choose another --run-name") from None
        if not args.json:
            say(f"run {run.run_name} started on the {client.description}")
        interrupted = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, interrupted.set)
        try:
            while True:
                wait = asyncio.ensure_future(client.wait(run.run_name, 30))
                stop = asyncio.ensure_future(interrupted.wait())
                await asyncio.wait({wait, stop}, return_when=asyncio.FIRST_COMPLETED)
                if interrupted.is_set():
                    wait.cancel()
                    say(f"interrupted: aborting run {run.run_name}")
                    await client.abort(run.run_name, reason="interrupted from the command line")
                    print_result(await client.wait(run.run_name, 30), args.json)
                    return EXIT_INTERRUPTED
                stop.cancel()
                result = wait.result()
                if not result.get("timedOut"):
                    return print_result(result, args.json)
        except EngineUnavailableError as exc:
            raise EngineGone(f"{exc}; run {run.run_name} was not finished. Its task processes keep running, and "
                             "the next engine on this data directory adopts them (`taskdeck get runs`)") from None
        finally:
            loop.remove_signal_handler(signal.SIGINT)


class EngineGone(Exception):
    """The engine went away under a waiting command."""


def _log_to_file(data_dir: pathlib.Path) -> None:
    """The console draws on the terminal: engine log lines go to <data>/console.log instead."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(data_dir / "console.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def _console(args: argparse.Namespace, submit=None) -> tuple[int, Any]:
    """The console on the engine serving the data directory (attached), else on one of its own."""
    from console.app import TaskDeckApp

    client = remote(args)
    engine = None
    if client is None:
        from engine.engine import Engine

        _log_to_file(args.data_dir)
        engine = build_engine(Engine, args)
    app = TaskDeckApp(client=client, engine=engine, read_only=args.read_only, ascii_only=args.ascii,
                      submit=submit, engine_args=engine_args(args))
    return_code = app.run()
    return (return_code if isinstance(return_code, int) else EXIT_OK), app


def cmd_console(args: argparse.Namespace) -> int:
    code, _ = _console(args)
    return code


def _run_in_console(args: argparse.Namespace, prepared: PreparedRun) -> int:
    """Open the console on a new run; after it closes, say how the run stands (exit code as `run`)."""

    async def submit(client: EngineClient) -> str:
        inputs = await prepared.inputs(client, args.project, args.domain)
        spec = await prepared.bundled_spec(client, args.project, args.domain)
        run = await client.create_run(spec, inputs, project=args.project, domain=args.domain, name=args.name,
                                      queue=prepared.queue)
        return run.run_name

    code, app = _console(args, submit)
    run_name = getattr(app, "submitted_run", None)
    if code != EXIT_OK or run_name is None:
        return code

    async def report() -> int:
        async with reader(args) as client:
            result = await client.result(run_name)
        if not ActionPhase[result["phase"]].is_terminal:
            print(f"run {run_name}: {result['phase']} (still going; `taskdeck get actions {run_name}`)")
            return EXIT_OK
        return print_result(result, args.json)

    return asyncio.run(report())


async def _headless(args: argparse.Namespace) -> int:
    from engine.engine import Engine
    from engine.headless import serve

    engine = build_engine(Engine, args)
    try:
        await engine.start()
    except (EngineAlreadyRunningError, DataDirError) as exc:
        raise CliError(str(exc)) from None
    return await serve(engine, idle_exit=args.idle_exit)


def cmd_get(args: argparse.Namespace) -> int:
    if args.kind == "report" and args.run and "/" in args.run:  # RUN/ACTION, as render takes it
        args.run, _, args.action = args.run.partition("/")
    if args.run:
        check_run_name(args.run)
    check_action_name(args.action)
    if args.kind == "workers":
        return asyncio.run(_get_workers(args))
    if args.kind == "tasks":
        return asyncio.run(_list(args, lambda client: client.list_tasks(args.project, args.domain),
                                 ["PROJECT", "DOMAIN", "TASK", "VERSION", "DEPLOYED"],
                                 lambda r: [r["project"], r["domain"], r["name"], r["version"],
                                            time.strftime("%Y-%m-%d %H:%M", time.localtime(r["createdAt"]))]))
    if args.kind != "runs" and not args.run:
        raise CliError(f"usage: taskdeck get {args.kind} RUN")
    return asyncio.run(_get(args))


async def _get_workers(args: argparse.Namespace) -> int:
    """The live engine's reusable workers (by pool) and fork servers: only a running engine has any."""
    client = remote(args)
    if client is None:
        say(f"no engine serves {args.data_dir}: no workers run")
        data = {"pools": [], "forkServers": []}
    else:
        try:
            data = await client.list_workers()
        finally:
            await client.close()
    if args.json:
        print(strict_dumps(data, indent=2))
        return EXIT_OK
    rows = []
    for pool in data["pools"]:
        size = f"{len(pool['workers'])}/{pool['minReplicas']}-{pool['maxReplicas']}x{pool['concurrency']}"
        for w in pool["workers"] or [{}]:
            rows.append([pool["environment"], pool["pool"], size, w.get("worker") or "-", str(w.get("pid") or "-"),
                         w.get("state") or "-", str(w.get("running", "-")), str(w.get("served", "-")),
                         str(pool["waiting"]), ((pool.get("lastError") or "").splitlines() or [""])[0][:80]])
    print_table(rows, ["ENVIRONMENT", "POOL", "WORKERS/MIN-MAXxCONC", "WORKER", "PID", "STATE", "RUNNING", "SERVED",
                       "WAITING", "ERROR"])
    servers = data["forkServers"]
    if servers:
        print()
        print_table([[z["key"], str(z.get("pid") or "-"), "alive" if z.get("alive") else "gone", str(z.get("forks")),
                      str(z.get("modules") or "-")] for z in servers], ["FORK SERVER", "PID", "STATE", "FORKS",
                                                                       "MODULES"])
    return EXIT_OK


async def _get(args: argparse.Namespace) -> int:
    async with reader(args) as client:
        if args.kind == "runs":
            rows = [r.to_json() for r in await client.list_runs(args.limit)]
            if not args.json:
                print_table([[r["run"], r.get("taskName") or "-", r["phase"], (r.get("startedAt") or "-")[:19],
                              _duration(r.get("durationMs")), str(r["attempts"]), _first_line(r.get("error"))]
                             for r in rows], ["RUN", "TASK", "PHASE", "STARTED", "DURATION", "ATTEMPTS", "ERROR"])
        elif args.kind == "report":
            return await _get_report(client, args)
        elif args.kind == "events":
            rows = [e.to_json() for e in await client.list_events(args.run, args.action)]
            if not args.json:
                print_table([[str(r["attempt"]), r["phase"], (r.get("updatedTime") or "-")[11:23],
                              _first_line(r.get("error")), "; ".join(r.get("reasons") or [])[:60],
                              (r.get("logs") or ["-"])[0]] for r in rows],
                            ["ATTEMPT", "PHASE", "TIME", "ERROR", "REASONS", "LOG"])
        else:
            rows = [a.to_json() for a in await client.list_actions(args.run)]
            if args.json:
                for row in rows:
                    row["taskAction"] = await client.task_action(args.run, row["name"])
            else:
                print_table([[r["name"], r.get("parent") or "-", r.get("shortName") or r.get("taskName") or "-",
                              r["phase"], str(r["attempts"]), r["cacheStatus"].replace("CACHE_", ""),
                              _duration(r.get("durationMs")), _first_line(r.get("error"))
                              or (f"aborted: {r['abortReason']}" if r.get("abortReason") else "")] for r in rows],
                            ["ACTION", "PARENT", "TASK", "PHASE", "ATTEMPTS", "CACHE", "DURATION", "ERROR"])
        if args.json:
            print(strict_dumps(rows, indent=2))
    return EXIT_OK


async def _get_report(client, args: argparse.Namespace) -> int:
    """Where an attempt's report (flyte.report, report=True) is, and what it says in text."""
    record = next((a for a in await client.get_actions(args.run, [args.action])), None)
    if record is None:
        raise CliError(f"action {args.action!r} not found in run {args.run!r}")
    io = await client.action_io(args.run, args.action, record.attempts or 1)
    if io.report is None:
        raise CliError(f"{args.run}/{args.action} has no report (its task does not set report=True, or it has "
                       "not flushed one yet)")
    if args.json:
        print(strict_dumps({"run": args.run, "action": args.action, "attempt": record.attempts or 1, **io.report},
                           indent=2))
    else:
        print(io.report["path"])
        if io.report["summary"]:
            print(f"  {io.report['summary']}")
    return EXIT_OK


def cmd_render(args: argparse.Namespace) -> int:
    """Print the object the Kubernetes backend would create for an action, as YAML (or --json)."""
    run, _, action = args.target.partition("/")
    action = action or "a0"
    check_run_name(run)
    check_action_name(action)

    async def go() -> int:
        client = remote(args)
        if client is None:
            raise CliError(f"no engine serves {args.data_dir}: rendering needs one (taskdeck --headless)")
        try:
            resource = await client.render(run, action)
        finally:
            await client.close()
        if args.json:
            print(strict_dumps(resource, indent=2))
        else:
            import yaml

            print(yaml.safe_dump(resource, sort_keys=False, default_flow_style=False), end="")
        return EXIT_OK

    return asyncio.run(go())


def cmd_logs(args: argparse.Namespace) -> int:
    """An attempt's log as the console shows it: a task process's, or on --tasks-on pods its Pod's."""
    check_run_name(args.run)
    action = args.action or "a0"
    check_action_name(action)

    async def go() -> int:
        async with reader(args) as client:
            found = await client.get_actions(args.run, [action])
            if not found:
                raise CliError(f"no action {action!r} in run {args.run!r}")
            attempt = args.attempt or max(found[0].attempts, 1)
            offset, finished = 0, False
            while True:
                chunk = await client.read_log(args.run, action, attempt, offset)
                for line in chunk.lines:
                    print(line.text, flush=True)
                offset = chunk.next_offset
                if chunk.next_offset < chunk.size:
                    continue  # more whole lines than one chunk holds
                if not args.follow or finished:
                    return EXIT_OK
                [now] = await client.get_actions(args.run, [action])
                finished = ActionPhase(now.phase).is_terminal  # one more read after the end, then stop
                if not finished:
                    await asyncio.sleep(0.5)

    return asyncio.run(go())


def cmd_abort(args: argparse.Namespace) -> int:
    check_run_name(args.run)
    action = args.action or "a0"
    check_action_name(action)

    async def go() -> int:
        async with writer(args) as client:
            await client.abort(args.run, action, args.reason)
        print(f"abort requested for {args.run}/{action}")
        return EXIT_OK

    return asyncio.run(go())


def cmd_retry(args: argparse.Namespace) -> int:
    check_run_name(args.run)
    action = args.action or "a0"
    check_action_name(action)

    async def go() -> int:
        async with writer(args) as client:
            names = await client.retry(args.run, action, who=getpass.getuser(), why=args.reason or "")
            say(f"retrying {args.run}: {', '.join(names)} (on the {client.description})")
            while True:
                result = await client.wait(args.run, 30, action)
                if not result.get("timedOut"):
                    return print_result(result, args.json)

    return asyncio.run(go())


def cmd_signal(args: argparse.Namespace) -> int:
    check_run_name(args.run)

    async def go() -> int:
        async with writer(args) as client:
            signalled = await client.signal(args.run, args.action, args.value, by=getpass.getuser())
        print(f"signalled {args.run}/{signalled} = {args.value}")
        return EXIT_OK

    return asyncio.run(go())


async def _list(args: argparse.Namespace, fetch, headers: list[str], cells) -> int:
    """Rows read through the client, as JSON with --json, else as a table."""
    async with reader(args) as client:
        rows = await fetch(client)
    if args.json:
        print(strict_dumps(rows, indent=2))
    else:
        print_table([cells(r) for r in rows], headers)
    return EXIT_OK


def cmd_deploy(args: argparse.Namespace) -> int:
    """Register a file's tasks (or one task environment's) with their code bundle, by version."""
    import tempfile

    from engine.sdk import TaskLoadError, code_version, load_tasks, serialize_task, task_triggers
    from engine.tasks import make_bundle

    file = pathlib.Path(args.file)
    check_run_id(args.project, args.domain, "r")
    try:
        tasks = load_tasks(file, args.env)
        root = file.resolve().parent
        version = code_version(root)
    except (TaskLoadError, ValueError) as exc:
        raise CliError(str(exc)) from None

    def serialized(stored: str, digest: str):
        """The tasks' specs, each fetching the stored bundle (--tgz) as on a cluster: where runs are Pods, that
        is how they get their code (task processes here run from the bundle extracted once instead)."""
        try:
            specs = [serialize_task(t, project=args.project, domain=args.domain, root_dir=root, with_defaults=True,
                                    version=version, bundle=(stored, digest)) for t in tasks]
            return specs, [task_triggers(t, spec) for t, spec in zip(tasks, specs)]
        except (TaskLoadError, ValueError) as exc:
            raise CliError(str(exc)) from None

    async def go() -> int:
        async with writer(args) as client:
            with tempfile.TemporaryDirectory(prefix="taskdeck-bundle-") as scratch:
                try:
                    bundle = make_bundle(root, pathlib.Path(scratch) / "code.tar.gz")
                except ValueError as exc:
                    raise CliError(str(exc)) from None
                digest = hashlib.md5(bundle.read_bytes(), usedforsecurity=False).hexdigest()
                stored = await client.stage_input(str(bundle), project=args.project, domain=args.domain)
            specs, triggers = serialized(stored, digest)
            rows = [await client.deploy_task(spec.SerializeToString(), project=args.project, domain=args.domain,
                                             bundle=stored) for spec in specs]
            for row, task_triggers_of in zip(rows, triggers):
                row["triggers"] = [(await client.deploy_trigger(t, project=args.project, domain=args.domain,
                                                                task_name=row["name"], task_version=row["version"]))["name"]
                                   for t in task_triggers_of]
        if args.json:
            print(strict_dumps(rows, indent=2))
        else:
            print_table([[r["name"], r["version"], "registered" if r["registered"] else "unchanged",
                          ", ".join(r["triggers"]) or "-"] for r in rows], ["TASK", "VERSION", "DEPLOY", "TRIGGERS"])
        return EXIT_OK

    return asyncio.run(go())


def cmd_trigger(args: argparse.Namespace) -> int:
    """List triggers, switch one on or off, or show its revisions and what it fired."""

    async def go() -> int:
        if args.action == "list":
            return await _list(args, lambda client: client.list_triggers(),
                               ["PROJECT", "DOMAIN", "TRIGGER", "TASK", "ACTIVE", "REVISION"],
                               lambda r: [r["project"], r["domain"], r["name"], r["task"], "yes" if r["active"] else "no",
                                          str(r["revision"])])
        if not args.name:
            raise CliError(f"usage: taskdeck trigger {args.action} NAME")
        if args.action == "history":
            return await _list(args, lambda client: client.trigger_history(args.name, project=args.project,
                                                                           domain=args.domain),
                               ["AT", "REVISION", "WHAT"],
                               lambda r: [time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["at"])),
                                          str(r["revision"] or "-"), r["text"]])
        async with writer(args) as client:
            record = await client.set_trigger_active(args.name, args.action == "activate", project=args.project,
                                                     domain=args.domain)
        say(f"trigger {record['name']} is {'active' if record['active'] else 'inactive'} (revision {record['revision']})")
        return EXIT_OK

    return asyncio.run(go())


def cmd_project(args: argparse.Namespace) -> int:
    """Create or list projects."""

    async def go() -> int:
        if args.action == "list":
            return await _list(args, lambda client: client.list_projects(), ["PROJECT", "NAME", "DOMAINS", "DESCRIPTION"],
                               lambda r: [r["id"], r["name"], ", ".join(r["domains"]), r["description"]])
        if not args.id:
            raise CliError("usage: taskdeck project create ID [--name NAME] [--description TEXT]")
        async with writer(args) as client:
            project = await client.create_project(args.id, name=args.name or "", description=args.description or "")
        if args.json:
            print(strict_dumps(project, indent=2))
        else:
            say(f"project {project['id']} has domains {', '.join(project['domains'])}")
        return EXIT_OK

    return asyncio.run(go())


def cmd_secret(args: argparse.Namespace) -> int:
    """Create, list or delete secrets; a value is read from --value-file, stdin (-), or --value, and never shown."""
    project = "" if args.is_global else args.project
    domain = "" if args.is_global or args.project_wide else args.domain

    async def go() -> int:
        if args.action == "list":
            return await _list(args, lambda client: client.list_secrets(), ["NAME", "PROJECT", "DOMAIN", "UPDATED"],
                               lambda r: [r["name"], r.get("project") or "(global)", r.get("domain") or "(all)",
                                          time.strftime("%Y-%m-%d %H:%M", time.localtime(r["updatedAt"]))])
        if not args.name:
            raise CliError(f"usage: taskdeck secret {args.action} NAME")
        async with writer(args) as client:
            if args.action == "delete":
                await client.delete_secret(args.name, project=project, domain=domain)
                say(f"deleted secret {args.name}")
                return EXIT_OK
            info = await client.create_secret(args.name, _secret_value(args), project=project, domain=domain)
        say(f"stored secret {info['name']} for {info.get('project') or 'every project'}"
            f"{'/' + info['domain'] if info.get('domain') else ''}")
        return EXIT_OK

    return asyncio.run(go())


def _secret_value(args: argparse.Namespace) -> bytes:
    sources = [s for s in (args.value, args.value_file) if s is not None]
    if len(sources) != 1:
        raise CliError("give the value with exactly one of --value TEXT or --value-file FILE (- for stdin)")
    if args.value is not None:
        return args.value.encode()
    if args.value_file == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            data = pathlib.Path(args.value_file).read_bytes()
        except OSError as exc:
            raise CliError(f"--value-file: {exc.strerror or exc}: {args.value_file}") from None
    return data[:-1] if data.endswith(b"\n") and data.count(b"\n") == 1 else data


def cmd_cache(args: argparse.Namespace) -> int:
    """List or evict task-cache entries."""
    if args.action == "clear" and not (args.keys or args.task or args.all):
        raise CliError("name what to clear: KEY..., --task NAME or --all")

    async def go() -> int:
        if args.action == "list":
            async with reader(args) as client:
                rows = await client.list_cache(args.task, args.limit)
            if args.json:
                print(strict_dumps(rows, indent=2))
            else:
                print_table([[r["taskName"], r["cacheVersion"] or "-", (r.get("createdAt") or "-")[:19],
                              f"{r['source']['run']}/{r['source']['action']}", r["key"]] for r in rows],
                            ["TASK", "VERSION", "CREATED", "FROM", "KEY"])
            return EXIT_OK
        async with writer(args) as client:
            evicted = await client.evict_cache(args.keys or None, args.task, args.all)
        print(f"evicted {evicted} cache entr{'y' if evicted == 1 else 'ies'}")
        return EXIT_OK

    return asyncio.run(go())


def cmd_token(args: argparse.Namespace) -> int:
    """Print the owner's token, creating the data directory's credentials on first use."""
    print(read_credential(args.data_dir, args.token_file) if args.token_file else ensure_credential(args.data_dir))
    return EXIT_OK


# --------------------------------------------------------------------------- the command line
class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, naming the problem (argparse would print the whole usage first). No
    abbreviated options: after ``run FILE TASK`` a task input ``--d`` is the task's, not ``--domain``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def existing_file(text: str) -> pathlib.Path:
    """An argparse type: a readable file, as an absolute path (an engine started elsewhere gets it too)."""
    path = pathlib.Path(text).expanduser().resolve()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file")
    return path


def bounded(kind: type, low: float, high: float):
    """An argparse type: a finite ``kind`` from ``low`` to ``high``, or a one-line usage error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        if not low <= value <= high:  # NaN fails both comparisons
            raise argparse.ArgumentTypeError(f"{text!r} must be from {low:g} to {high:g}")
        return value

    parse.__name__ = kind.__name__
    return parse


DEFAULTS: dict[str, Any] = {
    "data_dir": None, "engine": None, "token_file": None, "json": False, "verbose": False, "headless": False,
    "read_only": False, "ascii": False, "max_system_failures": 3, "max_processes": None, "gc_ttl": 3600.0,
    "share_group": None, "pass_env": [], "allow_dir": [], "advertise_host": None, "max_body_bytes": 8 * 1024 * 1024,
    "idle_exit": None, "task_start": "fork", "reuse": "on", "plugin_for": [], "max_clusters": None,
    "k8s_config": None, "quota": [], "queue_limit": [], "backend": "embedded", "kubeconfig": None, "context": None,
    "namespace": None, "in_cluster": False, "database": None, "tasks_on": "processes", "advertise_url": None,
    "lease_seconds": None, "raw_data": None, "listen": None,
}


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes, before or after its name (``suppress``: on a subcommand, where an
    option given before the command must not be reset to its default)."""

    def add(*flags, **kwargs):
        dest = kwargs.get("dest") or flags[-1].lstrip("-").replace("-", "_")
        kwargs["default"] = argparse.SUPPRESS if suppress else DEFAULTS[dest]
        if kwargs.get("action") == "append":
            kwargs["default"] = argparse.SUPPRESS if suppress else []
        return parser.add_argument(*flags, **kwargs)

    add("--data-dir", type=pathlib.Path, help=f"where runs, logs and the database live (default {default_data_dir()})")
    add("--engine", metavar="URL", help="the engine to talk to (default: the one serving the data directory)")
    add("--token-file", type=pathlib.Path, help="the engine's credential (default <data-dir>/token)")
    add("--json", action="store_true", help="print JSON (strict: NaN and infinities as null)")
    add("-v", "--verbose", action="store_true", help="log engine activity to stderr")
    add("--headless", action="store_true", help="run the engine without the console")
    add("--read-only", action="store_true", help="console: hide abort, retry and signal")
    add("--ascii", action="store_true", help="console: ASCII phase glyphs")
    engine = parser.add_argument_group("engine (when this command runs or starts one)")

    def add_engine(*flags, **kwargs):
        dest = flags[-1].lstrip("-").replace("-", "_")
        kwargs["default"] = argparse.SUPPRESS if suppress else DEFAULTS[dest]
        if kwargs.get("action") == "append":
            kwargs["default"] = argparse.SUPPRESS if suppress else []
        return engine.add_argument(*flags, **kwargs)

    add_engine("--max-system-failures", type=bounded(int, 0, 1000),
               help="consecutive system failures an action survives (default 3; the 4th fails it)")
    add_engine("--max-processes", type=bounded(int, 1, 10_000),
               help="task processes computing at once (default: twice the cores, at least 4; a parent awaiting "
                    "its children lends them its slot)")
    add_engine("--task-start", choices=("fork", "exec"),
               help="how SDK tasks start: fork from a warm fork server per task environment (default), or exec "
                    "a fresh interpreter (a task's env TASKDECK_START=exec asks for that too)")
    add_engine("--reuse", choices=("on", "off"),
               help="tasks of a reusable environment (flyte.ReusePolicy) run on pools of long-lived workers (on, "
                    "the default), or each in a fresh process (off; a task's env TASKDECK_REUSE=off asks for that)")
    add_engine("--max-clusters", type=bounded(int, 1, 1000),
               help="local Dask and Ray clusters at once (default: a quarter of --max-processes, at least 1); "
                    "more wait for a place")
    add_engine("--plugin-for", action="append", type=plugin_for, metavar="TYPE=PLUGIN",
               help="run tasks of this type with that plugin (repeatable; Flyte's default-for-task-types)")
    add_engine("--quota", action="append", metavar="PROJECT/DOMAIN=N",
               help="at most N actions of that project and domain run at once; the others wait, fairly "
                    "across runs (repeatable)")
    add_engine("--queue-limit", action="append", metavar="QUEUE=N",
               help="at most N actions of that queue (the SDK's task queue=) run at once (repeatable)")
    add_engine("--k8s-config", type=existing_file, metavar="FILE",
               help="Flyte's Kubernetes plugin settings (plugins.k8s: tolerations, node selectors, interruptible "
                    "rules; spark, ray, dask sections), YAML or JSON: what `render` builds resources with")
    add_engine("--gc-ttl", type=bounded(float, 0, 10 ** 8),
               help="seconds after which terminated TaskActions are removed (rows and events stay)")
    add_engine("--share-group", metavar="GROUP", help="let this Unix group read the token, and so drive the engine")
    add_engine("--pass-env", action="append", metavar="NAME",
               help="also give task processes this variable of the engine's environment (repeatable)")
    add_engine("--allow-dir", action="append", type=pathlib.Path, metavar="DIR",
               help="a directory submitted code may run from (repeatable; default: your home)")
    add_engine("--advertise-host", metavar="HOST",
               help="a host name clients may address the engine by, besides the loopback names")
    add_engine("--max-body-bytes", type=bounded(int, 1024, 2 ** 31),
               help="larger request bodies are refused (default 8 MiB)")
    add_engine("--backend", choices=("embedded", "kubernetes"),
               help="where TaskActions live: the data directory's SQLite database (embedded, the default), or "
                    "a Kubernetes cluster as flyte.org/v1 custom resources (the runs data stays in the database)")
    add_engine("--kubeconfig", type=existing_file, metavar="FILE",
               help="with --backend kubernetes: the kubeconfig (default: $KUBECONFIG, else ~/.kube/config)")
    add_engine("--context", metavar="NAME", help="with --backend kubernetes: the kubeconfig context to use")
    add_engine("--namespace", metavar="NS",
               help="with --backend kubernetes: the namespace of the TaskActions (default: the context's, else flyte)")
    add_engine("--database", metavar="URL",
               help="with --backend kubernetes: keep the runs data in PostgreSQL (postgresql://USER@HOST:PORT/DB), "
                    "shared by the engines of one namespace so a follower that takes over loses nothing "
                    "(default: $TASKDECK_DATABASE, else the data directory's SQLite); give the password with "
                    "PGPASSWORD or ~/.pgpass, not in the URL")
    add_engine("--tasks-on", choices=("processes", "pods"),
               help="with --backend kubernetes: run tasks as processes on this machine (the default), or as Pods "
                    "(and Spark/Ray/Dask tasks as their operators' objects) on the cluster")
    add_engine("--advertise-url", metavar="URL",
               help="with --tasks-on pods: the address task pods reach this engine's services at "
                    "(default: the engine's own; in a cluster, its Service)")
    add_engine("--raw-data", metavar="PREFIX",
               help="with --tasks-on pods: keep inputs, outputs and code bundles under this object store prefix "
                    "(s3://bucket/path; gs:// and abfs:// too), read and written through the flyte SDK's storage "
                    "layer with its variables (FLYTE_AWS_ENDPOINT, FLYTE_AWS_ACCESS_KEY_ID, "
                    "FLYTE_AWS_SECRET_ACCESS_KEY...), which task pods get from a Secret (default: the data "
                    "directory, which pods must then share)")
    add_engine("--listen", metavar="HOST:PORT",
               help="with --backend kubernetes: where the engine's server listens (default: 127.0.0.1, a port of "
                    "its own), e.g. 0.0.0.0:8080 for task pods on a cluster to reach it at --advertise-url; every "
                    "request still needs its credential")
    add_engine("--lease-seconds", type=bounded(float, 0.5, 3600), metavar="SECONDS",
               help="with --backend kubernetes: the leader's lease (default 15): how long a dead leader's "
                    "successor waits")
    add_engine("--in-cluster", action="store_true",
               help="with --backend kubernetes: use the pod's service account instead of a kubeconfig")
    add_engine("--idle-exit", type=bounded(float, 0.1, 10 ** 6), metavar="SECONDS",
               help="with --headless: stop after this long with nothing to do")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="taskdeck", description="Local Flyte v2 executor and operations console.")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        child = sub.add_parser(name, **kwargs)
        _global_options(child, suppress=True)
        return child

    command("token", help="print the credential that drives the engine (Authorization: Bearer TOKEN)")
    flyte_config.add_parser(command)
    k8s_command.add_parser(command)
    run = command("run", help="run a flyte task through the engine",
                  description="Run FILE's TASK; task inputs follow as --name value (after TASK, or after --).")
    run.add_argument("--project", default="flytesnacks")
    run.add_argument("--domain", default="development")
    run.add_argument("--run-name", dest="name", default=None, help="run name (default: generated)")
    run.add_argument("--tui", action="store_true", help="open the console on the run")
    run.add_argument("file")
    run.add_argument("task")
    run.add_argument("task_args", nargs=argparse.REMAINDER, help="task inputs as --name value")

    get = command("get", help="list runs, a run's actions, an action's events (every attempt), or the engine's "
                              "reusable workers and fork servers")
    get.add_argument("kind", choices=["runs", "actions", "events", "workers", "report", "tasks"])
    get.add_argument("--project", default=None, help="with `tasks`: only this project's (with --domain)")
    get.add_argument("--domain", default="development")
    get.add_argument("--action", default="a0", help="with `events`: the action (default the root)")
    get.add_argument("run", nargs="?", help="the run (for `report`: RUN or RUN/ACTION)")
    get.add_argument("--limit", type=bounded(int, 1, 100_000), default=200)

    render = command("render", help="print the Kubernetes object (Pod, DaskJob, ...) the Kubernetes backend "
                                    "would create for an action, as YAML")
    render.add_argument("target", metavar="RUN[/ACTION]", help="the run, or one of its actions (default its root)")

    logs = command("logs", help="print an action's log (its last attempt's unless --attempt)")
    logs.add_argument("run")
    logs.add_argument("--action", default=None, help="one action of the run (default: the run's root)")
    logs.add_argument("--attempt", type=bounded(int, 1, 10 ** 6), default=None)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the action ends")

    abort = command("abort", help="abort a run, or one action and its subtree")
    abort.add_argument("run")
    abort.add_argument("--action", default=None)
    abort.add_argument("--reason", default="aborted from the command line")
    retry = command("retry", help="re-run a failed, aborted or timed-out run or action as a new attempt")
    retry.add_argument("run")
    retry.add_argument("--action", default=None, help="one action of the run (default: the run's root)")
    retry.add_argument("--reason", default="", help="why, recorded in the new attempt's event")

    signal_cmd = command("signal", help="give a paused condition its value (bool, int, float or str)")
    signal_cmd.add_argument("run")
    signal_cmd.add_argument("action", help="the condition's action name, or the condition's own name")
    signal_cmd.add_argument("value")

    deploy = command("deploy", help="register a file's tasks (or one environment's) with their code, by version",
                     description="Runs of a deployed task (`taskdeck run deployed-task ENV.TASK[@VERSION]`) work "
                                 "in its code bundle, not in your working tree.")
    deploy.add_argument("file")
    deploy.add_argument("env", nargs="?", default=None, help="only the tasks of this task environment")
    deploy.add_argument("--project", default="flytesnacks")
    deploy.add_argument("--domain", default="development")

    trigger = command("trigger", help="list triggers, activate or deactivate one, or show its history")
    trigger.add_argument("action", choices=["list", "activate", "deactivate", "history"])
    trigger.add_argument("name", nargs="?")
    trigger.add_argument("--project", default="flytesnacks")
    trigger.add_argument("--domain", default="development")

    project = command("project", help="create or list projects (every run belongs to one; flytesnacks is there "
                                      "from the start)")
    project.add_argument("action", choices=["create", "list"])
    project.add_argument("id", nargs="?", help="with `create`: the project's id (a DNS label)")
    project.add_argument("--name", default=None)
    project.add_argument("--description", default=None)

    secret = command("secret", help="create, list or delete secrets (values are never shown)",
                     description="Secrets a task asks for (flyte.Secret) are given to it as environment variables. "
                                 "A secret is scoped to a project and domain (the default), a whole project "
                                 "(--project-wide), or every project (--global).")
    secret.add_argument("action", choices=["create", "list", "delete"])
    secret.add_argument("name", nargs="?", help="the secret's name: the key tasks ask for")
    secret.add_argument("--project", default="flytesnacks")
    secret.add_argument("--domain", default="development")
    secret.add_argument("--project-wide", action="store_true", help="for every domain of --project")
    secret.add_argument("--global", dest="is_global", action="store_true", help="for every project")
    secret.add_argument("--value", default=None, help="the value (visible to other local users in ps and in "
                                                      "your shell history: prefer --value-file)")
    secret.add_argument("--value-file", default=None, metavar="FILE", help="read the value from FILE (- for stdin)")

    cache = command("cache", help="list or clear task-cache entries",
                    description="`cache list` shows entries; `cache clear KEY... | --task NAME | --all` evicts.")
    cache.add_argument("action", choices=["list", "clear"])
    cache.add_argument("keys", nargs="*", help="with `clear`: the keys to evict")
    cache.add_argument("--task", default=None, help="only this task's entries (its full name, e.g. env.task)")
    cache.add_argument("--all", action="store_true", help="with `clear`: every entry")
    cache.add_argument("--limit", type=bounded(int, 1, 100_000), default=1000)
    return parser


COMMANDS = {"token": cmd_token, "flyte-config": flyte_config.cmd_flyte_config, "run": cmd_run, "get": cmd_get, "render": cmd_render, "logs": cmd_logs,
            "abort": cmd_abort,
            "retry": cmd_retry,
            "signal": cmd_signal, "cache": cmd_cache, "secret": cmd_secret, "project": cmd_project,
            "deploy": cmd_deploy, "trigger": cmd_trigger, "k8s": k8s_command.cmd_k8s}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.double_dash = "--" in argv  # argparse drops it; `run` must know its inputs are all the task's
    for dest, default in DEFAULTS.items():  # an option no parser level set
        if not hasattr(args, dest):
            setattr(args, dest, list(default) if isinstance(default, list) else default)
    args.data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    if args.data_dir.exists() and not args.data_dir.is_dir():
        print(f"taskdeck: --data-dir {args.data_dir} exists and is not a directory", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # the Kubernetes client's retries of one request: the engine reports the outcome once
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        if args.headless:
            return asyncio.run(_headless(args))
        return cmd_console(args)
    except (CliError, InvalidRunError, DataDirError, EngineAlreadyRunningError, RunNotFoundError, LookupError,
            CredentialError, PermissionDeniedError, flyte_config.FlyteConfigError,
            k8s_command.K8sCommandError) as exc:
        print(f"taskdeck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (EngineUnavailableError, EngineGone) as exc:
        print(f"taskdeck: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except StorageUnavailableError as exc:
        print(f"taskdeck: storage unavailable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug of ours: one line, the traceback with --verbose
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"taskdeck: internal error: {type(exc).__name__}: {exc} (--verbose shows where)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
