"""The ``taskdeck`` command.

``taskdeck run FILE.py TASK --x 1``  run a task through the engine and print its outputs
``taskdeck get runs`` / ``taskdeck get actions RUN``  list runs and a run's actions
``taskdeck abort RUN [--action NAME]``  abort a run or one action and its subtree
``taskdeck --headless``  run the engine alone, one line per phase transition
``taskdeck token``  print the credential that drives the engine (for curl and the flyte CLI)

While an engine serves the data directory, ``run``/``get``/``abort`` go through it (its local HTTP API,
with the token from ``<data>/token``); otherwise ``run`` starts an engine in this process for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import getpass
import json
import logging
import pathlib
import signal
import sys
import urllib.parse
import urllib.error
import urllib.request
from typing import Any

from engine.auth import TOKEN_FILE, Authority, read_token
from engine.engine import (
    Engine,
    EngineAlreadyRunningError,
    EngineConfig,
    default_data_dir,
    prepare_data_dir,
    read_endpoint,
)
from engine.errors import DataDirError, InvalidRunError
from engine.names import check_action_name, check_run_id, check_run_name
from engine.phases import ActionPhase
from engine.store.base import AlreadyExistsError, StorageUnavailableError
from engine.views import strict_dumps

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CliError(Exception):
    pass


# --------------------------------------------------------------------------- client for a live engine
class EngineClient:
    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/") + "/taskdeck/v1"
        self._token = token

    def call(self, method: str, path: str, payload: Any = None, timeout: float = 30) -> Any:
        data = json.dumps(payload if payload is not None else {}).encode() if method == "POST" else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"content-type": "application/json",
                                                  "authorization": f"Bearer {self._token}"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error") or str(exc)
            except ValueError:
                message = str(exc)
            raise CliError(message) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach the engine at {self.url}: {reason}") from None
        except ValueError as exc:
            raise CliError(f"the engine at {self.url} sent an unreadable answer: {exc}") from None


def token_of(args: argparse.Namespace) -> str:
    path = args.token_file or args.data_dir / TOKEN_FILE
    try:
        return read_token(path)
    except PermissionError:
        raise CliError(f"cannot read the engine's credential {path} (permission denied): its owner can share it "
                       "with a Unix group (`taskdeck --headless --share-group GROUP`)") from None
    except OSError as exc:
        raise CliError(f"cannot read the engine's credential {path}: {exc.strerror or exc}") from None


def live_client(args: argparse.Namespace) -> EngineClient | None:
    try:
        endpoint = read_endpoint(args.data_dir)
    except PermissionError:
        raise CliError(f"cannot read {args.data_dir} (permission denied): it belongs to another user; its owner "
                       "can share the engine with a Unix group (`--share-group`)") from None
    if not endpoint or not endpoint.get("url"):
        return None
    return EngineClient(endpoint["url"], token_of(args))


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


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(data_dir=args.data_dir, max_system_failures=args.max_system_failures,
                        max_processes=args.max_processes, gc_ttl_seconds=args.gc_ttl,
                        max_body_bytes=args.max_body_bytes, share_group=args.share_group,
                        pass_env=tuple(args.pass_env), advertise_host=args.advertise_host,
                        allowed_code_dirs=tuple(args.allow_dir) if args.allow_dir else None)


# --------------------------------------------------------------------------- commands
def parse_task_args(extra: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            raise CliError(f"unexpected argument {token!r}; task inputs are given as --name value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        elif i + 1 < len(extra):
            i += 1
            value = extra[i]
        else:
            raise CliError(f"--{key} needs a value")
        values[key.replace("-", "_")] = value
        i += 1
    return values


def cmd_run(args: argparse.Namespace) -> int:
    from engine.sdk import TaskLoadError, inputs_from_strings, load_task, serialize_task

    file = pathlib.Path(args.file)
    check_run_id(args.project, args.domain, args.name or "r", new_run=bool(args.name))
    try:
        task = load_task(file, args.task)
        task_args = list(args.task_args)
        for flag in ("json", "tui"):  # run flags may trail the inputs unless the task has such an input
            if f"--{flag}" in task_args and flag not in task.native_interface.inputs:
                task_args.remove(f"--{flag}")
                setattr(args, flag, True)
        spec = serialize_task(task, project=args.project, domain=args.domain, root_dir=file.resolve().parent)
        inputs = inputs_from_strings(task, parse_task_args(task_args))
    except (TaskLoadError, ValueError) as exc:
        raise CliError(str(exc)) from None
    code_dir = str(file.resolve().parent)
    client = live_client(args)
    if args.tui:
        if client is not None:
            raise CliError(f"an engine already serves {args.data_dir}; the console embeds its own engine")
        return _run_in_console(args, spec, inputs, code_dir)
    if client is not None:
        created = client.call("POST", "/runs", {
            "taskSpec": base64.b64encode(spec.SerializeToString()).decode(),
            "inputs": base64.b64encode(inputs.SerializeToString()).decode(),
            "project": args.project, "domain": args.domain, "name": args.name, "codeDir": code_dir,
        })
        run_name = created["run"]
        if not args.json:
            print(f"submitted run {run_name} to the engine at {client.url}", file=sys.stderr)
        while True:
            result = client.call("POST", f"/runs/{run_name}/wait?timeout=30", timeout=60)
            if not result.get("timedOut"):
                return print_result(result, args.json)
    return asyncio.run(_run_embedded(args, spec, inputs, code_dir))


def _log_to_file(data_dir: pathlib.Path) -> None:
    """The console draws on the terminal: engine log lines go to <data>/console.log instead."""
    data_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(data_dir / "console.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def _run_in_console(args: argparse.Namespace, spec, inputs, code_dir: str) -> int:
    """Start the engine inside the console, submit the run, and open the console on it."""
    from console.app import TaskDeckApp

    _log_to_file(args.data_dir)
    engine = Engine(engine_config(args))

    class _RunApp(TaskDeckApp):
        async def on_mount(self) -> None:
            try:
                await self.engine.start()
                record = await self.engine.runs.create_run(spec, inputs, project=args.project, domain=args.domain,
                                                           name=args.name, code_dir=code_dir)
            except Exception as exc:  # noqa: BLE001
                self.exit(return_code=2, message=f"taskdeck: {exc}")
                return
            self.open_run_name = record.run_name
            self.start_engine = True
            await super().on_mount()

    app = _RunApp(engine, read_only=args.read_only, ascii_only=args.ascii)
    return app.run() or EXIT_OK


def cmd_console(args: argparse.Namespace) -> int:
    from console.app import TaskDeckApp

    if live_client(args) is not None:
        raise CliError(f"an engine already serves {args.data_dir}: the console embeds its own engine; stop the "
                       "other one, or use `taskdeck get` against it")
    _log_to_file(args.data_dir)
    app = TaskDeckApp(Engine(engine_config(args)), read_only=args.read_only, ascii_only=args.ascii)
    return app.run() or EXIT_OK


async def _start_engine(args: argparse.Namespace) -> tuple[Engine, asyncio.Event]:
    """An engine for this process, and an event set by Ctrl-C / SIGTERM (remove with _release_signals)."""
    engine = Engine(engine_config(args))
    try:
        await engine.start()
    except (EngineAlreadyRunningError, DataDirError) as exc:
        raise CliError(str(exc)) from None
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)
    return engine, interrupted


def _release_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)


async def _run_embedded(args: argparse.Namespace, spec, inputs, code_dir: str) -> int:
    engine, interrupted = await _start_engine(args)
    try:
        try:
            record = await engine.runs.create_run(spec, inputs, project=args.project, domain=args.domain,
                                                  name=args.name, code_dir=code_dir)
        except AlreadyExistsError:
            raise CliError(f"a run named {args.name!r} already exists; choose another --run-name") from None
        if not args.json:
            print(f"run {record.run_name} started (data dir {engine.data_dir})", file=sys.stderr)
        wait = asyncio.create_task(engine.runs.wait_for_run(record.run_name))
        stop = asyncio.create_task(interrupted.wait())
        await asyncio.wait({wait, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not wait.done():
            print(f"interrupted: aborting run {record.run_name}", file=sys.stderr)
            await engine.runs.abort_action(record.run_name, reason="interrupted from the command line")
            result = await engine.runs.wait_for_run(record.run_name, timeout=30)
            print_result(result.to_json(), args.json)
            return EXIT_INTERRUPTED
        stop.cancel()
        return print_result(wait.result().to_json(), args.json)
    finally:
        _release_signals()
        await engine.stop()


async def _local_reads(data_dir: pathlib.Path, fn):
    from engine.runs import RunsService
    from engine.store.sqlite import SqliteStore

    store = SqliteStore(data_dir / "taskdeck.db", read_only=True)
    await store.start()
    try:
        return await fn(RunsService(store, data_dir), store)
    finally:
        await store.close()


def cmd_get(args: argparse.Namespace) -> int:
    from engine.views import action_json

    if args.run:
        check_run_name(args.run)
    check_action_name(args.action)
    client = live_client(args)
    if args.kind == "runs":
        if client is not None:
            rows = client.call("GET", f"/runs?limit={args.limit}")
        else:
            rows = asyncio.run(_local_reads(args.data_dir, lambda runs, store: _runs_json(runs, args.limit)))
        if args.json:
            print(strict_dumps(rows, indent=2))
        else:
            print_table([[r["run"], r.get("taskName") or "-", r["phase"], (r.get("startedAt") or "-")[:19],
                          _duration(r.get("durationMs")), str(r["attempts"]), _first_line(r.get("error"))]
                         for r in rows], ["RUN", "TASK", "PHASE", "STARTED", "DURATION", "ATTEMPTS", "ERROR"])
        return EXIT_OK
    if not args.run:
        raise CliError(f"usage: taskdeck get {args.kind} RUN")
    if args.kind == "events":
        return _print_events(args, client)
    async def read(runs, store):
        return [action_json(a, runs.task_action_of(a)) for a in await runs.list_actions(args.run)]

    rows = _fetch(args, client, f"/runs/{args.run}/actions", read)
    if args.json:
        print(strict_dumps(rows, indent=2))
    else:
        print_table([[r["name"], r.get("parent") or "-", r.get("shortName") or r.get("taskName") or "-", r["phase"],
                      str(r["attempts"]), r["cacheStatus"].replace("CACHE_", ""), _duration(r.get("durationMs")),
                      _first_line(r.get("error"))] for r in rows],
                    ["ACTION", "PARENT", "TASK", "PHASE", "ATTEMPTS", "CACHE", "DURATION", "ERROR"])
    return EXIT_OK


def _fetch(args: argparse.Namespace, client: EngineClient | None, path: str, read) -> Any:
    """Through the live engine's API when one serves the directory, else straight from its database."""
    if client is not None:
        return client.call("GET", path)
    try:
        return asyncio.run(_local_reads(args.data_dir, read))
    except LookupError as exc:
        raise CliError(str(exc)) from None


