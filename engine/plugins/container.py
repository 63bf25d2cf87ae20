"""Local container plugin: runs container tasks (``python``, ``container``, ...) as local processes.

The image is recorded, not pulled. Flyte's template variables in the args are substituted, the process
gets the environment the ``flyte`` SDK's entrypoint needs, stdout/stderr go to a per-attempt log file, and
the outcome is read from ``outputs.pb`` / ``error.pb`` (the exit code alone is not trusted: the SDK exits 0
after catching a user error). Each process leads its own process group so abort kills all of it.

Each task runs under the launcher (``launcher.py``), which stamps every line of its output with the
time it was written. A process that outlives the engine (kill -9) is adopted on restart: its pid and
start time are in the plugin state, and it is polled until it exits. No task runs unrecorded: the
launcher waits on its stdin, the launch marker is written, and only then is it told to go. An engine
killed in between closes the pipe, the launcher exits without running anything, and the next engine sees
a recorded launch that ended without outputs (a system failure, relaunched). A forked task's files and
marker are made by its fork server, which lets it run once the marker is written and only while the
engine's pipe is open (``zygote_server.py``): the engine's part of a forked launch is one request.

Task processes get a clean environment (see ``task_setup.INHERITED_ENV``), not the engine's, and the
secrets they ask for as files at /etc/flyte/secrets, in a mount namespace of their own
(``secret_mounts.py``), where this machine allows one (``why_no_secret_mounts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.plugins.core import (
    PhaseInfo,
    Plugin,
    PluginError,
    StorageFaultError,
    TaskExecutionContext,
    TaskInfo,
    Transition,
)
from engine.plugins.launcher import stamped
from engine.plugins.outcome import read_outcome
from engine.plugins.process import alive, gone, kill_group, launch, stop
from engine.plugins.slots import ProcessSlots, default_capacity
from engine.plugins.attempt_files import LayoutError, lay_out, write_marker
from engine.plugins.task_setup import TaskProcessSetup, layout_failure
from engine.plugins.zygotes import ZygoteError, ZygotePool, ZygoteRefused, sdk_entrypoint_interpreter
from engine.plugins.task_target import primary_container

log = logging.getLogger(__name__)

STATE_VERSION = 1
MARKER = ".taskdeck-process.json"  # beside the attempt's outputs: the launch survives a lost status write
TERMINATE_GRACE_SECONDS = 3.0
ADOPTED_POLL_SECONDS = 0.5
EXIT_CODES_KEPT = 4096
START_OPTION = "TASKDECK_START"  # in a task's env: "exec" for a fresh interpreter instead of a fork
START_MODES = ("fork", "exec")
SECRET_MOUNTS = str(Path(__file__).with_name("secret_mounts.py"))

def _marker_path(tctx: TaskExecutionContext) -> str:
    return os.path.join(tctx.output_prefix, MARKER)


class _Running:
    """A launched process until it is reaped: its pid, how to await its exit, what started it."""

    def __init__(self, pid: int, wait: Callable[[], Awaitable[int | None]], state: dict):
        self.pid = pid
        self.wait = wait
        self.state = state  # the plugin state (and the marker) that records it
        self.exit_code: int | None = None
        self.ended = False
        self.done = asyncio.Event()


class LocalContainerPlugin(Plugin):
    id = "container"
    task_types = ("container", "python", "raw-container", "sidecar", "pod", "python-task")
    is_default = True
    mounts_secret_values = True

    def __init__(self, max_processes: int | None = None, bin_dir: str | None = None, pass_env: tuple[str, ...] = (),
                 work_dir: Path | None = None, start_mode: str = "fork", max_zygotes: int = 4):
        if start_mode not in START_MODES:
            raise ValueError(f"start mode must be one of {', '.join(START_MODES)}, not {start_mode!r}")
        self.slots = ProcessSlots(max_processes or default_capacity())
        self.setup = TaskProcessSetup(bin_dir, pass_env)
        self.start_mode = start_mode
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.zygotes = ZygotePool(self.work_dir, max_zygotes) if self.work_dir is not None else None
        self._running: dict[str, _Running] = {}
        self._adopted: dict[str, tuple[int, int | None]] = {}
        self._exit_codes: dict[str, int | None] = {}  # finished processes, until finalize
        self._process_of: dict[str, str] = {}  # TaskAction name → generated name of its running process
        self._secret_mounts: asyncio.Future | None = None  # why file secrets cannot be mounted here, or None

    # ---------------------------------------------------------------- secrets asked for as files
    @property
    def secret_scratch(self) -> Path | None:
        """The empty directory each task that mounts secrets covers with its tmpfs, in its namespace only."""
        return self.work_dir / "secret-mounts" if self.work_dir is not None else None

    async def why_no_secret_mounts(self) -> str | None:
        """None when a task process here can have secrets mounted as files; else why not (probed once)."""
        if self._secret_mounts is None:
            self._secret_mounts = asyncio.ensure_future(self._probe_secret_mounts())
        return await asyncio.shield(self._secret_mounts)

    async def _probe_secret_mounts(self) -> str | None:
        scratch = self.secret_scratch
        if scratch is None:
            return "the engine has no work directory"
        try:
            await asyncio.to_thread(scratch.mkdir, 0o700, True, True)
            probe = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", SECRET_MOUNTS, "--probe", str(scratch),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
            _, err = await probe.communicate()
        except OSError as exc:
            return f"cannot probe for mount namespaces: {exc.strerror or exc}"
        if probe.returncode == 0:
            return None
        reason = err.decode(errors="replace").strip() or f"the probe exited {probe.returncode}"
        return f"a task process here cannot have a mount namespace of its own ({reason})"

    def _secret_files(self, tctx: TaskExecutionContext) -> dict | None:
        if not tctx.secret_file_values:
            return None
        return {"files": tctx.secret_file_values, "scratch": str(self.secret_scratch)}

    # ---------------------------------------------------------------- handle
    async def handle(self, tctx: TaskExecutionContext) -> Transition:
        state = tctx.plugin_state.get()
        name = tctx.metadata.generated_name
        if state is None or state.get("phase") != "Started":
            adopted = self._adopt_marker(tctx)
            if adopted is not None:
                return Transition.of(adopted)
            parent = self._process_of.get(tctx.metadata.parent_owner_name or "")
            if not self.slots.acquire(name, parent, tctx.enqueue_owner):  # reserved before any await
                return Transition.of(PhaseInfo.waiting_for_resources(
                    reason=f"waiting for a free process slot ({self.slots.capacity} running)", woken=True))
            try:
                return Transition.of(await self._launch(tctx))
            except BaseException:
                if name not in self._running:
                    self.slots.release(name)
                raise
        return Transition.of(self._observe(tctx, state))

    def _fork_interpreter(self, argv: list[str], shared: dict[str, str]) -> str | None:
        """The interpreter to fork this action from, or None: it starts as a fresh process."""
        mode = shared.get(START_OPTION, self.start_mode)
        if mode not in START_MODES:
            raise PluginError(f"{START_OPTION} must be one of {', '.join(START_MODES)}, not {mode!r}",
                              code="BadTaskSpecification")
        if mode != "fork" or self.zygotes is None:
            return None
        return sdk_entrypoint_interpreter(argv[0])

    async def _launch(self, tctx: TaskExecutionContext) -> PhaseInfo:
        argv = self.setup.argv(tctx)
        shared, own = self.setup.environment(tctx)
        env = {**shared, **own}
        if self.setup.needs_files(tctx):  # a code bundle to unpack (once): not on the event loop
            planned = await asyncio.to_thread(self.setup.plan, tctx)
        else:
            planned = self.setup.plan(tctx)
        if isinstance(planned, PhaseInfo):
            return planned
        cwd, layout = planned
        interpreter = self._fork_interpreter(argv, shared)
        zygote = await self.zygotes.get(interpreter, shared) if interpreter else None
        how = f"forked by the task environment's fork server (pid {zygote.pid})" if zygote else "a fresh process"
        image = primary_container(tctx.task_template).image
        layout["log"] = str(tctx.log_path)
        layout["header"] = stamped(
            f"[taskdeck] attempt {tctx.metadata.attempt} of {tctx.metadata.owner_name}; image {image or '-'} "
            f"recorded, not pulled; running locally in {cwd}, {how}\n[taskdeck] $ {shlex.join(argv)}",
            time.time()).decode()
        state = {"phase": "Started", "startedAt": time.time(), "image": image}
        running = None
        if zygote is not None:
            running = await self._fork(zygote, argv, env, cwd, layout, state, tctx)
            if isinstance(running, PhaseInfo):
                return running
        if running is None:
            running = await self._exec(argv, env, cwd, layout, state, tctx)
            if isinstance(running, PhaseInfo):
                return running
        name = tctx.metadata.generated_name
        self._running[name] = running
        self._process_of[tctx.metadata.owner_name] = name
        asyncio.get_running_loop().create_task(self._reap(name, tctx.metadata.owner_name, running, tctx.enqueue_owner))
        tctx.plugin_state.put(STATE_VERSION, running.state)
        return PhaseInfo.running(info=TaskInfo(log_path=str(tctx.log_path), custom={"pid": running.pid}))

    async def _fork(self, zygote, argv, env, cwd, layout, state, tctx) -> _Running | PhaseInfo | None:
        """The fork server lays out the attempt, records the launch and starts it: the engine's file work
        per action is one request. None: it could not, and nothing runs (start a fresh process)."""
        marker = _marker_path(tctx)
        state = {**state, "start": "fork"}
        try:
            pid, ticks = await zygote.spawn(argv, env, cwd, str(tctx.log_path), layout,
                                            {"path": marker, "state": state}, self._secret_files(tctx))
        except ZygoteRefused as exc:
            failed = exc.reply.get("layout")
            if failed:
                error = OSError(failed.get("errno") or 0, failed.get("strerror") or str(exc))
                return layout_failure(LayoutError(failed.get("part", "dirs"), failed.get("path", ""), error), layout)
            if exc.reply.get("marker"):  # a launch it cannot record must not run: nor may a fresh one
                raise StorageFaultError(marker, OSError(str(exc))) from exc
            log.warning("%s: the fork server could not start it (%s); starting a fresh process",
                        tctx.metadata.generated_name, exc)
            return None
        except ZygoteError as exc:
            if os.path.exists(marker):  # it went away after recording the launch: that process is the attempt
                log.warning("%s: the fork server went away (%s) after starting it: adopting it",
                            tctx.metadata.generated_name, exc)
                return self._adopt_marker(tctx)
            log.warning("%s: the fork server could not start it (%s); starting a fresh process",
                        tctx.metadata.generated_name, exc)
            return None
        return _Running(pid, lambda: zygote.wait(pid), {**state, "pid": pid, "startTicks": ticks})

    async def _exec(self, argv, env, cwd, layout, state, tctx) -> _Running | PhaseInfo:
        try:
            lay_out(layout)
        except LayoutError as exc:
            return layout_failure(exc, layout)  # the code's tree; storage raises
        try:  # the launcher's own output (it has none unless it breaks) goes to the log unstamped
            process = await launch(argv, env=env, cwd=cwd, log_path=tctx.log_path, stamped=True, gated=True)
        except OSError as exc:
            raise PluginError(f"could not start {argv[0]}: {exc}") from exc
        state = {**state, "start": "exec", "pid": process.pid, "startTicks": process.start_ticks}
        marker = _marker_path(tctx)
        try:
            write_marker(marker, state)
        except OSError as exc:  # a launch we cannot record must not run: the launcher still waits
            kill_group(process.pid, signal.SIGKILL)
            await process.wait()
            raise StorageFaultError(marker, exc) from exc
        secret_files = self._secret_files(tctx)
        await process.go({"secretFiles": secret_files} if secret_files else None)  # recorded: now it may run
        return _Running(process.pid, process.wait, state)

    def _adopt_marker(self, tctx: TaskExecutionContext) -> PhaseInfo | None:
        """A process this attempt launched but whose status write was lost: adopt it, don't launch again."""
        name = tctx.metadata.generated_name
        marker = _marker_path(tctx)
        if name not in self._running and not os.path.exists(marker):
            return None
        try:
            with open(marker) as f:
                state = json.load(f)
        except (OSError, ValueError):
            if name not in self._running:
                return None
            state = self._running[name].state  # what its launch recorded
        tctx.plugin_state.put(STATE_VERSION, state)
        return self._observe(tctx, state)

    async def _reap(self, name: str, owner: str, running: _Running, enqueue_owner) -> None:
        running.exit_code = await running.wait()
        running.ended = True
        running.done.set()
        self._forget_process(owner, name)
        enqueue_owner()

    def _observe(self, tctx: TaskExecutionContext, state: dict) -> PhaseInfo:
        name = tctx.metadata.generated_name
        info = TaskInfo(log_path=str(tctx.log_path), custom={"pid": state.get("pid")})
        running = self._running.get(name)
        if running is not None:
            if not running.ended:
                return PhaseInfo.running(info=info)
            del self._running[name]
            self._exit_codes[name] = running.exit_code
            while len(self._exit_codes) > EXIT_CODES_KEPT:  # kept for a status write that must be retried
                self._exit_codes.pop(next(iter(self._exit_codes)))
        if name in self._exit_codes:
            return read_outcome(tctx, self._exit_codes[name], info)
        pid, ticks = state.get("pid"), state.get("startTicks")
        if pid and alive(pid, ticks):
            if name not in self._adopted:
                log.info("adopting running process %s of %s", pid, name)
                self._adopted[name] = (pid, ticks)
                self.slots.adopt(name)
                self._process_of[tctx.metadata.owner_name] = name
                asyncio.get_running_loop().create_task(
                    self._poll_adopted(name, tctx.metadata.owner_name, pid, ticks, tctx.enqueue_owner))
            return PhaseInfo.running(info=info)
        self._adopted.pop(name, None)
        return read_outcome(tctx, None, info)

    async def _poll_adopted(self, name: str, owner: str, pid: int, ticks: int | None, enqueue_owner) -> None:
        while name in self._adopted and alive(pid, ticks):
            await asyncio.sleep(ADOPTED_POLL_SECONDS)
        self._adopted.pop(name, None)
        self._forget_process(owner, name)
        enqueue_owner()

    # ---------------------------------------------------------------- abort / finalize
    async def abort(self, tctx: TaskExecutionContext) -> None:
        """Stop the attempt's whole process group and forget it: the next launch starts afresh."""
        name = tctx.metadata.generated_name
        with contextlib.suppress(OSError):
            os.unlink(_marker_path(tctx))
        running = self._running.pop(name, None)
        self._exit_codes.pop(name, None)
        try:
            if running is not None:
                if not running.ended:
                    await stop(running.pid, running.done.wait, TERMINATE_GRACE_SECONDS)
                return
            state = tctx.plugin_state.get() or {}
            pid, ticks = state.get("pid"), state.get("startTicks")
            self._adopted.pop(name, None)
            if pid and alive(pid, ticks):
                await stop(pid, lambda: gone(pid, ticks), TERMINATE_GRACE_SECONDS)
        finally:
            self._forget_process(tctx.metadata.owner_name, name)

    async def finalize(self, tctx: TaskExecutionContext) -> None:
        name = tctx.metadata.generated_name
        self._exit_codes.pop(name, None)
        self._forget_process(tctx.metadata.owner_name, name)

    def _forget_process(self, owner: str, name: str) -> None:
        """``name`` (a process of TaskAction ``owner``) is over: its slot goes on, its children lend no more."""
        self.slots.release(name)
        if self._process_of.get(owner) == name:
            del self._process_of[owner]

    async def close(self) -> None:
        """Processes keep running when the engine stops; the next engine adopts them."""
        self._running.clear()
        self._adopted.clear()
        if self.zygotes is not None:
            await self.zygotes.close()
