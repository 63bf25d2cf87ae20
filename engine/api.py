"""The engine's HTTP server (uvicorn, ASGI): TaskDeck's JSON API under ``/taskdeck/v1/`` and the SDK's
Connect services, both behind the front door in ``engine/http_gate.py``.

The JSON API is the client interface over HTTP: every route answers with what ``LocalClient`` answers
in-process (its views' JSON), so ``RemoteClient`` and the embedded console see the same engine. Fields
are read with their types and bounds (``engine/http_request.py``). Errors are JSON
``{"error": ..., "field": ...}`` with 400, 401, 403, 404, 405, 409, 413, 415 or 503; an unexpected one is a
500 that says no more than that (the engine log has the traceback). ``GET /changes`` streams the change
feed as JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import uvicorn

from engine.auth import Authority
from engine.client.local import LocalClient
from engine.client.models import ActionPhase, strict_dumps
from engine.errors import (
    AlreadyExistsError,
    InvalidRunError,
    PermissionDeniedError,
    RunNotFoundError,
    StorageUnavailableError,
)
from engine.http_gate import Gate, current_principal, send_json
from engine.http_request import HttpError, Request
from engine.http_protocol import BoundedHttpToolsProtocol
from engine.names import InvalidNameError, check_action_name, check_run_name
from engine.paths import resolves_within

log = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]


class Streamed:
    """A route's answer that is a stream of JSON lines (the change feed)."""

    def __init__(self, items):
        self.items = items


