"""A fork server (zygote) for one task environment: Python and the flyte SDK imported once, a fork per action.

    python -P zygote_server.py        (its environment is the task environment's, minus per-action variables)

The engine talks to it in JSON lines over stdin/stdout; its own stderr is its log. Per action:

1. ``{"op": "spawn", "id": N, "argv": [...], "env": {...}, "cwd": "...", "log": "...", "layout": {...},
   "marker": {"path": "...", "state": {...}}, "secretFiles": {...}}`` (the last only when the task asks
   for secrets as files: the task mounts them first, as ``launcher.py`` does): it lays out the attempt's
   files (``attempt_files.lay_out``: directories, working tree, stale outputs cleared, the log's first
   line), forks the task, which leads a new session (so a process-group kill stops the action and
   nothing else), records the launch (the marker, with the task's pid and start time), and only
   then lets it run. The reply is
   ``{"op": "spawned", "id": N, "pid": P, "startTicks": T}``, or ``{"op": "error", ...}`` having run
   nothing (with ``"layout": {"part", "path", "errno", "strerror"}`` when the files could not be made).
   An engine gone before the launch was recorded (its requests pipe hung up) gets nothing run: the
   task exits 111, as ``launcher.py`` does. The engine's file work per action is this one request.
2. The task gets the action's environment, working directory and argv, then runs the SDK's ``a0``
   entrypoint in-process: fresh module state for the user's code (none of it is imported here), its own
   process. It writes its own log (``write_output_to_the_log``): ``sys.stdout``/``sys.stderr`` stamp each
   line as the launcher does, and fd 1 and 2 append to the log, so what a subprocess or C code writes
   there directly is kept as it is, without a time. No supervisor process sits between the server and
   the task (it cost ~5 ms of CPU per action: a second fork from a 70 MiB process, its copy-on-write
   faults and its exit); the task's log needs no reader, so it keeps its log if the server dies.
3. ``{"op": "exit", "pid": P, "code": C, "cpuSeconds": ...}`` when a task ends (the server reaps it).

Fork safety: nothing here runs a thread or an event loop when it forks. Importing flyte starts the SDK's
syncify loop thread, so it is stopped after the imports and a fresh one is started in each task. Before
every fork the server counts its threads (``/proc/self/task``) and refuses to fork with more than one.

Done once here instead of in every task: the imports (~0.3 s), the SDK's type-transformer entry-point
scan (idempotent in the SDK), its check of what pyqwest's transport takes (an ``inspect.signature`` that
costs ~18 ms cold), ``gc.freeze()`` (the tasks' collections skip what is shared), and a few
pristine TLS contexts with certifi's CA bundle loaded, which ``ssl.create_default_context(cafile=certifi)``
hands out unused (each costs ~25 ms to build and the SDK builds two per process for its HTTP sessions).
And a task's sessions to the engine (plain HTTP) skip loading the system trust store they never use
(``plain_http_sessions_skip_the_trust_store``: ~5-8 ms per transport, two per task), and its config
lookup skips running git where no repository can be found (``config_lookup_skips_git_outside_a_repository``).
"""

from __future__ import annotations

import atexit
import gc
import importlib
import importlib.util
import os
import select
import signal
import sys
import time
import traceback

REFUSED_EXIT = 111
TLS_CONTEXTS_PER_TASK = 4
# What an `a0` process imports besides the user's code, so that a task imports (almost) nothing.
PRELOAD = (
    "faulthandler", "certifi", "httpx", "httpcore", "h11", "anyio",
    "flyte", "flyte._bin.runtime", "flyte._utils", "flyte.errors", "flyte.storage", "flyte._initialize",
    "flyte._internal.controllers", "flyte._internal.controllers.remote",
    "flyte._internal.controllers.remote._controller", "flyte._internal.controllers.remote._core",
    "flyte._internal.controllers.remote._client", "flyte._internal.image_cache",
    "flyte._internal.runtime.entrypoints", "flyte._internal.runtime.taskrunner", "flyte._internal.runtime.convert",
    "flyte._internal.runtime.io", "flyte._internal.resolvers.default", "flyte._logging", "flyte.models",
    "flyte.git", "flyte._module", "flyte._utils.asyncify",
    "flyte.remote._client.controlplane", "flyte.remote._client.auth._session",
    "flyte.remote._client.auth._authenticators.factory", "flyte.remote._client.auth._interceptors.default_metadata",
    "flyte.remote._client.auth._interceptors.retry", "flyte.remote._client.auth._keyring",
    "flyteidl2.actions.actions_service_connect", "flyteidl2.workflow.queue_service_connect",
    "flyteidl2.workflow.state_service_connect", "opentelemetry.propagate", "opentelemetry.trace",
    "opentelemetry.baggage.propagation", "opentelemetry.trace.propagation.tracecontext",
    "importlib.resources.readers", "opentelemetry.metrics", "pyqwest._glue",
)

