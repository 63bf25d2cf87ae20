"""The engine's HTTP server (uvicorn, ASGI): TaskDeck's JSON API under ``/taskdeck/v1/`` and the SDK's
Connect services, both behind the front door in ``engine/http_gate.py``.

The JSON API is what ``taskdeck run`` / ``get`` / ``abort`` use while an engine serves a data directory.
Every field is read with its type and bounds; a bad one is a 400 naming it. Errors are JSON
``{"error": ..., "field": ...}`` with 400, 401, 403, 404, 405, 409, 413, 415 or 503; an unexpected one is a
500 that says no more than that (the engine log has the traceback).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import uvicorn
from flyteidl2.task import common_pb2, task_definition_pb2

from engine.auth import Authority
from engine.errors import InvalidRunError, PermissionDeniedError, RunNotFoundError
from engine.http_gate import Gate, current_principal, send_json
from engine.names import InvalidNameError, check_action_name, check_run_name
from engine.paths import resolves_within
from engine.runs import RunsService
from engine.storage_health import StorageHealth
from engine.store.base import AlreadyExistsError, StorageUnavailableError
from engine.views import action_json, cache_entry_json, event_json

log = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
MAX_TEXT = 4096
MAX_KEYS = 10_000


class HttpError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field


def _reject_constant(name: str):
    raise ValueError(f"{name} is not allowed in JSON")


class Request:
    """A request's JSON object and query string, read with types and bounds (400 naming the field)."""

    def __init__(self, body: bytes, query_string: bytes):
        try:
            payload = json.loads(body, parse_constant=_reject_constant) if body.strip() else {}
        except RecursionError:
            raise HttpError(400, "the JSON body is nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise HttpError(400, "the JSON body must be an object")
        self.body: dict[str, Any] = payload
        try:
            self.query = {k: v[-1] for k, v in parse_qs(query_string.decode(), strict_parsing=False).items()}
        except UnicodeDecodeError:
            raise HttpError(400, "the query string is not UTF-8") from None

    def text(self, name: str, default: str | None = None, *, max_len: int = MAX_TEXT) -> str | None:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, str) or len(value) > max_len or "\x00" in value:
            raise HttpError(400, f"{name} must be text of at most {max_len} characters", name)
        return value

    def name(self, name: str, default: str | None = None) -> Any:
        """A project, domain or run name as sent: ``engine/names.py`` judges it, whatever its type."""
        value = self.body.get(name)
        return default if value is None else value

    def flag(self, name: str) -> bool:
        value = self.body.get(name, False)
        if not isinstance(value, bool):
            raise HttpError(400, f"{name} must be true or false", name)
        return value

    def texts(self, name: str, *, max_items: int = MAX_KEYS) -> list[str] | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not (isinstance(value, list) and len(value) <= max_items
                and all(isinstance(v, str) and len(v) <= MAX_TEXT for v in value)):
            raise HttpError(400, f"{name} must be a list of at most {max_items} strings", name)
        return value

    def blob(self, name: str, *, required: bool = False) -> bytes:
        value = self.body.get(name)
        if value is None or value == "":
            if required:
                raise HttpError(400, f"{name} is required (base64 of the serialized message)", name)
            return b""
        if not isinstance(value, str):
            raise HttpError(400, f"{name} must be a base64 string", name)
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise HttpError(400, f"{name} is not valid base64", name) from None

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        raw = self.query.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not minimum <= value <= maximum:  # NaN fails both comparisons
            raise HttpError(400, f"{name} must be a number from {minimum:g} to {maximum:g}", name)
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        raw = self.query.get(name)
        if raw is None:
            return default
        if not re.fullmatch(r"\d{1,12}", raw) or not minimum <= int(raw) <= maximum:
            raise HttpError(400, f"{name} must be a whole number from {minimum} to {maximum}", name)
        return int(raw)


def _message(cls, data: bytes, field: str):
    message = cls()
    try:
        message.ParseFromString(data)
    except Exception as exc:  # noqa: BLE001 - DecodeError, RecursionError: the client's bytes
        raise HttpError(400, f"{field} is not a valid {cls.__name__}: {exc}", field) from None
    return message


