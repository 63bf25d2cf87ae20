"""``PUT /uploads/<project>/<domain>/<folder>/<file>``: where the flyte CLI's signed upload URLs point.

The URL's signature (``engine/auth.py``) covers the path, the expiry and the MD5 the body must have, so
the URL is the credential: it writes that one file, once, before it expires. The body streams to a
temporary file in the store (never past ``max_bytes``), its MD5 is checked (and the ``Content-MD5``
header's, when sent), and it is renamed into place. Uploads are content-addressed: the same file again
is a success; other bytes at a path that holds a file are refused.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, unquote

from connectrpc.code import Code
from connectrpc.errors import ConnectError

from engine.auth import Authority
from engine.http_gate import send_json
from engine.names import InvalidNameError, check_run_id

UPLOAD_PREFIX = "/uploads"
MAX_UPLOAD_BYTES = 1 << 30
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")


def check_upload_name(part: str) -> None:
    """One path segment of an upload: letters, digits, ``._-``, not starting with a dot."""
    if not _NAME.fullmatch(part or ""):
        raise ConnectError(Code.INVALID_ARGUMENT, f"upload name {part!r} must be 1 to 255 letters, digits, '.', "
                                                  "'_' or '-', not starting with '.'")


class UploadRoute:
    def __init__(self, authority: Authority, data_dir: Path, max_bytes: int = MAX_UPLOAD_BYTES, files=None):
        self.authority = authority
        self.root = Path(data_dir) / "uploads"
        self.max_bytes = max_bytes
        self.files = files if files is not None and files.remote else None  # --raw-data: copied there too

    async def _publish(self, final: Path, parts: list[str]) -> str:
        """The stored file's URI for tasks: with an object store, its copy there (made once)."""
        if self.files is None:
            return str(final)
        uri = self.files.upload_uri(*parts)
        if not await self.files.aexists(uri):
            await asyncio.to_thread(self.files.put_file, str(final), uri)
        return uri

    async def __call__(self, scope, receive, send) -> None:
        raw = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1").split("?", 1)[0]
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}

        async def answer(status: int, message: str) -> None:
            await send_json(send, status, {"error": message} if status >= 400 else {"stored": message},
                            [(b"connection", b"close")] if status >= 400 else [])

        if scope["method"] != "PUT":
            return await answer(405, "uploads are PUT to a signed URL")
        expires, signature, md5 = (query.get(k, [""])[0] for k in ("expires", "signature", "md5"))
        if not md5 or not self.authority.verify_path(raw, expires, signature, bound=md5):
            return await answer(403, "the upload URL is not valid (or has expired): ask for a new one")
        parts = unquote(raw[len(UPLOAD_PREFIX) + 1:]).split("/")
        try:
            check_run_id(parts[0], parts[1], "r")
            for part in parts[2:]:
                check_upload_name(part)
        except (IndexError, InvalidNameError, ConnectError):
            return await answer(400, "an upload path is /uploads/PROJECT/DOMAIN/FOLDER/FILE")
        if len(parts) < 4:
            return await answer(400, "an upload path is /uploads/PROJECT/DOMAIN/FOLDER/FILE")
        length = headers.get("content-length", "")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await answer(413, f"uploads need a Content-Length of at most {self.max_bytes} bytes")
        if (sent := headers.get("content-md5")) is not None and _b64_hex(sent) != md5:
            return await answer(400, "Content-MD5 is not the MD5 the upload URL was made for")
        final = self.root.joinpath(*parts)
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=self.root)
        digest, size = hashlib.md5(usedforsecurity=False), 0
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > int(length):
                        return await answer(400, "the body is longer than its Content-Length")
                    digest.update(chunk)
                    out.write(chunk)
                    if not message.get("more_body", False):
                        break
            if digest.hexdigest() != md5:
                return await answer(400, "the body's MD5 is not the one the upload URL was made for")
            if final.exists():
                same = await asyncio.to_thread(_file_md5, final) == md5
                if not same:
                    return await answer(409, f"{final} holds another file")
                return await answer(200, await self._publish(final, parts))
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            tmp = ""
            return await answer(201, await self._publish(final, parts))
        except OSError as exc:
            return await answer(503, f"cannot store the upload: {exc.strerror or exc}")
        finally:
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


def _b64_hex(value: str) -> str:
    try:
        return base64.b64decode(value.strip(), validate=True).hex()
    except ValueError:
        return ""


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

