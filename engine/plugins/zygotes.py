"""The engine's side of the fork servers (``zygote_server.py``): one per task environment, started on demand.

A task environment is the interpreter its ``a0`` entrypoint runs on plus the environment variables every
action of it shares (the image's basics, the task's container env, the engine's runtime settings); the
per-action variables (names, credentials, run env vars) are set in each forked task. A zygote that cannot
start, or refuses to fork, is not fatal: the action starts as a fresh process instead (``launcher.py``),
and the zygote is tried again later.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import logging
import os
import time
from pathlib import Path

from engine.plugins.pipe_protocol import HelperStartError, encode, read_messages, ready_message
from engine.plugins.process import alive, kill_group, launch_helper

log = logging.getLogger(__name__)

SERVER = str(Path(__file__).with_name("zygote_server.py"))
START_TIMEOUT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 30.0
RETRY_AFTER_FAILURE_SECONDS = 60.0
LOST_POLL_SECONDS = 0.2
USAGE_KEPT = 1000
ENTRYPOINT_MARK = b"from flyte._bin.runtime import main"


class ZygoteError(Exception):
    pass


class ZygoteRefused(ZygoteError):
    """The fork server answered that it ran nothing (``reply`` says why)."""

    def __init__(self, message: str, reply: dict):
        super().__init__(message)
        self.reply = reply


def sdk_entrypoint_interpreter(executable: str) -> str | None:
    """The interpreter of an ``a0`` console script of the flyte SDK, or None for anything else."""
    if os.path.basename(executable) != "a0":
        return None
    try:
        modified = os.stat(executable).st_mtime_ns
    except OSError:
        return None
    return _script_interpreter(executable, modified)


@functools.lru_cache(maxsize=64)
def _script_interpreter(executable: str, modified: int) -> str | None:
    """Read once per version of the script (``modified``), not once per launch."""
    try:
        with open(executable, "rb") as f:
            head = f.read(1024)
    except OSError:
        return None
    if not head.startswith(b"#!") or ENTRYPOINT_MARK not in head:
        return None
    interpreter = head[2:].split(b"\n", 1)[0].strip().decode(errors="replace")
    if " " in interpreter or not os.path.isabs(interpreter) or not os.access(interpreter, os.X_OK):
        return None  # "#!/usr/bin/env python" and friends: not an interpreter we can name
    return interpreter


def environment_key(interpreter: str, env: dict[str, str]) -> str:
    digest = hashlib.sha256(interpreter.encode())
    for key in sorted(env):
        digest.update(f"\0{key}={env[key]}".encode())
    return digest.hexdigest()[:16]


class Zygote:
    """One fork server process: its requests, replies and the exits of the supervisors it forked."""

    def __init__(self, key: str, interpreter: str, env: dict[str, str], log_path: Path, cwd: str):
        self.key = key
        self.interpreter = interpreter
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None
        self.info: dict = {}
        self.alive = False
        self.started_at = 0.0
        self.last_used = time.monotonic()
        self.forks = 0
        self.cpu_seconds = 0.0  # of the actions it forked that have ended
        self.usage: collections.OrderedDict[int, dict] = collections.OrderedDict()  # pid → exit report (CPU,
        # faults) of the last USAGE_KEPT actions: what the bench and the console show of the fork path
        self._next_id = 0
        self._requests: dict[int, asyncio.Future] = {}
        self._exits: dict[int, asyncio.Future] = {}
        self._ticks: dict[int, int | None] = {}
        self._reader: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        self.process = await launch_helper(self.interpreter, SERVER, env=self.env, cwd=self.cwd,
                                                  log_path=self.log_path)
        self.started_at = time.time()
        try:
            ready = await ready_message(self.process, START_TIMEOUT_SECONDS, "the fork server", self.log_path)
        except HelperStartError as exc:
            await self.close()
            raise ZygoteError(str(exc)) from exc
        if ready.get("threads") != 1 or ready.get("loops") != 0:
            await self.close()
            raise ZygoteError(f"the fork server has {ready.get('threads')} threads and {ready.get('loops')} open "
                              "event loops after its imports: not fork-safe")
        self.info = ready
        self.alive = True
        self._reader = asyncio.get_running_loop().create_task(self._read(), name=f"zygote-{self.key}")

    def _send(self, message: dict) -> None:
        if not self.alive or self.process is None or self.process.stdin is None:
            raise ZygoteError("the fork server is not running")
        self.process.stdin.write(encode(message))

    async def _request(self, message: dict) -> dict:
        ident = self._next_id = self._next_id + 1
        future = asyncio.get_running_loop().create_future()
        self._requests[ident] = future
        try:
            self._send({**message, "id": ident})
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            await self.kill()  # so it cannot start the request later: whether it did, the marker tells
            raise ZygoteError("the fork server did not answer") from None
        finally:
            self._requests.pop(ident, None)

    async def spawn(self, argv: list[str], env: dict[str, str], cwd: str, log_path: str, layout: dict,
                    marker: dict, secret_files: dict | None = None) -> tuple[int, int | None]:
        """Lay out the attempt's files, fork a supervisor, record the launch (``marker``), let it run (with
        ``secret_files`` mounted first). Returns (pid, start ticks). ZygoteRefused: nothing ran;
        ZygoteError: the server is gone or hung, and whether it recorded the launch is for the marker."""
        self.last_used = time.monotonic()
        request = {"op": "spawn", "argv": argv, "env": env, "cwd": cwd, "log": log_path, "layout": layout,
                   "marker": marker}
        if secret_files:
            request["secretFiles"] = secret_files
        reply = await self._request(request)
        if reply.get("op") != "spawned":
            raise ZygoteRefused(reply.get("message") or f"unexpected reply {reply}", reply)
        pid = int(reply["pid"])
        self.forks += 1
        ticks = reply.get("startTicks")
        self._ticks[pid] = ticks
        self._exits.setdefault(pid, asyncio.get_running_loop().create_future())
        return pid, ticks

    async def wait(self, pid: int) -> int | None:
        """The supervisor's exit code; None when the zygote went away first (then: once it is gone)."""
        try:
            return await asyncio.shield(self._exits[pid])
        finally:
            if self._exits[pid].done():
                self._exits.pop(pid, None)

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            async for message in read_messages(self.process.stdout, f"fork server {self.key}", log):
                op = message.get("op")
                if op == "exit":
                    pid = int(message["pid"])
                    future = self._exits.setdefault(pid, asyncio.get_running_loop().create_future())
                    if not future.done():
                        future.set_result(int(message["code"]))
                    self._ticks.pop(pid, None)
                    self.cpu_seconds += float(message.get("cpuSeconds") or 0)
                    self.usage[pid] = message
                    while len(self.usage) > USAGE_KEPT:
                        self.usage.popitem(last=False)
                else:
                    future = self._requests.get(message.get("id"))
                    if future is not None and not future.done():
                        future.set_result(message)
        finally:
            self.alive = False
            for future in self._requests.values():
                if not future.done():
                    future.set_exception(ZygoteError("the fork server exited"))
            for pid, future in self._exits.items():
                if not future.done():  # it outlives the zygote: watch it as the engine watches adopted ones
                    asyncio.get_running_loop().create_task(self._watch_orphan(pid, future))

    async def _watch_orphan(self, pid: int, future: asyncio.Future) -> None:
        ticks = self._ticks.get(pid)
        while alive(pid, ticks):
            await asyncio.sleep(LOST_POLL_SECONDS)
        if not future.done():
            future.set_result(None)

    async def kill(self) -> None:
        """A hung server: gone at once (the actions it forked lead their own sessions and keep running)."""
        self.alive = False
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()

    async def close(self) -> None:
        """Stop the server; the actions it forked keep running (each in its own session)."""
        self.alive = False
        process = self.process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(Exception):
                process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 5)
        except asyncio.TimeoutError:
            kill_group(process.pid, 9)
            await process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    def snapshot(self) -> dict:
        return {"key": self.key, "pid": self.pid, "alive": self.alive, "forks": self.forks,
                "interpreter": self.interpreter, "startedAt": self.started_at,
                "importSeconds": self.info.get("importSeconds"), "modules": self.info.get("modules"),
                "threads": self.info.get("threads"), "loops": self.info.get("loops")}