# A command line as the engine gives ``a0`` (every option it passes): parsed, never run, to warm click
A0_WARM_UP_ARGS = (
    "--inputs", "/warm/inputs.pb", "--outputs-path", "/warm/1", "--version", "0", "--run-base-dir", "/warm",
    "--raw-data-path", "/warm/1", "--checkpoint-path", "/warm/1/_flytecheckpoints", "--prev-checkpoint", "",
    "--run-name", "warm", "--name", "a0", "--run-start-time", "2026-01-01T00:00:00+00:00", "--project", "warm",
    "--domain", "warm", "--org", "warm", "--image-cache", "x", "--tgz", "/warm/code.tgz", "--dest", ".",
    "--resolver", "flyte._internal.resolvers.default.DefaultTaskResolver", "mod", "warm", "instance", "warm",
)


def _load_protocol():
    """``pipe_protocol.py`` beside this file, by path (run with -P, its directory is not on sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipe_protocol.py")
    spec = importlib.util.spec_from_file_location("_taskdeck_pipe_protocol", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = _load_protocol()


def open_event_loops() -> int:
    """Event loops not closed, anywhere in the heap: a forked child must not inherit one (a full scan: rare)."""
    import asyncio

    return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and not o.is_closed())


def thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


def plain_http_sessions_skip_the_trust_store() -> None:
    """A session the SDK opens to a plain-HTTP endpoint (the engine's, for every task) makes no TLS
    connection, yet its transport loads the system trust store (~5-8 ms, twice per task): skip it there.
    The SDK resolves a session's CA bundle right before it builds the transport, so that step records
    whether the session is plain; the next trust-store question consumes it, and any other (a client
    rebuilt later, a TLS session) gets the SDK's own answer."""
    import contextvars

    from flyte.remote._client.auth import _session

    resolve, supports = _session._resolve_tls_ca_cert, _session._supports_system_certs
    plain = contextvars.ContextVar("taskdeck_plain_http_session", default=False)

    async def resolve_tls_ca_cert(endpoint, *, insecure, **kwargs):
        plain.set(bool(insecure))
        return await resolve(endpoint, insecure=insecure, **kwargs)

    def supports_system_certs() -> bool:
        was_plain = plain.get()
        plain.set(False)
        return not was_plain and supports()

    _session._resolve_tls_ca_cert = resolve_tls_ca_cert
    _session._supports_system_certs = supports_system_certs


GIT_LOCATION_VARIABLES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR")


def outside_any_git_work_tree(start: str) -> bool:
    """Whether ``git rev-parse --show-toplevel`` run in ``start`` must fail: no ``.git`` in it or any
    directory above it, and no variable pointing git elsewhere (git looks nowhere else)."""
    if any(os.environ.get(name) for name in GIT_LOCATION_VARIABLES):
        return False
    directory = os.path.abspath(start)
    while True:
        if os.path.lexists(os.path.join(directory, ".git")):
            return False
        parent = os.path.dirname(directory)
        if parent == directory:
            return True
        directory = parent


def config_lookup_skips_git_outside_a_repository() -> None:
    """The SDK looks for a config file at the git root of the working directory by running
    ``git rev-parse --show-toplevel`` (once per task, ~5.6 ms of CPU: a fork and an exec of git) when a
    task module defines an image. An action's working directory is in the data directory, which is
    rarely in a repository: there the answer is known without git. Anywhere else, the SDK asks git."""
    from flyte.config import _reader

    from_git_root = _reader._config_path_from_git_root

    def config_path_from_git_root():
        try:
            if outside_any_git_work_tree(os.getcwd()):
                return None
        except OSError:
            pass
        return from_git_root()

    _reader._config_path_from_git_root = config_path_from_git_root


MADV_COLLAPSE = 25  # Linux >= 6.1: make these pages huge pages now, whatever the THP setting (but "never")
HUGE_PAGE = 2 << 20


def collapse_into_huge_pages() -> int:
    """Move the server's anonymous memory (the imported modules' objects) into 2 MiB pages: a fork then
    copies one page-table entry for each instead of 512, and a task's exit tears down as few (a task that
    writes into one gets that one split and a 4 KiB copy, as before). Measured in interleaved fan(100)
    pairs: the server's CPU per fork -0.8 ms, the fan-out's wall -9% (noisy). Returns the bytes collapsed (0
    where the kernel cannot: older than 6.1, THP off, no memory to spare)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        with open("/proc/self/maps") as f:
            regions = f.read().splitlines()
    except (OSError, AttributeError):
        return 0
    collapsed = 0
    for region in regions:
        fields = region.split()
        path = fields[5] if len(fields) > 5 else ""
        if not fields[1].startswith("rw") or path not in ("", "[heap]"):
            continue  # only private anonymous memory: not files, not the stack
        start, end = (int(address, 16) for address in fields[0].split("-"))
        first, last = -(-start // HUGE_PAGE) * HUGE_PAGE, end // HUGE_PAGE * HUGE_PAGE
        for chunk in range(first, last, HUGE_PAGE):  # one by one: a chunk that cannot be stops no other
            if libc.madvise(chunk, HUGE_PAGE, MADV_COLLAPSE) == 0:
                collapsed += HUGE_PAGE
    return collapsed


class Preloaded:
    """What the zygote did once, and how a forked task takes it over."""

    def __init__(self) -> None:
        self.import_seconds = 0.0
        self.failed: list[str] = []
        self.background_loops: list = []
        self.tls_contexts: list = []
        self.cafile: str | None = None
        self.huge_page_bytes = 0

    def load(self) -> None:
        started = time.perf_counter()
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception as exc:  # noqa: BLE001 - another SDK version: the task imports it itself
                self.failed.append(f"{name}: {exc}")
        self.import_seconds = time.perf_counter() - started
        try:
            from flyte.types import _load_custom_type_transformers

            _load_custom_type_transformers()
        except Exception as exc:  # noqa: BLE001
            self.failed.append(f"type transformers: {exc}")
        self._warm_caches()
        self._stop_background_loops()
        self._prepare_tls()
        gc.collect()
        gc.freeze()
        self.huge_page_bytes = collapse_into_huge_pages()

    def _warm_caches(self) -> None:
        """What every task computes once and caches, whatever its environment: computed here instead."""
        try:  # inspect.signature of pyqwest's transport: ~18 ms, most of it compiling tokenize's regexes
            from flyte.remote._client.auth._session import _supports_system_certs

            _supports_system_certs()
        except Exception as exc:  # noqa: BLE001 - another SDK version
            self.failed.append(f"system certs check: {exc}")
        try:  # click's first parse of a command line in a process: ~3.9 ms cold, ~1.1 ms once warmed here
            from flyte._bin.runtime import main as a0

            a0.make_context("a0", list(A0_WARM_UP_ARGS))
        except Exception as exc:  # noqa: BLE001 - another SDK version: the task parses it cold
            self.failed.append(f"a0 parse: {exc}")
        try:  # regexes every task compiles (re caches them): its environment names, its storage paths
            import flyte._environment
            import fsspec.utils

            flyte._environment.is_snake_or_kebab_with_numbers("warm")
            fsspec.utils.get_protocol("/warm")
        except Exception as exc:  # noqa: BLE001 - another SDK version: the task compiles them itself
            self.failed.append(f"regex warm-up: {exc}")
        try:
            plain_http_sessions_skip_the_trust_store()
        except Exception as exc:  # noqa: BLE001
            self.failed.append(f"plain HTTP sessions: {exc}")
        try:
            config_lookup_skips_git_outside_a_repository()
        except Exception as exc:  # noqa: BLE001 - another SDK version: the SDK runs git itself
            self.failed.append(f"config lookup: {exc}")

    def _stop_background_loops(self) -> None:
        try:
            from flyte.syncify._api import _BackgroundLoop
        except ImportError:
            return
        # type() and not isinstance(): the SDK's lazy modules raise on any attribute access
        self.background_loops = [o for o in gc.get_objects() if type(o) is _BackgroundLoop]
        for loop in self.background_loops:
            loop.loop.call_soon_threadsafe(loop.loop.stop)
            loop.thread.join(timeout=5)
            loop.loop.close()
            atexit.unregister(loop.stop)

    def _prepare_tls(self) -> None:
        try:
            import ssl

            import certifi
        except ImportError:
            return
        self.cafile = certifi.where()
        self.tls_contexts = [ssl.create_default_context(cafile=self.cafile) for _ in range(TLS_CONTEXTS_PER_TASK)]
        build = ssl.create_default_context
        pristine, bundle = self.tls_contexts, self.cafile

        def create_default_context(purpose=ssl.Purpose.SERVER_AUTH, *, cafile=None, capath=None, cadata=None):
            if pristine and purpose == ssl.Purpose.SERVER_AUTH and cafile == bundle and capath is None \
                    and cadata is None:
                return pristine.pop()  # built with the same arguments and never used
            return build(purpose, cafile=cafile, capath=capath, cadata=cadata)

        ssl.create_default_context = create_default_context

    def restart_background_loops(self) -> None:
        for loop in self.background_loops:
            loop.__init__(loop.thread.name)


def write_output_to_the_log(launcher, log_path: str):
    """In the forked task: stdin from /dev/null, fd 1 and 2 appended to the action's log (what a C library
    or a subprocess writes lands there as it is), ``sys.stdout``/``sys.stderr`` stamped line by line as
    the launcher stamps (``launcher.StampedLines``), and the logging handlers that held the server's
    streams moved to the new ones. Returns the stream they share, to finish at exit."""
    import logging
    import threading

    launcher.standard_streams_onto(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
    raw = launcher.StampedLines(1, threading.Lock())
    stdout, stderr = launcher.stamped_text_stream(raw, sys.stdout), launcher.stamped_text_stream(raw, sys.stderr)
    replaced = {id(sys.__stdout__): stdout, id(sys.stdout): stdout, id(sys.__stderr__): stderr, id(sys.stderr): stderr}
    sys.stdout, sys.stderr = stdout, stderr
    loggers = [logging.getLogger()] + [item for item in logging.Logger.manager.loggerDict.values()
                                       if isinstance(item, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in replaced:
                handler.stream = replaced[id(handler.stream)]
    return raw


def run_action(preloaded: Preloaded, launcher, argv: list[str], env: dict[str, str], cwd: str,
               log_path: str) -> None:
    """In the forked task: become the action's process, run the SDK entrypoint, exit with its code."""
    code = 1
    stamped = None
    try:
        stamped = write_output_to_the_log(launcher, log_path)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(argv[0]))  # as for a script: its directory first
        signal.signal(signal.SIGINT, signal.default_int_handler)
        preloaded.restart_background_loops()
        from flyte._bin.runtime import main

        try:
            main(args=argv[1:], prog_name=os.path.basename(argv[0]))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - as an interpreter would: print it, exit 1
            traceback.print_exc()
            code = 1
        try:
            atexit._run_exitfuncs()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
    except BaseException:  # noqa: BLE001 - never return into the server's loop
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        if stamped is not None:
            try:
                stamped.finish()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