class TaskDeckApi:
    """JSON endpoints over the client interface's in-process implementation."""

    prefix = "/taskdeck/v1"

    def __init__(self, client: LocalClient, allowed_code_dirs: list[Path]):
        self.client = client
        self.data_dir = client.services.data_dir
        self.allowed_code_dirs = [str(self.data_dir), *map(str, allowed_code_dirs)]
        self.closing = asyncio.Event()  # set when the engine stops: streams end so the server can
        run, action, attempt = r"(?P<run>[^/]+)", r"(?P<action>[^/]+)", r"(?P<attempt>[^/]+)"
        one = rf"^/runs/{run}/actions/{action}"
        self.routes: list[tuple[str, re.Pattern, Callable]] = [
            ("GET", re.compile(r"^/health$"), self.health_status),
            ("GET", re.compile(r"^/runs$"), self.list_runs),
            ("POST", re.compile(r"^/runs$"), self.create_run),
            ("GET", re.compile(r"^/counts$"), self.run_counts),
            ("GET", re.compile(r"^/changes$"), self.changes),
            ("GET", re.compile(rf"^/runs/{run}$"), self.result),
            ("GET", re.compile(rf"^/runs/{run}/actions$"), self.list_actions),
            ("POST", re.compile(rf"^/runs/{run}/actions/batch$"), self.get_actions),
            ("GET", re.compile(rf"{one}$"), self.get_action),
            ("GET", re.compile(rf"{one}/events$"), self.list_events),
            ("GET", re.compile(rf"{one}/taskaction$"), self.task_action),
            ("GET", re.compile(rf"{one}/io$"), self.action_io),
            ("GET", re.compile(rf"{one}/condition$"), self.condition),
            ("GET", re.compile(rf"{one}/render$"), self.render),
            ("GET", re.compile(rf"{one}/cluster$"), self.cluster_object),
            ("GET", re.compile(rf"{one}/result$"), self.result),
            ("GET", re.compile(rf"{one}/logs/{attempt}$"), self.read_log),
            ("POST", re.compile(rf"^/runs/{run}/wait$"), self.wait_run),
            ("POST", re.compile(rf"^/runs/{run}/abort$"), self.abort),
            ("POST", re.compile(rf"^/runs/{run}/signal$"), self.signal),
            ("POST", re.compile(rf"^/runs/{run}/retry$"), self.retry),
            ("GET", re.compile(r"^/cache$"), self.list_cache),
            ("GET", re.compile(r"^/workers$"), self.list_workers),
            ("POST", re.compile(r"^/cache/evict$"), self.evict_cache),
            ("POST", re.compile(r"^/uploads$"), self.stage_input),
            ("GET", re.compile(r"^/tasks$"), self.list_tasks),
            ("POST", re.compile(r"^/tasks$"), self.deploy_task),
            ("POST", re.compile(r"^/tasks/get$"), self.get_task),
            ("POST", re.compile(r"^/tasks/run$"), self.run_task),
            ("GET", re.compile(r"^/triggers$"), self.list_triggers),
            ("POST", re.compile(r"^/triggers$"), self.deploy_trigger),
            ("POST", re.compile(r"^/triggers/active$"), self.set_trigger_active),
            ("POST", re.compile(r"^/triggers/history$"), self.trigger_history),
            ("GET", re.compile(r"^/projects$"), self.list_projects),
            ("POST", re.compile(r"^/projects$"), self.create_project),
            ("GET", re.compile(r"^/secrets$"), self.list_secrets),
            ("POST", re.compile(r"^/secrets$"), self.create_secret),
            ("POST", re.compile(r"^/secrets/delete$"), self.delete_secret),
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
            if isinstance(result, Streamed):
                await self._stream(result, receive, send)
            else:
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
        except AlreadyExistsError as exc:
            return 409, {"error": str(exc), "field": exc.field}
        except InvalidRunError as exc:
            return 400, {"error": str(exc), "field": exc.field}
        except (RunNotFoundError, LookupError) as exc:
            return 404, {"error": str(exc), "field": None}
        except PermissionDeniedError as exc:
            return 403, {"error": str(exc), "field": None}
        except StorageUnavailableError as exc:
            return 503, {"error": f"storage unavailable: {exc}", "field": None}
        except Exception:  # noqa: BLE001 - a bad request never takes the engine down, nor leaks its insides
            log.exception("API %s %s failed", scope["method"], scope["path"])
            return 500, {"error": "internal error (the engine log has the details)", "field": None}

    async def _stream(self, streamed: Streamed, receive, send) -> None:
        """JSON lines until the client leaves or the engine stops."""
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/x-ndjson"), (b"cache-control", b"no-store")]})

        async def pump() -> None:
            async for item in streamed.items:
                await send({"type": "http.response.body", "body": (strict_dumps(item) + "\n").encode(),
                            "more_body": True})

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(gone()),
                 asyncio.ensure_future(self.closing.wait())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):  # the client may be gone already
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    # ------------------------------------------------------------------ reads
    async def health_status(self, request: Request) -> Any:
        health = await self.client.health()
        principal = current_principal()
        if principal is not None and principal.is_owner:
            return {**health, "dataDir": str(self.data_dir)}
        return {"status": health["status"], "storage": health["storage"]}

    async def list_runs(self, request: Request) -> Any:
        runs = await self.client.list_runs(request.integer("limit", 200, minimum=1, maximum=100_000))
        return [r.to_json() for r in runs]

    async def run_counts(self, request: Request) -> Any:
        return {ActionPhase(phase).name: n for phase, n in (await self.client.run_counts()).items()}

    async def changes(self, request: Request) -> Any:
        cursor = request.query.get("cursor") or None
        if cursor is not None and len(cursor) > 64:
            raise HttpError(400, "cursor must be a cursor this feed gave", "cursor")
        run = request.query.get("run") or None
        if run is not None:
            check_run_name(run)

        async def items():
            async for change in self.client.changes(cursor, run):
                yield change.to_json()

        return Streamed(items())

    async def result(self, request: Request, run: str, action: str = "a0") -> Any:
        return await self.client.result(run, action)

    async def list_actions(self, request: Request, run: str) -> Any:
        views = [a.to_json() for a in await self.client.list_actions(run)]
        if request.query.get("taskActions") == "1":  # the CRD objects too, as `taskdeck get actions --json` shows
            for view in views:
                view["taskAction"] = await self.client.task_action(run, view["name"])
        return views

    async def get_actions(self, request: Request, run: str) -> Any:
        names = request.texts("names", max_items=5000) or []
        return [a.to_json() for a in await self.client.get_actions(run, names)]

    async def get_action(self, request: Request, run: str, action: str) -> Any:
        found = await self.client.get_actions(run, [action])
        if not found:
            raise RunNotFoundError(f"action {action!r} not found in run {run!r}")
        return found[0].to_json()

    async def list_events(self, request: Request, run: str, action: str) -> Any:
        return [e.to_json() for e in await self.client.list_events(run, action)]

    async def task_action(self, request: Request, run: str, action: str) -> Any:
        obj = await self.client.task_action(run, action)
        if obj is None:
            raise RunNotFoundError(f"{run}/{action} has no TaskAction (it ended and was collected, or never had one)")
        return obj

    async def action_io(self, request: Request, run: str, action: str) -> Any:
        io = await self.client.action_io(run, action, request.integer("attempt", 1, minimum=1, maximum=10_000))
        return {"inputs": io.inputs, "outputs": io.outputs, "report": io.report}

    async def condition(self, request: Request, run: str, action: str) -> Any:
        return (await self.client.condition(run, action)).to_json()

    async def read_log(self, request: Request, run: str, action: str, attempt: str) -> Any:
        if not attempt.isdigit() or not 1 <= int(attempt) <= 10_000:
            raise HttpError(400, "attempt must be a whole number from 1 to 10000", "attempt")
        chunk = await self.client.read_log(
            run, action, int(attempt), request.integer("offset", 0, minimum=-(2 ** 40), maximum=2 ** 40),
            request.integer("maxBytes", 1_000_000, minimum=1, maximum=4_000_000))
        return chunk.to_json()

    async def wait_run(self, request: Request, run: str) -> Any:
        action = request.query.get("action") or "a0"
        check_action_name(action)
        return await self.client.wait(run, request.number("timeout", 60, minimum=0, maximum=3600), action)

    async def render(self, request: Request, run: str, action: str) -> Any:
        return await self.client.render(run, action)

    async def cluster_object(self, request: Request, run: str, action: str) -> Any:
        return {"cluster": await self.client.cluster_object(run, action)}

    async def list_workers(self, request: Request) -> Any:
        return await self.client.list_workers()

    async def list_cache(self, request: Request) -> Any:
        task = request.query.get("task") or None
        if task is not None and len(task) > 255:
            raise HttpError(400, "task must be at most 255 characters", "task")
        return await self.client.list_cache(task, request.integer("limit", 1000, minimum=1, maximum=100_000))

    # ------------------------------------------------------------------ commands
    async def create_run(self, request: Request) -> Any:
        spec = request.blob("taskSpec", required=True)
        inputs = request.blob("inputs")
        code_dir = request.text("codeDir")
        if code_dir is not None and not (resolves_within(code_dir, self.allowed_code_dirs)
                                         and Path(code_dir).is_dir()):
            raise HttpError(400, f"codeDir {code_dir!r} is not a directory this engine allows: the data directory "
                                 f"or {', '.join(self.allowed_code_dirs[1:]) or 'nothing else'} (start the engine "
                                 "with --allow-dir DIR to add one)", "codeDir")
        record = await self.client.create_run(
            spec, inputs, project=request.name("project", "flytesnacks"),
            domain=request.name("domain", "development"), name=request.name("name"),
            code_dir=code_dir, env_vars=request.body.get("envVars"), queue=request.text("queue", "", max_len=63) or "")
        return record.to_json()

    async def list_tasks(self, request: Request) -> Any:
        project = request.query.get("project")
        return await self.client.list_tasks(project, request.query.get("domain") if project else None)

    async def deploy_task(self, request: Request) -> Any:
        return await self.client.deploy_task(request.blob("taskSpec", required=True),
                                             project=request.name("project", "flytesnacks"),
                                             domain=request.name("domain", "development"),
                                             bundle=request.text("bundle", "", max_len=4096) or "")

    async def get_task(self, request: Request) -> Any:
        return await self.client.get_task(request.text("name", "", max_len=255) or "",
                                          project=request.name("project", "flytesnacks"),
                                          domain=request.name("domain", "development"),
                                          version=request.text("version", max_len=255))

    async def run_task(self, request: Request) -> Any:
        record = await self.client.run_task(request.text("name", "", max_len=255) or "", request.blob("inputs"),
                                            project=request.name("project", "flytesnacks"),
                                            domain=request.name("domain", "development"),
                                            version=request.text("version", max_len=255),
                                            run_name=request.name("runName"), args=request.texts("args"))
        return record.to_json()

    async def list_triggers(self, request: Request) -> Any:
        return await self.client.list_triggers()

    async def deploy_trigger(self, request: Request) -> Any:
        return await self.client.deploy_trigger(
            request.blob("trigger", required=True), project=request.name("project", "flytesnacks"),
            domain=request.name("domain", "development"), task_name=request.text("task", "", max_len=255) or "",
            task_version=request.text("taskVersion", "", max_len=255) or "")

    async def set_trigger_active(self, request: Request) -> Any:
        return await self.client.set_trigger_active(request.text("name", "", max_len=255) or "", request.flag("active"),
                                                    project=request.name("project", "flytesnacks"),
                                                    domain=request.name("domain", "development"))

    async def trigger_history(self, request: Request) -> Any:
        return await self.client.trigger_history(request.text("name", "", max_len=255) or "",
                                                 project=request.name("project", "flytesnacks"),
                                                 domain=request.name("domain", "development"))

    async def list_projects(self, request: Request) -> Any:
        return await self.client.list_projects()

    async def create_project(self, request: Request) -> Any:
        return await self.client.create_project(request.name("id", ""), name=request.text("name", "", max_len=255) or "",
                                                description=request.text("description", "", max_len=1024) or "")

    async def list_secrets(self, request: Request) -> Any:
        return await self.client.list_secrets()

    async def create_secret(self, request: Request) -> Any:
        value = request.blob("value", required=True)
        return await self.client.create_secret(request.text("name", "", max_len=253), value,
                                               project=request.text("project", "", max_len=63) or "",
                                               domain=request.text("domain", "", max_len=63) or "")

    async def delete_secret(self, request: Request) -> Any:
        await self.client.delete_secret(request.text("name", "", max_len=253),
                                        project=request.text("project", "", max_len=63) or "",
                                        domain=request.text("domain", "", max_len=63) or "")
        return {"deleted": True}

    async def stage_input(self, request: Request) -> Any:
        path = request.text("path", max_len=4096)
        if not path:
            raise HttpError(400, "path is required: the local file or directory to store", "path")
        stored = await self.client.stage_input(path, project=request.name("project", "flytesnacks"),
                                               domain=request.name("domain", "development"))
        return {"path": stored}

    async def signal(self, request: Request, run: str) -> Any:
        action = request.text("action")
        if action is None:
            raise HttpError(400, "action is required: the condition's action name or its own name", "action")
        signalled = await self.client.signal(run, action, request.text("value", ""),
                                             by=request.text("by", "taskdeck-cli", max_len=256))
        return {"signalled": signalled}

    async def retry(self, request: Request, run: str) -> Any:
        names = await self.client.retry(run, request.text("action", "a0", max_len=64),
                                        who=request.text("by", "taskdeck-cli", max_len=256),
                                        why=request.text("reason", ""))
        return {"retried": names}

    async def evict_cache(self, request: Request) -> Any:
        evicted = await self.client.evict_cache(request.texts("keys"), request.text("task", max_len=255),
                                                request.flag("all"))
        return {"evicted": evicted}

    async def abort(self, request: Request, run: str) -> Any:
        await self.client.abort(run, request.text("action", "a0", max_len=64), request.text("reason", "aborted"))
        return {"aborted": True}


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the engine owns signal handling, not the embedded server
        yield


