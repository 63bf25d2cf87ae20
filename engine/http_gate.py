"""The front door of the engine's HTTP server: who is asking, from where, and with how much.

Every request passes here before a route or a Connect service sees it, in this order:
1. ``Host`` must name this machine (loopback names, or the configured advertise host): a foreign Host is
   DNS rebinding. ``Origin``, when a browser sends one, must be this server itself, and
   ``Sec-Fetch-Site: cross-site`` is refused: a page the user visits cannot drive the engine.
2. Only ``/health`` is open, and the routes whose URLs are signed (uploads, the run page) check their own
   credential. Everything else needs a credential (``engine/auth.py``: a bearer header, or
   a ``/c/<token>/`` path prefix, which is stripped here); a run's task credential reaches only the
   SDK's controller services, whose handlers then check the run.
3. Methods and content types are the ones a route speaks (JSON for the API, Connect's for the services).
4. The body is capped (``Content-Length`` first, then while reading), so refusing a huge body costs
   nothing, and a Connect body's decompression is capped the same way (no gzip bombs). A refused
   request with a big unread body closes its connection rather than have the server read it all.
"""

from __future__ import annotations

import contextvars
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from connectrpc.code import Code
from connectrpc.compression import Compression
from connectrpc.errors import ConnectError
from google.protobuf.message import DecodeError

from engine.auth import CREDENTIAL_PATH, Authority, Principal
from engine.client.models import strict_dumps

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# A refused request whose unread body is at most this big is drained, so its client reads the answer;
# a bigger one closes the connection (refusing costs the same whatever the size).
DRAIN_BYTES = 1024 * 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
OPEN_PATHS = frozenset({"/health", "/taskdeck/v1/health"})
CONNECT_CONTENT_TYPES = ("application/proto", "application/json", "application/connect+proto",
                         "application/connect+json")

ASGIApp = Callable[[dict, Callable, Callable], Awaitable[None]]
_NOBODY = Principal("nobody")  # a credential was presented in the path, and it is not valid
_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)


def current_principal() -> Principal | None:
    """Who sent the request being served (None outside a request)."""
    return _principal.get()


class BodyTooLargeError(Exception):
    def __init__(self, message: str, drained: bool):
        super().__init__(message)
        self.drained = drained  # the whole body was read: the connection may stay open