class TaskDeckApi:
    """JSON endpoints over the engine's runs service."""

    prefix = "/taskdeck/v1"

    def __init__(self, runs: RunsService, health: StorageHealth, data_dir: Path, allowed_code_dirs: list[Path]):
        self.runs = runs
        self.health = health
        self.data_dir = data_dir
        self.allowed_code_dirs = [str(data_dir), *map(str, allowed_code_dirs)]
        run, action = r"(?P<run>[^/]+)", r"(?P<action>[^/]+)"
        self.routes: list[tuple[str, re.Pattern, Callable]] = [
            ("GET", re.compile(r"^/health$"), self.health_status),
            ("GET", re.compile(r"^/runs$"), self.list_runs),
            ("POST", re.compile(r"^/runs$"), self.create_run),
            ("GET", re.compile(rf"^/runs/{run}$"), self.get_run),
            ("GET", re.compile(rf"^/runs/{run}/actions$"), self.list_actions),
            ("GET", re.compile(rf"^/runs/{run}/actions/{action}/events$"), self.list_events),
            ("POST", re.compile(rf"^/runs/{run}/wait$"), self.wait_run),
            ("POST", re.compile(rf"^/runs/{run}/abort$"), self.abort),
            ("POST", re.compile(rf"^/runs/{run}/signal$"), self.signal),
            ("POST", re.compile(rf"^/runs/{run}/retry$"), self.retry),
            ("GET", re.compile(r"^/cache$"), self.list_cache),
            ("POST", re.compile(r"^/cache/evict$"), self.evict_cache),
        ]

    async def __call__(self, scope, receive, send) -> None:
        # Routes match the path as sent, so an encoded '/' stays inside its segment (and fails its name check).
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?", 1)[0]
        path = path[len(self.prefix):] if path.startswith(self.prefix) else path
        allowed = []
        for method, pattern, handler in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            if scope["method"] != method:
                allowed.append(method)
                continue
            params = {k: unquote(v, errors="strict") for k, v in match.groupdict().items()}
            status, result = await self._answer(handler, scope, params)
            await send_json(send, status, result)
            return
        if allowed:
            await send_json(send, 405, {"error": f"{scope['method']} is not allowed on {scope['path']}; use "
                                                 f"{', '.join(allowed)}", "field": None},
                            [(b"allow", ", ".join(allowed).encode())])
            return
        await send_json(send, 404, {"error": f"no route for {scope['method']} {scope['path']}", "field": None})

    async def _answer(self, handler, scope, params: dict[str, str]) -> tuple[int, Any]:
        try:
            if "run" in params:
                check_run_name(params["run"])
            if "action" in params:
                check_action_name(params["action"])
            request = Request(scope.get("taskdeck.body", b""), scope.get("query_string", b""))
            return 200, await handler(request, **params)
        except HttpError as exc:
            return exc.status, {"error": str(exc), "field": exc.field}
        except InvalidNameError as exc:
            return 400, {"error": str(exc), "field": exc.field, "rule": exc.rule}
        except InvalidRunError as exc:
            return 400, {"error": str(exc), "field": exc.field}
        except (RunNotFoundError, LookupError) as exc:
            return 404, {"error": str(exc), "field": None}
        except AlreadyExistsError as exc:
            return 409, {"error": str(exc), "field": None}
        except PermissionDeniedError as exc:
            return 403, {"error": str(exc), "field": None}
        except StorageUnavailableError as exc:
            return 503, {"error": f"storage unavailable: {exc}", "field": None}
        except Exception:  # noqa: BLE001 - a bad request never takes the engine down, nor leaks its insides
            log.exception("API %s %s failed", scope["method"], scope["path"])
            return 500, {"error": "internal error (the engine log has the details)", "field": None}

    # ------------------------------------------------------------------ routes
    async def health_status(self, request: Request) -> Any:
        error = self.health.error
        status = {"status": "degraded" if error else "ok", "storage": "unavailable" if error else "ok"}
        if current_principal() is not None and current_principal().is_owner:
            status.update({"storageError": error, "dataDir": str(self.data_dir)})
        return status

    async def list_runs(self, request: Request) -> Any:
        runs = await self.runs.list_runs(request.integer("limit", 200, minimum=1, maximum=100_000))
        return [action_json(r) for r in runs]

    async def create_run(self, request: Request) -> Any:
        spec = _message(task_definition_pb2.TaskSpec, request.blob("taskSpec", required=True), "taskSpec")
        inputs = _message(common_pb2.Inputs, request.blob("inputs"), "inputs")
        code_dir = request.text("codeDir")
        if code_dir is not None and not (resolves_within(code_dir, self.allowed_code_dirs)
                                         and Path(code_dir).is_dir()):
            raise HttpError(400, f"codeDir {code_dir!r} is not a directory this engine allows: the data directory "
                                 f"or {', '.join(self.allowed_code_dirs[1:]) or 'nothing else'} (start the engine "
                                 "with --allow-dir DIR to add one)", "codeDir")
        env_vars = request.body.get("envVars")
        record = await self.runs.create_run(
            spec, inputs, project=request.name("project", "flytesnacks"),
            domain=request.name("domain", "development"), name=request.name("name"),
            code_dir=code_dir, env_vars=env_vars,
        )
        return action_json(record)

    async def get_run(self, request: Request, run: str) -> Any:
        return (await self.runs.result(run)).to_json()

    async def list_actions(self, request: Request, run: str) -> Any:
        actions = await self.runs.list_actions(run)
        return [action_json(a, self.runs.task_action_of(a)) for a in actions]

    async def list_events(self, request: Request, run: str, action: str) -> Any:
        record = await self.runs.get_run(run)
        events = await self.runs.list_events((record.project, record.domain, record.run_name, action))
        return [event_json(e) for e in events]

    async def wait_run(self, request: Request, run: str) -> Any:
        timeout = request.number("timeout", 60, minimum=0, maximum=3600)
        try:
            return (await self.runs.wait_for_run(run, timeout)).to_json()
        except TimeoutError:
            return {**(await self.runs.result(run)).to_json(), "timedOut": True}

    async def signal(self, request: Request, run: str) -> Any:
        action = request.text("action")
        if action is None:
            raise HttpError(400, "action is required: the condition's action name or its own name", "action")
        value = request.text("value", "")
        action = await self.runs.signal_text(run, action, value, request.text("by", "taskdeck-cli", max_len=256))
        return {"signalled": action}

    async def retry(self, request: Request, run: str) -> Any:
        names = await self.runs.retry_action(run, request.text("action", "a0", max_len=64),
                                             who=request.text("by", "taskdeck-cli", max_len=256),
                                             why=request.text("reason", ""))
        return {"retried": names}

    async def list_cache(self, request: Request) -> Any:
        task = request.query.get("task") or None
        if task is not None and len(task) > 255:
            raise HttpError(400, "task must be at most 255 characters", "task")
        entries = await self.runs.list_cache(task, request.integer("limit", 1000, minimum=1, maximum=100_000))
        return [cache_entry_json(e) for e in entries]

    async def evict_cache(self, request: Request) -> Any:
        evicted = await self.runs.evict_cache(request.texts("keys"), request.text("task", max_len=255),
                                              request.flag("all"))
        return {"evicted": evicted}

    async def abort(self, request: Request, run: str) -> Any:
        await self.runs.abort_action(run, request.text("action", "a0", max_len=64),
                                     request.text("reason", "aborted"))
        return {"aborted": True}


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the engine owns signal handling, not the embedded server
        yield