class Server:
    def __init__(self, requests_fd: int, replies_fd: int):
        self.requests_fd = requests_fd
        self.replies_fd = replies_fd
        self.launcher = protocol.load_sibling("launcher.py")
        self.files = protocol.load_sibling("attempt_files.py")
        self.process = protocol.load_sibling("process.py")
        self.preloaded = Preloaded()
        self.buffer = b""
        self.wake_r, self.wake_w = os.pipe()

    def reply(self, message: dict) -> None:
        protocol.write_message(self.replies_fd, message)

    def start(self) -> None:
        self.preloaded.load()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.reply({"op": "ready", "pid": os.getpid(), "threads": thread_count(), "loops": open_event_loops(),
                    "importSeconds": round(self.preloaded.import_seconds, 3), "modules": len(sys.modules),
                    "failed": self.preloaded.failed, "python": sys.version.split()[0],
                    "hugePageBytes": self.preloaded.huge_page_bytes})

    def serve(self) -> None:
        while True:
            try:
                readable, _, _ = select.select([self.requests_fd, self.wake_r], [], [])
            except InterruptedError:
                continue
            if self.wake_r in readable:
                os.read(self.wake_r, 4096)
            self.reap()
            if self.requests_fd in readable:
                data = os.read(self.requests_fd, 65536)
                if not data:
                    return  # the engine is gone
                self.buffer += data
                while b"\n" in self.buffer:
                    line, self.buffer = self.buffer.split(b"\n", 1)
                    if line.strip():
                        self.handle(line)

    def handle(self, line: bytes) -> None:
        try:
            request, op, ident = protocol.decode_request(line)
        except protocol.BadRequest as exc:
            self.reply({"op": "error", "id": None, "message": str(exc)})
            return
        if op == "spawn":
            self.spawn(ident, request)
        else:
            self.reply({"op": "error", "id": ident, "message": f"unknown op {op!r}"})

    def engine_gone(self) -> bool:
        """Whether the engine's end of the requests pipe hung up (it stopped or died)."""
        poller = select.poll()
        poller.register(self.requests_fd, select.POLLIN)
        return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))

    def spawn(self, ident, request: dict) -> None:
        threads = thread_count()
        if threads != 1:
            self.reply({"op": "error", "id": ident, "message": f"not forking: the zygote has {threads} threads"})
            return
        try:
            argv, env, cwd, log_path = request["argv"], request["env"], request["cwd"], request["log"]
            marker = request["marker"]
            marker_path, state = marker["path"], dict(marker["state"])
        except (KeyError, TypeError) as exc:
            self.reply({"op": "error", "id": ident, "message": f"spawn lacks {exc}"})
            return
        try:
            self.files.lay_out(request.get("layout") or {})
        except self.files.LayoutError as exc:
            self.reply({"op": "error", "id": ident, "message": f"the attempt's files: {exc}",
                        "layout": {"part": exc.part, "path": exc.path, "errno": exc.error.errno,
                                   "strerror": exc.error.strerror or str(exc.error)}})
            return
        go_r, go_w = os.pipe()
        for stream in (sys.stdout, sys.stderr):  # nothing of the server's may reach the task's log
            stream.flush()
        try:
            pid = os.fork()
        except OSError as exc:  # no memory or process slots left: refused, nothing ran
            os.close(go_r)
            os.close(go_w)
            self.reply({"op": "error", "id": ident, "message": f"cannot fork: {exc.strerror or exc}"})
            return
        if pid == 0:
            self.run_task(go_r, go_w, argv, env, cwd, log_path, request.get("secretFiles"))
        os.close(go_r)
        try:
            if self.engine_gone():
                return  # nobody to record it for: the task exits 111 having run nothing
            ticks = self.process.process_start_ticks(pid)
            try:
                self.files.write_marker(marker_path, {**state, "pid": pid, "startTicks": ticks})
            except OSError as exc:
                self.reply({"op": "error", "id": ident, "message": f"cannot record the launch in {marker_path}: "
                            f"{exc.strerror or exc}", "marker": True})
                return
            try:
                os.write(go_w, b"go\n")
            except OSError:
                pass  # the task died already: its exit is reported
            self.reply({"op": "spawned", "id": ident, "pid": pid, "startTicks": ticks})
        finally:
            os.close(go_w)

    def run_task(self, go_r: int, go_w: int, argv, env, cwd, log_path, secret_files=None) -> None:
        """The forked task: its own session, the go once the launch is recorded, the secrets it asks for
        as files mounted (``launcher.mount_secret_files``), then the action (``run_action``)."""
        code = REFUSED_EXIT
        try:
            os.setsid()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (self.requests_fd, self.replies_fd, self.wake_r, self.wake_w, go_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            go = os.read(go_r, 16)
            os.close(go_r)
            if go.strip() == b"go":
                code = self.launcher.mount_secret_files(secret_files, log_path)
                if code is None:
                    run_action(self.preloaded, self.launcher, argv, env, cwd, log_path)  # exits
        except BaseException:  # noqa: BLE001 - never return into the server's loop
            traceback.print_exc()
            code = 1
        os._exit(code)

    def reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            # the task's own usage (and its reaped children's): what one action cost
            self.reply({"op": "exit", "pid": pid, "code": code, "cpuSeconds": round(usage.ru_utime + usage.ru_stime, 4),
                        "userSeconds": round(usage.ru_utime, 4), "minorFaults": usage.ru_minflt})


def main() -> int:
    server = Server(*protocol.take_pipes())
    server.start()
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
