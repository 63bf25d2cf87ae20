"""A reusable worker (the SDK's ReusePolicy): one long-lived process runs many actions of one environment.

    python -P reusable_worker.py      (its environment is the pool's; cwd is the task's code directory)

Python, flyte, the SDK's init and one controller are set up once; each action then runs through the SDK's
own entrypoint for reusable containers (``flyte._internal.runtime.rusty.run_task``), which writes
outputs.pb / error.pb as ``a0`` does. The user's modules stay imported: module state persists between
actions, which is what ReusePolicy is for.

The engine talks to it in JSON lines over stdin/stdout; the worker's own output goes to its log.

* ``{"op": "run", "id": N, "argv": [...], "env": {...}, "cwd": "...", "log": "...", "outputs": "..."}``
  runs one action (argv is the task's ``a0`` command line). ``{"op": "started", "id": N}`` once it is
  running; ``{"op": "done", "id": N, "code": C}`` when it ended (code 0: it ended
  normally, whatever outputs.pb / error.pb say; 130: cancelled). A line in the end journal
  (``TASKDECK_WORKER_ENDS``, see ``journal.py``) says the same, for an engine that was not there to hear it.
* ``{"op": "cancel", "id": N}`` cancels that action only. An async body is cancelled; a sync body (it
  runs in a thread, which cannot be stopped) that has not returned within ``grace`` seconds makes the
  worker reply ``{"op": "recycle", ...}`` and exit, so the pool replaces it.
* End of stdin (the engine stopped or died): no new actions; the running ones finish, then it exits.

Per action: its own log (whatever the action prints, through a context variable, also from its sync
thread), stamped per line as ``launcher.py`` does; at concurrency 1 the action's environment variables
and working directory are set for it and restored after it. At concurrency > 1 they are shared, as the
SDK documents. ``sys.exit()`` in a task fails that action with an error.pb (the worker survives);
``os._exit`` or a crash kills the worker, and the engine fails the actions it was running.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib.util
import json
import os
import resource
import sys
import threading
import time
import traceback

CANCELLED_CODE = 130
SYNC_THREAD_PREFIX = "sync-executor-"  # flyte._utils.asyncify.run_sync_in_thread names its threads so
_current_log: contextvars.ContextVar = contextvars.ContextVar("taskdeck_action_log", default=None)


def _load_protocol():
    """``pipe_protocol.py`` beside this file, by path (run with -P, its directory is not on sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipe_protocol.py")
    spec = importlib.util.spec_from_file_location("_taskdeck_pipe_protocol", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = _load_protocol()
launcher = protocol.load_sibling("launcher.py")


class ActionLog:
    """One action's log file: what it writes, one stamped line at a time (as ``launcher.py`` stamps)."""

    def __init__(self, path: str, header: str = ""):
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the engine leaves the action's log directory to the worker
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.lock = threading.Lock()
        self.pending = ""
        if header:
            os.write(self.fd, launcher.stamped(header, time.time()))

    def write(self, text: str) -> None:
        with self.lock:
            lines = (self.pending + text).split("\n")
            self.pending = lines.pop()
            if lines:
                os.write(self.fd, launcher.stamped("\n".join(lines), time.time()))

    def close(self) -> None:
        with self.lock:
            if self.pending:
                os.write(self.fd, launcher.stamped(self.pending, time.time()))
                self.pending = ""
            os.close(self.fd)


class RoutedStream:
    """``sys.stdout`` / ``sys.stderr``: to the current action's log, else to the worker's own log."""

    def __init__(self, fallback):
        self.fallback = fallback

    def write(self, text: str) -> int:
        target = _current_log.get()
        if target is None:
            return self.fallback.write(text)
        target.write(text)
        return len(text)

    def flush(self) -> None:
        if _current_log.get() is None:
            self.fallback.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.fallback.fileno()

    def __getattr__(self, name):
        return getattr(self.fallback, name)


_A0_OPTIONS: dict[str, object] | None = None  # option string -> click.Option of the SDK's a0 command
A0_FROM_ENV = {"run_base_dir": "_U_RUN_BASE", "org": "_U_ORG_NAME", "project": "FLYTE_INTERNAL_EXECUTION_PROJECT",
               "domain": "FLYTE_INTERNAL_EXECUTION_DOMAIN", "name": "ACTION_NAME", "run_name": "RUN_NAME"}


def _a0_params(argv: list[str], env: dict[str, str]) -> dict:
    """The task's ``a0`` command line, parsed as ``a0`` parses it (the SDK's own option declarations); the
    env fills what a0 reads from env. Click's full parse costs ~0.25 ms an action: this walks the tokens
    once, and leaves anything it does not know (a new option, a typo) to click and its error messages."""
    global _A0_OPTIONS
    import click
    from flyte._bin.runtime import main as a0

    if _A0_OPTIONS is None:
        _A0_OPTIONS = {opt: p for p in a0.params if isinstance(p, click.Option) for opt in p.opts}
    params: dict = {p.name: None for p in a0.params}
    positional: list[str] = []
    tokens = list(argv[1:])
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            positional += tokens[i + 1:]
            break
        option, _, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        param = _A0_OPTIONS.get(option)
        if param is None:
            if token.startswith("-") and token != "-":
                return _a0_params_by_click(argv, env)
            positional.append(token)
            i += 1
            continue
        if inline or "=" in token:
            value, i = inline, i + 1
        elif i + 1 < len(tokens):
            value, i = tokens[i + 1], i + 2
        else:
            return _a0_params_by_click(argv, env)
        params[param.name] = param.type.convert(value, param, None) if param.type is not click.STRING else value
    params["resolver_args"] = tuple(positional)
    for name, variable in A0_FROM_ENV.items():
        if params.get(name) is None and env.get(variable):
            params[name] = env[variable]
    missing = [p.opts[0] for p in a0.params if getattr(p, "required", False) and params.get(p.name) is None]
    if missing:
        raise ValueError(f"the task's a0 command line lacks {', '.join(missing)}")
    return params


def _a0_params_by_click(argv: list[str], env: dict[str, str]) -> dict:
    from flyte._bin.runtime import main as a0

    extra = []
    for name, variable in A0_FROM_ENV.items():
        if env.get(variable):
            extra += ["--" + name.replace("_", "-"), env[variable]]
    return a0.make_context("a0", extra + list(argv[1:])).params  # given twice, the task's own argv wins


def _run_start_time(text: str | None):
    from datetime import datetime, timezone

    if not text or text.startswith("{{"):
        return None
    raw = text.strip()
    if raw.endswith("Z"):
        raw = raw[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return parsed.replace(tzinfo=timezone.utc) if parsed.tzinfo is None else parsed.astimezone(timezone.utc)


class Worker:
    def __init__(self, requests_fd: int, replies_fd: int, grace: float):
        self.requests_fd = requests_fd
        self.replies_fd = replies_fd
        self.grace = grace
        self.concurrency = int(os.environ.get("TASKDECK_WORKER_CONCURRENCY", "1"))
        self.controller = None
        self.actions: dict[int, asyncio.Task] = {}
        self.sync_actions: set[int] = set()
        self.base_env = dict(os.environ)
        self.base_cwd = os.getcwd()
        self.tasks_loaded: dict[tuple, object] = {}
        self.served = 0
        self.closing = False
        ends = os.environ.get("TASKDECK_WORKER_ENDS")
        self.ends_fd = os.open(ends, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600) if ends else None

    def reply(self, message: dict) -> None:
        protocol.write_message(self.replies_fd, message)

    async def start(self) -> None:
        started = time.perf_counter()
        import flyte.errors
        from flyte._initialize import init_in_cluster
        from flyte._internal.controllers import create_controller

        asyncio.get_running_loop().set_exception_handler(flyte.errors.silence_polling_error)
        kwargs = await init_in_cluster.aio()
        self.controller = create_controller(ct="remote", **kwargs)
        self.reply({"op": "ready", "pid": os.getpid(), "startSeconds": round(time.perf_counter() - started, 3),
                    "modules": len(sys.modules), "python": sys.version.split()[0]})

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 22)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(self.requests_fd, "rb"))
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                request, op, ident = protocol.decode_request(line)
            except protocol.BadRequest as exc:
                self.reply({"op": "error", "id": None, "message": str(exc)})
                continue
            if op == "run":
                self.actions[ident] = loop.create_task(self.run(ident, request))
            elif op == "cancel":
                loop.create_task(self.cancel(ident))
            else:
                self.reply({"op": "error", "id": ident, "message": f"unknown op {op!r}"})
        self.closing = True  # the engine is gone: finish what runs, take nothing new
        if self.actions:
            await asyncio.gather(*self.actions.values(), return_exceptions=True)

    def _load(self, params: dict):
        """The task object, loaded once per (resolver, args, bundle): the user's module stays imported."""
        key = (params.get("resolver"), tuple(params.get("resolver_args") or ()), params.get("tgz"), params.get("pkl"))
        task = self.tasks_loaded.get(key)
        return key, task

    async def run(self, ident: int, request: dict) -> None:
        action_log = ActionLog(request["log"], request.get("header", ""))
        token = _current_log.set(action_log)
        outputs = request["outputs"]
        code = 0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        isolated = self.concurrency == 1
        try:
            if isolated:
                os.environ.clear()
                os.environ.update({**self.base_env, **request.get("env", {})})
                os.chdir(request.get("cwd") or self.base_cwd)
            self.reply({"op": "started", "id": ident})
            await self._run_action(ident, request, outputs)
        except asyncio.CancelledError:
            code = CANCELLED_CODE
            print("[taskdeck] action cancelled", file=sys.stderr)
        except BaseException:  # noqa: BLE001 - anything the SDK did not turn into an error.pb: the worker writes it
            code = 1
            traceback.print_exc()
        finally:
            after = resource.getrusage(resource.RUSAGE_SELF)
            action_log.close()
            _current_log.reset(token)
            if isolated:
                os.environ.clear()
                os.environ.update(self.base_env)
                try:
                    os.chdir(self.base_cwd)
                except OSError:
                    pass
            self.actions.pop(ident, None)
            self.sync_actions.discard(ident)
            self.served += 1
            report = {"code": code, "worker": os.getpid()}
            if isolated:  # one action at a time: the process's CPU is this action's
                report["cpuSeconds"] = round(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, 4)
            if self.ends_fd is not None:  # for an engine that was not there to hear the reply
                try:
                    os.write(self.ends_fd, (json.dumps({"outputs": outputs, **report}) + "\n").encode())
                except OSError:
                    pass
            self.reply({"op": "done", "id": ident, **report})

    async def _run_action(self, ident: int, request: dict, outputs: str) -> None:
        import flyte.errors
        from flyte._internal.runtime.convert import convert_from_native_to_error
        from flyte._internal.runtime.entrypoints import _classify_load_error, _download_and_load_task
        from flyte._internal.runtime.io import upload_error
        from flyte._internal.runtime.rusty import run_task
        from flyte.models import CodeBundle

        params = _a0_params(request["argv"], {**self.base_env, **request.get("env", {})})
        bundle = None
        if params.get("tgz") or params.get("pkl"):
            bundle = CodeBundle(tgz=params["tgz"], pkl=params["pkl"], destination=params["dest"],
                                computed_version=params["version"])
        try:
            key, task = self._load(params)
            if task is None:
                task = await _download_and_load_task(bundle, params["resolver"], list(params["resolver_args"]))
                self.tasks_loaded[key] = task
            if getattr(task, "_call_as_synchronous", False):
                self.sync_actions.add(ident)
            await run_task(
                task, self.controller, org=params["org"], project=params["project"], domain=params["domain"],
                run_name=params["run_name"], name=params["name"], raw_data_path=params["raw_data_path"],
                output_path=params["outputs_path"], run_base_dir=params["run_base_dir"], version=params["version"],
                image_cache=params.get("image_cache"), checkpoint_path=params.get("checkpoint_path"),
                prev_checkpoint=params.get("prev_checkpoint"), code_bundle=bundle, input_path=params["inputs"],
                run_start_time=_run_start_time(params.get("run_start_time")))
        except (flyte.errors.RuntimeSystemError, flyte.errors.RuntimeUserError) as exc:
            err = convert_from_native_to_error(exc)
            await upload_error(err.err, outputs, recoverable=err.recoverable)
        except SystemExit as exc:  # the task called sys.exit(): as a fresh process would, it failed
            status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            print(f"[taskdeck] the task called sys.exit({exc.code!r}) in a reusable worker", file=sys.stderr)
            if status != 0 or not os.path.exists(os.path.join(outputs, "outputs.pb")):
                error = flyte.errors.RuntimeUserError(
                    "SystemExit", f"the task called sys.exit({exc.code!r}) before it returned")
                err = convert_from_native_to_error(error)
                await upload_error(err.err, outputs, recoverable=True)
        except Exception as exc:  # noqa: BLE001 - a load failure, as entrypoints.load_and_run_task reports it
            error = _classify_load_error(exc)
            traceback.print_exc()
            err = convert_from_native_to_error(error if isinstance(
                error, (flyte.errors.RuntimeSystemError, flyte.errors.RuntimeUserError)) else
                flyte.errors.RuntimeUserError(type(exc).__name__, str(exc)))
            await upload_error(err.err, outputs, recoverable=err.recoverable)

    async def cancel(self, ident: int) -> None:
        task = self.actions.get(ident)
        if task is None:
            return
        sync = ident in self.sync_actions
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not sync:
            return
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and self._sync_threads():
            await asyncio.sleep(0.05)
        if self._sync_threads():  # a sync body cannot be stopped: this worker goes, its pool replaces it
            self.reply({"op": "recycle", "id": ident, "reason": "a cancelled sync task body did not return"})
            sys.stdout.flush()
            os._exit(0)

    @staticmethod
    def _sync_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith(SYNC_THREAD_PREFIX) and t.is_alive()]


def main() -> int:
    requests_fd, replies_fd = protocol.take_pipes()
    sys.stdout = RoutedStream(sys.stdout)
    sys.stderr = RoutedStream(sys.stderr)
    sys.path.insert(0, ".")  # as a0 does: the code directory
    worker = Worker(requests_fd, replies_fd, float(os.environ.get("TASKDECK_WORKER_GRACE", "3")))

    async def go() -> None:
        await worker.start()
        await worker.serve()

    asyncio.run(go())
    return 0


if __name__ == "__main__":
    sys.exit(main())