def _print_events(args: argparse.Namespace, client: EngineClient | None) -> int:
    from engine.views import event_json

    async def read(runs, store):
        run = await runs.get_run(args.run)
        return [event_json(e) for e in await runs.list_events((run.project, run.domain, run.run_name, args.action))]

    rows = _fetch(args, client, f"/runs/{args.run}/actions/{args.action}/events", read)
    if args.json:
        print(strict_dumps(rows, indent=2))
    else:
        print_table([[str(r["attempt"]), r["phase"], (r.get("updatedTime") or "-")[11:23],
                      _first_line(r.get("error")), "; ".join(r.get("reasons") or [])[:60],
                      (r.get("logs") or ["-"])[0]] for r in rows],
                    ["ATTEMPT", "PHASE", "TIME", "ERROR", "REASONS", "LOG"])
    return EXIT_OK


async def _runs_json(runs, limit: int) -> list[dict]:
    from engine.views import action_json

    return [action_json(r) for r in await runs.list_runs(limit)]


def cmd_abort(args: argparse.Namespace) -> int:
    check_run_name(args.run)
    if args.action:
        check_action_name(args.action)
    client = live_client(args)
    if client is None:
        raise CliError(f"no engine is serving {args.data_dir}; start one with `taskdeck --headless` to abort runs")
    client.call("POST", f"/runs/{args.run}/abort", {"action": args.action, "reason": args.reason})
    print(f"abort requested for {args.run}/{args.action or 'a0'}")
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    check_run_name(args.run)
    if args.action:
        check_action_name(args.action)
    client = live_client(args)
    payload = {"action": args.action, "reason": args.reason, "by": getpass.getuser()}
    if client is not None:
        result = client.call("POST", f"/runs/{args.run}/retry", payload)
        print(f"retrying {args.run}: {', '.join(result['retried'])} (through the engine at {client.url})")
        return EXIT_OK
    return asyncio.run(_retry_embedded(args, payload))