class ApiServer:
    """The engine's listeners: plain HTTP (TaskDeck's clients, task processes, signed upload URLs) and,
    when given a certificate, TLS for the stock flyte CLI (``engine/tls.py`` says why). One app serves both."""

    def __init__(self, api: TaskDeckApi, connect_apps: list, authority: Authority, host: str, port: int, *,
                 max_body_bytes: int, advertise_host: str | None = None, routes: list | None = None,
                 tls: tuple[Path, Path, Path] | None = None, tls_port: int = 0):
        self.host = host
        self.port = port
        self.api = api
        self.mounts: list[tuple[str, ASGIApp]] = [(TaskDeckApi.prefix, api), ("/health", api)]
        self.mounts += list(routes or [])
        self.mounts += [(app.path, app) for app in connect_apps]
        self.gate = Gate(authority, max_body_bytes=max_body_bytes, advertise_host=advertise_host,
                         connect_prefixes=[app.path for app in connect_apps],
                         self_checking_prefixes=[prefix for prefix, _ in routes or []])
        self.tls = tls  # (the CA that signed the certificate, the certificate, its key)
        self.tls_port = tls_port
        self.tls_url: str | None = None
        self._servers: list[tuple[_Server, asyncio.Task]] = []

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
        host, port = await self._listen(self.port)
        host = _dialable(host)
        self.gate.port = port
        if self.tls is not None:
            try:
                tls_host, tls_port = await self._listen(self.tls_port, self.tls[1:])
            except BaseException:
                await self.stop()
                raise
            self.gate.tls_port = tls_port
            tls_host = _dialable(tls_host)
            self.tls_url = f"https://{tls_host}:{tls_port}"
        return f"http://{host}:{port}"

    async def _listen(self, port: int, tls: tuple[Path, Path] | None = None) -> tuple[str, int]:
        extra = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
        config = uvicorn.Config(self.app, host=self.host, port=port, lifespan="off", log_level="warning",
                                interface="asgi3", timeout_graceful_shutdown=2, access_log=False,
                                http=BoundedHttpToolsProtocol, **extra)
        server = _Server(config)
        task = asyncio.create_task(server.serve(), name="api-server-tls" if tls else "api-server")
        self._servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()  # re-raise why it could not start
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.01)
        return server.servers[0].sockets[0].getsockname()[:2]

    async def stop(self) -> None:
        self.api.closing.set()
        for server, _ in self._servers:
            server.should_exit = True
        await asyncio.gather(*(task for _, task in self._servers), return_exceptions=True)
        self._servers.clear()


def _dialable(host: str) -> str:
    """What local clients dial for a listener bound to ``host`` (a loopback name the gate accepts as Host)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host
