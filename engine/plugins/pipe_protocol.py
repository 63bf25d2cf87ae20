"""The JSON-lines protocol between the engine and its helper processes (the fork server, reusable workers):
one JSON object per line each way, requests on the helper's stdin, replies on its stdout.

Standard library only: the helpers run on the task's interpreter and load this file by path
(``load_sibling``), as they load ``launcher.py``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import AsyncIterator


class BadRequest(ValueError):
    pass


def encode(message: dict) -> bytes:
    return (json.dumps(message, separators=(",", ":")) + "\n").encode()


def load_sibling(filename: str):
    """A module of this directory, by path (the helpers run with -P: their directory is not on sys.path)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), filename)
    spec = importlib.util.spec_from_file_location(f"_taskdeck_{filename.removesuffix('.py')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the helper's side
def take_pipes() -> tuple[int, int]:
    """(requests fd, replies fd): the pipes the engine gave as stdin and stdout, kept aside; stdin becomes
    /dev/null and fd 1 the helper's log (fd 2), so a stray write never lands in the replies."""
    requests_fd, replies_fd = os.dup(0), os.dup(1)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    return requests_fd, replies_fd


def write_message(fd: int, message: dict) -> None:
    data = encode(message)
    while data:
        data = data[os.write(fd, data):]


def decode_request(line: bytes) -> tuple[dict, str, object]:
    """(request, op, id) of one request line; BadRequest when it is not one."""
    try:
        request = json.loads(line)
        return request, request["op"], request.get("id")
    except (ValueError, KeyError, TypeError) as exc:
        raise BadRequest(f"bad request: {exc}") from None


# ---------------------------------------------------------------- the engine's side (asyncio imported here
# only: the fork server loads this module and imports nothing it does not need before it forks)
class HelperStartError(Exception):
    pass


async def ready_message(process, timeout: float, what: str, log_path) -> dict:
    """The helper's first reply, its ``ready``; HelperStartError (naming ``what``) when none comes."""
    import asyncio

    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout)
        ready = json.loads(line) if line else {}
    except (asyncio.TimeoutError, ValueError) as exc:
        raise HelperStartError(f"{what} did not start: {exc or 'timed out'}; see {log_path}") from exc
    if ready.get("op") != "ready":
        raise HelperStartError(f"{what} exited while starting; see {log_path}")
    return ready


async def read_messages(stream, label: str, log: logging.Logger) -> AsyncIterator[dict]:
    """The helper's replies until its stdout closes; an unreadable line is logged and skipped."""
    while True:
        line = await stream.readline()
        if not line:
            return
        try:
            yield json.loads(line)
        except ValueError:
            log.warning("%s sent an unreadable line: %r", label, line[:200])