async def _retry_embedded(args: argparse.Namespace, payload: dict) -> int:
    """No engine is serving the directory: start one, retry, and wait for the run as `taskdeck run` does."""
    engine = Engine(engine_config(args))
    try:
        await engine.start()
    except (EngineAlreadyRunningError, DataDirError) as exc:
        raise CliError(str(exc)) from None
    try:
        try:
            names = await engine.runs.retry_action(args.run, payload["action"] or "a0", who=payload["by"],
                                                   why=payload["reason"] or "")
        except (InvalidRunError, LookupError) as exc:
            raise CliError(str(exc)) from None
        print(f"retrying {args.run}: {', '.join(names)}", file=sys.stderr)
        result = await engine.runs.wait_for_run(args.run, action_name=payload["action"] or "a0")
        return print_result(result.to_json(), args.json)
    finally:
        await engine.stop()


def cmd_signal(args: argparse.Namespace) -> int:
    check_run_name(args.run)
    client = live_client(args)
    if client is None:
        raise CliError(f"no engine is serving {args.data_dir}; conditions are signalled through a running engine")
    result = client.call("POST", f"/runs/{args.run}/signal", {"action": args.action, "value": args.value})
    print(f"signalled {args.run}/{result['signalled']} = {args.value}")
    return EXIT_OK


