"""The client interface over a running engine's HTTP API, with its credential.

Errors come back as the engine raised them (``RunNotFoundError``, ``InvalidRunError`` with the field,
``AlreadyExistsError``, ``StorageUnavailableError``); an engine that cannot be reached, or stops
answering, is an ``EngineUnavailableError`` with a one-line reason. The change feed reconnects by
itself after a dropped connection, from the last cursor it delivered, and says so with
``disconnected`` / ``reconnected`` items.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

import httpx

from engine.client.base import DEFAULT_LOG_CHUNK, EngineClient, EngineUnavailableError
from engine.client.models import Action, ActionIO, ActionPhase, Change, ConditionInfo, Event, LogChunk
from engine.errors import AlreadyExistsError, InvalidRunError, PermissionDeniedError, RunNotFoundError
from engine.errors import StorageUnavailableError

PREFIX = "/taskdeck/v1"
RECONNECT_SECONDS = (0.2, 5.0)  # the feed's reconnect backoff: from 0.2 s, doubling to 5 s
FEED_SILENCE_SECONDS = 15.0  # no line (not even a heartbeat) for this long: the connection is dead


def _segment(name: str) -> str:
    return quote(name, safe="")


def _actions(content: bytes) -> list[Action]:
    return [Action.from_json(a) for a in json.loads(content)]


class RemoteClient(EngineClient):
    def __init__(self, url: str, token: str, *, timeout: float = 30.0, transport=None):
        self.url = url.rstrip("/")
        self.description = f"engine at {self.url}"
        self._headers = {"authorization": f"Bearer {token}"}
        self._timeout = timeout
        # Plain http (the engine's own address): no TLS context, whose CA bundle costs ~20 ms to load.
        tls = {} if self.url.startswith("https:") else {"verify": False}
        self._http = httpx.AsyncClient(base_url=self.url + PREFIX, headers=self._headers, timeout=timeout,
                                       transport=transport, **tls)

    async def close(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ transport
    async def _call(self, method: str, path: str, payload: Any = None, params: dict | None = None,
                    timeout: float | None = None, decode: Callable[[bytes], Any] | None = None) -> Any:
        """The answer's JSON (``decode``: straight into views, without a dict per field on the way)."""
        try:
            response = await self._http.request(
                method, path, params=params, timeout=timeout or self._timeout,
                content=json.dumps(payload if payload is not None else {}).encode() if method == "POST" else None,
                headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise EngineUnavailableError(f"cannot reach the engine at {self.url}: "
                                         f"{type(exc).__name__} {exc}".rstrip()) from None
        if response.status_code == 200 and decode is not None:
            try:
                return decode(response.content)
            except (ValueError, KeyError) as exc:
                raise EngineUnavailableError(f"the engine at {self.url} sent an unreadable answer: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise EngineUnavailableError(f"the engine at {self.url} answered {response.status_code} with "
                                         "something that is not JSON") from None
        if response.status_code == 200:
            return body
        message, field = (body.get("error") or response.reason_phrase, body.get("field")) \
            if isinstance(body, dict) else (response.reason_phrase, None)
        status = response.status_code
        if status == 404:
            raise RunNotFoundError(message)
        if status == 409:
            raise AlreadyExistsError(message, field=field)
        if status in (400, 413, 415):
            raise InvalidRunError(message, field=field)
        if status in (401, 403):
            raise PermissionDeniedError(message)
        if status == 503:
            raise StorageUnavailableError(message)
        raise EngineUnavailableError(f"the engine at {self.url} failed: {message}")

    def _action_path(self, run: str, action: str) -> str:
        return f"/runs/{_segment(run)}/actions/{_segment(action)}"

    # ------------------------------------------------------------------ reads
    async def list_runs(self, limit: int = 1000) -> list[Action]:
        return [Action.from_json(r) for r in await self._call("GET", "/runs", params={"limit": limit})]

    async def get_run(self, run: str) -> Action:
        return Action.from_json(await self._call("GET", self._action_path(run, "a0")))

    async def list_actions(self, run: str) -> list[Action]:
        return await self._call("GET", f"/runs/{_segment(run)}/actions", decode=_actions)

    async def list_actions_with_task_actions(self, run: str) -> list[dict[str, Any]]:
        """The JSON `taskdeck get actions --json` prints: each view with its TaskAction."""
        return await self._call("GET", f"/runs/{_segment(run)}/actions", params={"taskActions": "1"})

    async def get_actions(self, run: str, names: list[str]) -> list[Action]:
        found: list[Action] = []
        for i in range(0, len(names), 5000):
            found += await self._call("POST", f"/runs/{_segment(run)}/actions/batch", {"names": names[i:i + 5000]},
                                      decode=_actions)
        return found

    async def list_events(self, run: str, action: str) -> list[Event]:
        return [Event.from_json(e) for e in await self._call("GET", self._action_path(run, action) + "/events")]

    async def run_counts(self) -> dict[int, int]:
        return {int(ActionPhase[name]): n for name, n in (await self._call("GET", "/counts")).items()}

    async def task_action(self, run: str, action: str) -> dict[str, Any] | None:
        try:
            return await self._call("GET", self._action_path(run, action) + "/taskaction")
        except RunNotFoundError:
            return None

    async def action_io(self, run: str, action: str, attempt: int) -> ActionIO:
        body = await self._call("GET", self._action_path(run, action) + "/io", params={"attempt": attempt})
        return ActionIO(body.get("inputs"), body.get("outputs"), body.get("report"))

    async def read_log(self, run: str, action: str, attempt: int, offset: int = 0,
                       max_bytes: int = DEFAULT_LOG_CHUNK) -> LogChunk:
        return LogChunk.from_json(await self._call(
            "GET", f"{self._action_path(run, action)}/logs/{attempt}", params={"offset": offset,
                                                                              "maxBytes": max_bytes}))

    async def condition(self, run: str, action: str) -> ConditionInfo:
        return ConditionInfo.from_json(await self._call("GET", self._action_path(run, action) + "/condition"))

    async def result(self, run: str, action: str = "a0") -> dict[str, Any]:
        if action == "a0":
            return await self._call("GET", f"/runs/{_segment(run)}")
        return await self._call("GET", self._action_path(run, action) + "/result")

    async def wait(self, run: str, timeout: float, action: str = "a0") -> dict[str, Any]:
        return await self._call("POST", f"/runs/{_segment(run)}/wait", params={"timeout": timeout, "action": action},
                                timeout=timeout + self._timeout)

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/health")

    async def render(self, run: str, action: str = "a0") -> dict[str, Any]:
        return await self._call("GET", f"/runs/{quote(run, safe='')}/actions/{quote(action, safe='')}/render")

    async def cluster_object(self, run: str, action: str = "a0") -> dict[str, Any] | None:
        found = await self._call("GET", f"/runs/{quote(run, safe='')}/actions/{quote(action, safe='')}/cluster")
        return found.get("cluster")

    async def list_workers(self) -> dict[str, Any]:
        return await self._call("GET", "/workers")

    async def list_cache(self, task: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if task:
            params["task"] = task
        return await self._call("GET", "/cache", params=params)

    # ------------------------------------------------------------------ commands
    async def create_run(self, task_spec: bytes, inputs: bytes, *, project: str, domain: str,
                         name: str | None = None, code_dir: str | None = None,
                         env_vars: dict[str, str] | None = None, queue: str = "") -> Action:
        payload = {"taskSpec": base64.b64encode(task_spec).decode(), "inputs": base64.b64encode(inputs).decode(),
                   "project": project, "domain": domain, "name": name, "codeDir": code_dir, "envVars": env_vars,
                   "queue": queue}
        return Action.from_json(await self._call("POST", "/runs", payload))

    async def deploy_task(self, task_spec: bytes, *, project: str, domain: str, bundle: str = "") -> dict[str, Any]:
        return await self._call("POST", "/tasks", {"taskSpec": base64.b64encode(task_spec).decode(),
                                                   "project": project, "domain": domain, "bundle": bundle})

    async def list_tasks(self, project: str | None = None, domain: str | None = None) -> list[dict[str, Any]]:
        params = {"project": project, "domain": domain} if project else None
        return await self._call("GET", "/tasks", params=params)

    async def get_task(self, name: str, *, project: str, domain: str, version: str | None = None) -> dict[str, Any]:
        return await self._call("POST", "/tasks/get", {"name": name, "project": project, "domain": domain,
                                                       "version": version})

    async def run_task(self, name: str, inputs: bytes = b"", *, project: str, domain: str, version: str | None = None,
                       run_name: str | None = None, args: list[str] | None = None) -> Action:
        return Action.from_json(await self._call("POST", "/tasks/run", {
            "name": name, "inputs": base64.b64encode(inputs).decode(), "project": project, "domain": domain,
            "version": version, "runName": run_name, "args": args}))

    async def deploy_trigger(self, trigger: bytes, *, project: str, domain: str, task_name: str,
                             task_version: str) -> dict[str, Any]:
        return await self._call("POST", "/triggers", {"trigger": base64.b64encode(trigger).decode(), "project": project,
                                                      "domain": domain, "task": task_name, "taskVersion": task_version})

    async def list_triggers(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/triggers")

    async def set_trigger_active(self, name: str, active: bool, *, project: str, domain: str) -> dict[str, Any]:
        return await self._call("POST", "/triggers/active", {"name": name, "active": active, "project": project,
                                                             "domain": domain})

    async def trigger_history(self, name: str, *, project: str, domain: str) -> list[dict[str, Any]]:
        return await self._call("POST", "/triggers/history", {"name": name, "project": project, "domain": domain})

    async def create_project(self, project_id: str, *, name: str = "", description: str = "") -> dict[str, Any]:
        return await self._call("POST", "/projects", {"id": project_id, "name": name, "description": description})

    async def list_projects(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/projects")

    async def create_secret(self, name: str, value: bytes, *, project: str = "", domain: str = "") -> dict[str, Any]:
        return await self._call("POST", "/secrets", {"name": name, "value": base64.b64encode(value).decode(),
                                                     "project": project, "domain": domain})

    async def list_secrets(self) -> list[dict[str, Any]]:
        return await self._call("GET", "/secrets")

    async def delete_secret(self, name: str, *, project: str = "", domain: str = "") -> None:
        await self._call("POST", "/secrets/delete", {"name": name, "project": project, "domain": domain})

    async def stage_input(self, path: str, *, project: str, domain: str) -> str:
        body = await self._call("POST", "/uploads", {"path": path, "project": project, "domain": domain})
        return body["path"]

    async def abort(self, run: str, action: str = "a0", reason: str = "aborted") -> None:
        await self._call("POST", f"/runs/{_segment(run)}/abort", {"action": action, "reason": reason})

    async def retry(self, run: str, action: str = "a0", *, who: str, why: str = "") -> list[str]:
        body = await self._call("POST", f"/runs/{_segment(run)}/retry", {"action": action, "by": who, "reason": why})
        return body["retried"]

    async def signal(self, run: str, action: str, value: str, *, by: str) -> str:
        body = await self._call("POST", f"/runs/{_segment(run)}/signal", {"action": action, "value": value, "by": by})
        return body["signalled"]

    async def evict_cache(self, keys: list[str] | None = None, task: str | None = None,
                          everything: bool = False) -> int:
        body = await self._call("POST", "/cache/evict", {"keys": keys, "task": task, "all": everything})
        return body["evicted"]

    # ------------------------------------------------------------------ the change feed
    async def changes(self, cursor: str | None = None, run: str | None = None) -> AsyncIterator[Change]:
        delay = RECONNECT_SECONDS[0]
        connected = None  # unknown until the first attempt
        while True:
            params = {k: v for k, v in (("cursor", cursor), ("run", run)) if v}
            try:
                async with self._http.stream("GET", "/changes", params=params,
                                             timeout=httpx.Timeout(self._timeout, read=FEED_SILENCE_SECONDS)) as response:
                    if response.status_code != 200:
                        await response.aread()
                        if response.status_code in (400, 401, 403, 404):
                            body = response.json()
                            raise InvalidRunError(body.get("error") or response.reason_phrase)
                        raise httpx.HTTPStatusError("feed refused", request=response.request, response=response)
                    if connected is False:
                        yield Change("reconnected", cursor or "")
                    connected, delay = True, RECONNECT_SECONDS[0]
                    async for line in response.aiter_lines():
                        if not line:
                            continue
                        change = Change.from_json(json.loads(line))
                        cursor = change.cursor or cursor
                        yield change
            except (httpx.HTTPError, ValueError):
                pass  # dropped, refused or garbled: reconnect from the last cursor delivered
            if connected is not False:
                yield Change("disconnected", cursor or "")
            connected = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_SECONDS[1])