async def send_json(send, status: int, payload: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    data = strict_dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


async def read_body(receive, limit: int) -> bytes:
    """The whole request body, refusing it once it passes ``limit`` (linear in its size).

    A body a little over the limit is read to its end and dropped, so the client reads the refusal on a
    connection that stays usable; past ``DRAIN_BYTES`` more, the connection is given up instead.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            chunks.clear()
            if not more or size > limit + DRAIN_BYTES:
                raise BodyTooLargeError(f"the request body is larger than the limit of {limit} bytes",
                                        drained=not more)
            continue
        chunks.append(chunk)
        if not more:
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A ``receive`` that yields the already-read body, then what the client sends next (its disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def _host_of(value: str) -> str:
    """The host name in a Host header value (``[::1]:8080`` → ``::1``), lowercased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class BoundedGzip(Compression):
    """gzip for Connect bodies that stops inflating past ``limit`` bytes (connectrpc's inflates it all)."""

    def __init__(self, limit: int):
        self.limit = limit

    def name(self) -> str:
        return "gzip"

    def compress(self, data) -> bytes:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return compressor.compress(bytes(data)) + compressor.flush()

    def decompress(self, data) -> bytes:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out = inflater.decompress(bytes(data), self.limit + 1)
        except zlib.error as exc:
            raise ConnectError(Code.INVALID_ARGUMENT, f"the gzip body is not valid: {exc}") from None
        if len(out) > self.limit or inflater.unconsumed_tail:
            raise ConnectError(Code.RESOURCE_EXHAUSTED,
                               f"the decompressed message is larger than the limit of {self.limit} bytes")
        return out


class _CheckedCodec:
    """A codec whose decode failures are the client's (invalid_argument), not the server's (unknown)."""

    def __init__(self, codec):
        self._codec = codec

    def name(self) -> str:
        return self._codec.name()

    def encode(self, message) -> bytes:
        return self._codec.encode(message)

    def decode(self, data, message):
        try:
            return self._codec.decode(data, message)
        except ConnectError:
            raise
        except (DecodeError, ValueError, RecursionError, TypeError) as exc:
            raise ConnectError(Code.INVALID_ARGUMENT,
                               f"the request is not a valid {type(message).__name__}: {exc}") from None


def harden_connect_app(app) -> Any:
    """Make a generated Connect ASGI app answer undecodable messages with invalid_argument.

    connectrpc (<0.11) takes no codecs through the generated constructors, so they are wrapped in place.
    """
    app._codecs = {name: _CheckedCodec(codec) for name, codec in app._codecs.items()}  # noqa: SLF001
    return app


class Gate:
    """Wraps the server's dispatcher; see the module docstring for the order of the checks."""

    def __init__(self, authority: Authority, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 advertise_host: str | None = None, connect_prefixes: Iterable[str] = (),
                 self_checking_prefixes: Iterable[str] = ()):
        self.authority = authority
        self.max_body_bytes = max_body_bytes
        self.hosts = set(LOOPBACK_HOSTS) | ({advertise_host.lower()} if advertise_host else set())
        self.connect_prefixes = tuple(connect_prefixes)
        # Routes that check who asks themselves (a signed upload URL) or tell anyone nothing private (the
        # run page a browser opens); they read their own bodies.
        self.self_checking_prefixes = tuple(self_checking_prefixes)
        self.port: int | None = None  # set once the server listens; Origin must carry it
        self.tls_port: int | None = None
        self.last_request = time.monotonic()  # an engine that serves nobody for a while may stop

    def _is_connect(self, path: str) -> bool:
        return any(path.startswith(prefix + "/") for prefix in self.connect_prefixes)

    async def __call__(self, scope, receive, send, dispatch: ASGIApp) -> None:
        self.last_request = time.monotonic()
        path = scope["path"]
        path_principal = None
        if path.startswith(CREDENTIAL_PATH):  # /c/<token>/<path>: a task process's credential
            token, _, rest = path[len(CREDENTIAL_PATH):].partition("/")
            path_principal = self.authority.principal_of(token) or _NOBODY
            path = "/" + rest
            scope = {**scope, "path": path, "raw_path": path.encode()}
        connect = self._is_connect(path)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        length = headers.get("content-length", "0") or "0"
        small_body = length.isdigit() and int(length) <= DRAIN_BYTES and "transfer-encoding" not in headers

        async def refuse(status: int, code: str, message: str, extra: Iterable[tuple[bytes, bytes]] = (),
                         close: bool | None = None) -> None:
            if not small_body if close is None else close:  # do not read (let alone buffer) a big unread body
                extra = [*extra, (b"connection", b"close")]
            if connect:
                await send_json(send, status, {"code": code, "message": message}, extra)
            else:
                await send_json(send, status, {"error": message, "field": None}, extra)

        if _host_of(headers.get("host", "")) not in self.hosts:
            return await refuse(403, "permission_denied", "this engine answers only requests addressed to "
                                "this machine (Host header refused)")
        origin = headers.get("origin")
        if origin is not None and not self._own_origin(origin) or headers.get("sec-fetch-site") == "cross-site":
            return await refuse(403, "permission_denied", "cross-origin requests are refused")

        if path_principal is None and any(path == p or path.startswith(p + "/") for p in self.self_checking_prefixes):
            return await dispatch(scope, receive, send)  # the route checks for itself

        principal = path_principal or self.authority.authenticate(headers)
        if principal is _NOBODY:
            principal = None
        if path not in OPEN_PATHS:
            if principal is None:
                return await refuse(401, "unauthenticated", "missing or invalid credential: send "
                                    "'Authorization: Bearer <token>' (`taskdeck token` prints it)",
                                    [(b"www-authenticate", b'Bearer realm="taskdeck"')])
            if not principal.is_owner and not connect:
                return await refuse(403, "permission_denied", f"a {principal} credential reaches only the "
                                    "SDK's controller services")

        method = scope["method"]
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if connect:
            if method != "POST":
                return await refuse(405, "unimplemented", f"{method} is not allowed here; Connect calls are POST",
                                    [(b"allow", b"POST")])
            if content_type not in CONNECT_CONTENT_TYPES:
                return await refuse(415, "invalid_argument", f"content type {content_type or 'none'!r} is not "
                                    "a Connect one")
        elif method not in ("GET", "HEAD") and content_type != "application/json":
            return await refuse(415, "invalid_argument", "send the request body as application/json")

        if not length.isdigit() or int(length) > self.max_body_bytes:
            return await refuse(413, "resource_exhausted", f"the request body is larger than the limit of "
                                f"{self.max_body_bytes} bytes" if length.isdigit() else "bad Content-Length")
        try:
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLargeError as exc:
            return await refuse(413, "resource_exhausted", str(exc), close=not exc.drained)
        except ConnectionResetError:
            return None
        token = _principal.set(principal)
        try:
            await dispatch({**scope, "taskdeck.body": body}, replay(body, receive), send)
        finally:
            _principal.reset(token)

    def _own_origin(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin)
            own = {("http", self.port), ("https", self.tls_port)}
            return (parts.scheme, parts.port) in own and (parts.hostname or "") in self.hosts
        except ValueError:
            return False