def cmd_cache(args: argparse.Namespace) -> int:
    """List or evict task-cache entries: through the live engine, else on the database (under its lock)."""
    from engine.views import cache_entry_json

    client = live_client(args)
    if args.action == "list":
        if client is not None:
            query = f"?limit={args.limit}" + (f"&task={urllib.parse.quote(args.task)}" if args.task else "")
            rows = client.call("GET", f"/cache{query}")
        else:
            async def read(runs, store):
                return [cache_entry_json(e) for e in await runs.list_cache(args.task, args.limit)]

            rows = asyncio.run(_local_reads(args.data_dir, read))
        if args.json:
            print(strict_dumps(rows, indent=2))
        else:
            print_table([[r["taskName"], r["cacheVersion"] or "-", (r.get("createdAt") or "-")[:19],
                          f"{r['source']['run']}/{r['source']['action']}", r["key"]] for r in rows],
                        ["TASK", "VERSION", "CREATED", "FROM", "KEY"])
        return EXIT_OK
    if not args.keys and not args.task and not args.all:
        raise CliError("name what to clear: KEY..., --task NAME or --all")
    payload = {"keys": args.keys or None, "task": args.task, "all": args.all}
    if client is not None:
        evicted = client.call("POST", "/cache/evict", payload)["evicted"]
    else:
        evicted = asyncio.run(_local_evict(args.data_dir, payload))
    print(f"evicted {evicted} cache entr{'y' if evicted == 1 else 'ies'}")
    return EXIT_OK


