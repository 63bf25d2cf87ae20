"""The engine's loopback HTTP server (uvicorn, ASGI).

It serves TaskDeck's JSON API under ``/taskdeck/v1/`` (what ``taskdeck run`` / ``taskdeck get`` use while an
engine serves a data directory) and is where the SDK's Connect services are mounted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import uvicorn
from flyteidl2.task import common_pb2, task_definition_pb2

from engine.runs import InvalidRunError, RunNotFoundError
from engine.store.base import StorageUnavailableError
from engine.views import action_json, cache_entry_json, event_json, task_action_for

if TYPE_CHECKING:
    from engine.engine import Engine

log = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the engine owns signal handling, not the embedded server
        yield


async def _read_body(receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _send_json(send, status: int, payload: Any) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class TaskDeckApi:
    """JSON endpoints over the engine's runs service."""

    prefix = "/taskdeck/v1"

    def __init__(self, engine: Engine):
        self.engine = engine
        self.routes: list[tuple[str, re.Pattern, Callable]] = [
            ("GET", re.compile(r"^/health$"), self.health),
            ("GET", re.compile(r"^/runs$"), self.list_runs),
            ("POST", re.compile(r"^/runs$"), self.create_run),
            ("GET", re.compile(r"^/runs/(?P<run>[^/]+)$"), self.get_run),
            ("GET", re.compile(r"^/runs/(?P<run>[^/]+)/actions$"), self.list_actions),
            ("GET", re.compile(r"^/runs/(?P<run>[^/]+)/actions/(?P<action>[^/]+)/events$"), self.list_events),
            ("POST", re.compile(r"^/runs/(?P<run>[^/]+)/wait$"), self.wait_run),
            ("POST", re.compile(r"^/runs/(?P<run>[^/]+)/abort$"), self.abort),
            ("POST", re.compile(r"^/runs/(?P<run>[^/]+)/signal$"), self.signal),
            ("POST", re.compile(r"^/runs/(?P<run>[^/]+)/retry$"), self.retry),
            ("GET", re.compile(r"^/cache$"), self.list_cache),
            ("POST", re.compile(r"^/cache/evict$"), self.evict_cache),
        ]

    async def __call__(self, scope, receive, send) -> None:
        path = scope["path"][len(self.prefix):]
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        for method, pattern, handler in self.routes:
            match = pattern.match(path)
            if match and scope["method"] == method:
                try:
                    body = await _read_body(receive)
                    payload = json.loads(body) if body else {}
                    result = await handler(payload=payload, query=query, **match.groupdict())
                except HttpError as exc:
                    await _send_json(send, exc.status, {"error": str(exc)})
                except (RunNotFoundError, LookupError) as exc:
                    await _send_json(send, 404, {"error": str(exc)})
                except (InvalidRunError, ValueError) as exc:
                    await _send_json(send, 400, {"error": str(exc)})
                except StorageUnavailableError as exc:
                    await _send_json(send, 503, {"error": f"storage unavailable: {exc}"})
                except Exception as exc:  # noqa: BLE001 - a bad request never takes the engine down
                    log.exception("API %s %s failed", method, path)
                    await _send_json(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
                else:
                    await _send_json(send, 200, result)
                return
        await _send_json(send, 404, {"error": f"no route for {scope['method']} {scope['path']}"})

    async def health(self, payload, query) -> Any:
        return {"storageError": self.engine.store.storage_error, "dataDir": str(self.engine.data_dir)}

    async def list_runs(self, payload, query) -> Any:
        runs = await self.engine.runs.list_runs(int(query.get("limit", 200)))
        return [action_json(r) for r in runs]

    async def create_run(self, payload, query) -> Any:
        try:
            spec = task_definition_pb2.TaskSpec()
            spec.ParseFromString(base64.b64decode(payload["taskSpec"]))
            inputs = common_pb2.Inputs()
            inputs.ParseFromString(base64.b64decode(payload.get("inputs", "")))
        except Exception as exc:  # noqa: BLE001
            raise HttpError(400, f"taskSpec/inputs are not valid: {exc}") from exc
        record = await self.engine.runs.create_run(
            spec, inputs, project=payload.get("project") or "flytesnacks",
            domain=payload.get("domain") or "development", name=payload.get("name"),
            code_dir=payload.get("codeDir"), env_vars=payload.get("envVars"),
        )
        return action_json(record)

    async def get_run(self, payload, query, run) -> Any:
        return (await self.engine.runs.result(run)).to_json()

    async def list_actions(self, payload, query, run) -> Any:
        actions = await self.engine.runs.list_actions(run)
        return [action_json(a, task_action_for(self.engine.store, a)) for a in actions]

    async def list_events(self, payload, query, run, action) -> Any:
        record = await self.engine.runs.get_run(run)
        events = await self.engine.runs.list_events((record.project, record.domain, record.run_name, action))
        return [event_json(e) for e in events]

    async def wait_run(self, payload, query, run) -> Any:
        timeout = float(query.get("timeout", 60))
        try:
            return (await self.engine.runs.wait_for_run(run, timeout)).to_json()
        except TimeoutError:
            return {**(await self.engine.runs.result(run)).to_json(), "timedOut": True}

    async def signal(self, payload, query, run) -> Any:
        action = await self.engine.runs.signal_text(run, str(payload.get("action", "")), str(payload.get("value", "")),
                                                    payload.get("by") or "taskdeck-cli")
        return {"signalled": action}

    async def retry(self, payload, query, run) -> Any:
        names = await self.engine.runs.retry_action(run, payload.get("action") or "a0",
                                                    who=payload.get("by") or "taskdeck-cli", why=payload.get("reason") or "")
        return {"retried": names}

    async def list_cache(self, payload, query) -> Any:
        entries = await self.engine.runs.list_cache(query.get("task") or None, int(query.get("limit", 1000)))
        return [cache_entry_json(e) for e in entries]

    async def evict_cache(self, payload, query) -> Any:
        keys = payload.get("keys")
        if keys is not None and not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise HttpError(400, "keys must be a list of strings")
        evicted = await self.engine.runs.evict_cache(keys or None, payload.get("task") or None,
                                                     bool(payload.get("all")))
        return {"evicted": evicted}

    async def abort(self, payload, query, run) -> Any:
        await self.engine.runs.abort_action(run, payload.get("action") or "a0", payload.get("reason") or "aborted")
        return {"aborted": True}


class ApiServer:
    def __init__(self, engine: Engine, host: str, port: int):
        self.engine = engine
        self.host = host
        self.port = port
        self.api = TaskDeckApi(engine)
        self.mounts: list[tuple[str, ASGIApp]] = [(TaskDeckApi.prefix, self.api)]
        self.mounts += [(app.path, app) for app in engine.controller_services.apps()]
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    async def app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        for prefix, app in self.mounts:
            if scope["path"] == prefix or scope["path"].startswith(prefix + "/"):
                await app(scope, receive, send)
                return
        await _send_json(send, 404, {"error": f"not found: {scope['path']}"})

    async def start(self) -> str:
        config = uvicorn.Config(self.app, host=self.host, port=self.port, lifespan="off", log_level="warning", interface="asgi3",
                                timeout_graceful_shutdown=2, access_log=False)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(), name="api-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raise why it could not start
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.01)
        sock = self._server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