class ApiServer:
    def __init__(self, api: TaskDeckApi, connect_apps: list, authority: Authority, host: str, port: int, *,
                 max_body_bytes: int, advertise_host: str | None = None):
        self.host = host
        self.port = port
        self.mounts: list[tuple[str, ASGIApp]] = [(TaskDeckApi.prefix, api), ("/health", api)]
        self.mounts += [(app.path, app) for app in connect_apps]
        self.gate = Gate(authority, max_body_bytes=max_body_bytes, advertise_host=advertise_host,
                         connect_prefixes=[app.path for app in connect_apps])
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    async def app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await self.gate(scope, receive, send, self._dispatch)

    async def _dispatch(self, scope, receive, send) -> None:
        for prefix, app in self.mounts:
            if scope["path"] == prefix or scope["path"].startswith(prefix + "/"):
                await app(scope, receive, send)
                return
        await send_json(send, 404, {"error": f"not found: {scope['path']}", "field": None})

    async def start(self) -> str:
        config = uvicorn.Config(self.app, host=self.host, port=self.port, lifespan="off", log_level="warning",
                                interface="asgi3", timeout_graceful_shutdown=2, access_log=False,
                                h11_max_incomplete_event_size=64 * 1024)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(), name="api-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raise why it could not start
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.01)
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self.gate.port = port
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