async def _local_evict(data_dir: pathlib.Path, payload: dict) -> int:
    """No engine serves the directory: hold its lock (so none starts meanwhile) and write the database."""
    from engine.engine import DB_FILE, DataDirLock
    from engine.runs import RunsService
    from engine.store.sqlite import SqliteStore

    lock = DataDirLock(data_dir)
    try:
        lock.acquire()
    except EngineAlreadyRunningError as exc:  # one started meanwhile
        raise CliError(str(exc)) from None
    store = SqliteStore(data_dir / DB_FILE)
    try:
        await store.start()
        return await RunsService(store, data_dir).evict_cache(payload["keys"], payload["task"], payload["all"])
    finally:
        await store.close()
        lock.release()


def cmd_token(args: argparse.Namespace) -> int:
    """Print the owner's token, creating the data directory's credentials on first use."""
    if not (args.data_dir / TOKEN_FILE).exists() and args.token_file is None:
        prepare_data_dir(args.data_dir)
        Authority(args.data_dir).load()
    print(token_of(args))
    return EXIT_OK


async def _headless(args: argparse.Namespace) -> int:
    from engine.store.base import EventsRecorded, StorageChanged

    engine, stop = await _start_engine(args)

    def on_storage(change: StorageChanged) -> None:
        if change.error:
            print(f"storage unavailable: {change.error}; launching nothing until writes succeed again", flush=True)
        else:
            print("storage available again; resuming", flush=True)

    def on_change(change) -> None:
        if isinstance(change, EventsRecorded):
            for event in change.events:
                when = dt.datetime.fromtimestamp(event.updated_time, dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
                error = f" [{event.error_kind}]" if event.error_kind else ""
                print(f"{when} {event.run_name}/{event.name} attempt {event.attempt} "
                      f"{ActionPhase(event.phase).name}{error}", flush=True)

    unsubscribe = engine.store.subscribe(on_change)
    unsubscribe_storage = engine.health.subscribe(on_storage)
    print(f"TaskDeck engine serving {engine.data_dir} at {engine.url} (Ctrl-C to stop; clients authenticate "
          f"with the token in {engine.token_path})", flush=True)
    try:
        await stop.wait()
    finally:
        unsubscribe()
        unsubscribe_storage()
        _release_signals()
        await engine.stop()
        print("engine stopped", flush=True)
    return EXIT_OK


# --------------------------------------------------------------------------- entry point
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


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, naming the problem (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="taskdeck", description="Local Flyte v2 executor and operations console.")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help=f"where runs, logs and the database live (default {default_data_dir()})")
    parser.add_argument("--headless", action="store_true", help="run the engine without the console")
    parser.add_argument("--read-only", action="store_true", help="console: hide abort, retry and signal")
    parser.add_argument("--ascii", action="store_true", help="console: ASCII phase glyphs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine activity to stderr")
    parser.add_argument("--max-system-failures", type=bounded(int, 0, 1000), default=3,
                        help="consecutive system failures an action survives (default 3; the 4th fails it)")
    parser.add_argument("--max-processes", type=bounded(int, 1, 10_000), default=16,
                        help="task processes running at once")
    parser.add_argument("--gc-ttl", type=bounded(float, 0, 10 ** 8), default=3600,
                        help="seconds after which terminated TaskActions are removed (rows and events stay)")
    parser.add_argument("--token-file", type=pathlib.Path, default=None,
                        help="the engine's credential (default <data-dir>/token)")
    security = parser.add_argument_group("security (engine)")
    security.add_argument("--share-group", default=None, metavar="GROUP",
                          help="let this Unix group read the token, and so drive the engine")
    security.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                          help="also give task processes this variable of the engine's environment (repeatable)")
    security.add_argument("--allow-dir", action="append", default=[], type=pathlib.Path, metavar="DIR",
                          help="a directory submitted code may run from (repeatable; default: your home)")
    security.add_argument("--advertise-host", default=None, metavar="HOST",
                          help="a host name clients may address the engine by, besides the loopback names")
    security.add_argument("--max-body-bytes", type=bounded(int, 1024, 2 ** 31), default=8 * 1024 * 1024,
                          help="larger request bodies are refused (default 8 MiB)")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("token", help="print the credential that drives the engine (Authorization: Bearer TOKEN)")

    run = sub.add_parser("run", help="run a flyte task through the engine",
                         description="Run FILE's TASK; task inputs follow as --name value.")
    run.add_argument("--json", action="store_true", help="print one JSON object: run, phase, outputs, error")
    run.add_argument("--project", default="flytesnacks")
    run.add_argument("--domain", default="development")
    run.add_argument("--run-name", dest="name", default=None, help="run name (default: generated)")
    run.add_argument("--tui", action="store_true", help="open the console on the run")
    run.add_argument("file")
    run.add_argument("task")
    run.add_argument("task_args", nargs=argparse.REMAINDER, help="task inputs as --name value")

    get = sub.add_parser("get", help="list runs, a run's actions, or an action's events (every attempt)")
    get.add_argument("kind", choices=["runs", "actions", "events"])
    get.add_argument("--action", default="a0", help="with `events`: the action (default the root)")
    get.add_argument("run", nargs="?")
    get.add_argument("--json", action="store_true")
    get.add_argument("--limit", type=bounded(int, 1, 100_000), default=200)

    abort = sub.add_parser("abort", help="abort a run, or one action and its subtree")
    abort.add_argument("run")
    abort.add_argument("--action", default=None)
    abort.add_argument("--reason", default="aborted from the command line")
    retry = sub.add_parser("retry", help="re-run a failed, aborted or timed-out run or action as a new attempt")
    retry.add_argument("run")
    retry.add_argument("--action", default=None, help="one action of the run (default: the run's root)")
    retry.add_argument("--reason", default="", help="why, recorded in the new attempt's event")
    retry.add_argument("--json", action="store_true")

    signal_cmd = sub.add_parser("signal", help="give a paused condition its value (bool, int, float or str)")
    signal_cmd.add_argument("run")
    signal_cmd.add_argument("action", help="the condition's action name, or the condition's own name")
    signal_cmd.add_argument("value")

    cache = sub.add_parser("cache", help="list or clear task-cache entries",
                           description="`cache list` shows entries; `cache clear KEY... | --task NAME | --all` evicts.")
    cache.add_argument("action", choices=["list", "clear"])
    cache.add_argument("keys", nargs="*", help="with `clear`: the keys to evict")
    cache.add_argument("--task", default=None, help="only this task's entries (its full name, e.g. env.task)")
    cache.add_argument("--all", action="store_true", help="with `clear`: every entry")
    cache.add_argument("--json", action="store_true")
    cache.add_argument("--limit", type=bounded(int, 1, 100_000), default=1000)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    if args.data_dir.exists() and not args.data_dir.is_dir():
        print(f"taskdeck: --data-dir {args.data_dir} exists and is not a directory", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "token":
            return cmd_token(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "get":
            return cmd_get(args)
        if args.command == "abort":
            return cmd_abort(args)
        if args.command == "retry":
            return cmd_retry(args)
        if args.command == "signal":
            return cmd_signal(args)
        if args.command == "cache":
            return cmd_cache(args)
        if args.headless:
            return asyncio.run(_headless(args))
        return cmd_console(args)
    except (CliError, InvalidRunError, DataDirError, EngineAlreadyRunningError, LookupError) as exc:
        print(f"taskdeck: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StorageUnavailableError as exc:
        print(f"taskdeck: storage unavailable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