class ZygotePool:
    """Fork servers by task environment: started on first use, at most ``max_zygotes``, idle ones retired."""

    def __init__(self, work_dir: Path, max_zygotes: int = 4, idle_seconds: float = 900.0):
        self.work_dir = Path(work_dir)
        self.max_zygotes = max_zygotes
        self.idle_seconds = idle_seconds
        self._zygotes: dict[str, Zygote] = {}
        self._starting: dict[str, asyncio.Task] = {}
        self._failed: dict[str, tuple[float, str]] = {}

    async def get(self, interpreter: str, env: dict[str, str]) -> Zygote | None:
        """The environment's running zygote (started if need be), or None: start a fresh process."""
        key = environment_key(interpreter, env)
        zygote = self._zygotes.get(key)
        if zygote is not None and zygote.alive:
            return zygote
        failed = self._failed.get(key)
        if failed is not None and time.monotonic() - failed[0] < RETRY_AFTER_FAILURE_SECONDS:
            return None
        starting = self._starting.get(key)
        if starting is None:
            starting = asyncio.get_running_loop().create_task(self._start(key, interpreter, env))
            self._starting[key] = starting
        try:
            return await asyncio.shield(starting)
        except ZygoteError:
            return None

    async def _start(self, key: str, interpreter: str, env: dict[str, str]) -> Zygote:
        try:
            await self._retire_for(key)
            zygote = Zygote(key, interpreter, env, self.work_dir / "zygotes" / f"{key}.log", str(self.work_dir))
            try:
                await zygote.start()
            except (OSError, ZygoteError) as exc:
                self._failed[key] = (time.monotonic(), str(exc))
                log.warning("fork server for %s did not start (%s): actions start as fresh processes", key, exc)
                raise ZygoteError(str(exc)) from exc
            self._failed.pop(key, None)
            self._zygotes[key] = zygote
            log.info("fork server %s ready (pid %s, %.2f s of imports, %s modules)", key, zygote.pid,
                     zygote.info.get("importSeconds", 0), zygote.info.get("modules"))
            return zygote
        finally:
            self._starting.pop(key, None)

    async def _retire_for(self, key: str) -> None:
        """Make room: the dead one of this key, idle ones, then the least recently used beyond the cap."""
        old = self._zygotes.pop(key, None)
        if old is not None:
            await old.close()
        now = time.monotonic()
        for other in [z for z in self._zygotes.values() if now - z.last_used > self.idle_seconds or not z.alive]:
            self._zygotes.pop(other.key, None)
            await other.close()
        while len(self._zygotes) >= self.max_zygotes:
            oldest = min(self._zygotes.values(), key=lambda z: z.last_used)
            self._zygotes.pop(oldest.key, None)
            await oldest.close()

    def running(self) -> list[Zygote]:
        return list(self._zygotes.values())

    def snapshot(self) -> list[dict]:
        return [z.snapshot() for z in self._zygotes.values()]

    async def close(self) -> None:
        for task in list(self._starting.values()):
            task.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        zygotes, self._zygotes = list(self._zygotes.values()), {}
        await asyncio.gather(*(z.close() for z in zygotes), return_exceptions=True)
