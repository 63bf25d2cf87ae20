"""Who may drive the engine: the owner's token, run-scoped task tokens, and signed upload URLs.

A request proves who sends it in one of three ways, all checked by the front door (``http_gate.py``):
* ``Authorization: Bearer <token>``: the CLI, the console, curl;
* ``Proxy-Authorization: Bearer <token>``: what the flyte SDK's auth proxy command would send;
* a path prefix ``/c/<token>/``: what task processes use. The unchanged flyte 2.12.1 SDK cannot send a
  header to a plaintext endpoint: with ``--insecure`` it installs no auth interceptor, and its proxy
  command (``FLYTE_AUTH_PROXY_COMMAND``, ``admin.proxyCommand``) fails at init with ``TypeError:
  AsyncCommandAuthenticator() got multiple values for keyword argument 'command'`` (init always passes
  ``command=None`` along). It does keep an endpoint's path, so a task's ``_U_EP_OVERRIDE`` is
  ``http://127.0.0.1:PORT/c/<its run's token>``.

* The owner token is random, kept in ``<data>/token`` (0600; 0640 when shared with a Unix group).
* A run token covers one run: enqueue, watch, abort and signal its own actions over the SDK's
  controller services, nothing else. Task processes get one for their run. It is an HMAC of the run's
  identity under ``<data>/signing.key`` (0600, never shared), so it survives engine restarts (adopted
  processes keep theirs) and needs no table.
* A worker token covers one reusable worker (a process that runs many runs' actions): while it runs an
  action of a run, it may do for that run what the run's token may; once it has none, nothing. It is
  minted per worker, when the worker starts, and is worthless after the engine forgets the worker.
* Upload URLs are HMAC-signed over their path and expiry time.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import grp
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from engine.errors import DataDirError
from engine.names import InvalidNameError, check_run_id

log = logging.getLogger(__name__)

TOKEN_FILE = "token"
KEY_FILE = "signing.key"
OWNER_PREFIX = "tdo_"
RUN_PREFIX = "tdr_"
WORKER_PREFIX = "tdw_"
CREDENTIAL_PATH = "/c/"  # /c/<token>/<the request's own path>


def endpoint_with_credential(url: str, token: str) -> str:
    """An endpoint whose every request carries ``token`` (for clients that cannot send a header)."""
    return f"{url.rstrip('/')}{CREDENTIAL_PATH}{token}"


@dataclasses.dataclass(frozen=True)
class Principal:
    """Who a request comes from: the owner (everything) or one run's task processes."""

    kind: str  # "owner", "run" or "worker"
    run: tuple[str, str, str] | None = None  # (project, domain, run name) of a run token
    worker: str | None = None  # a worker token's worker
    runs_of: Callable[[str], set] | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def is_owner(self) -> bool:
        return self.kind == "owner"

    def covers(self, project: str, domain: str, run: str) -> bool:
        if self.kind == "worker":
            return self.runs_of is not None and (project, domain, run) in self.runs_of(self.worker)
        return self.is_owner or self.run == (project, domain, run)

    def __str__(self) -> str:
        if self.kind == "worker":
            return f"reusable worker {self.worker}"
        return "owner" if self.is_owner else f"run {'/'.join(self.run or ())}"


OWNER = Principal("owner")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Create ``path`` with ``mode`` from the start (no window in which it is readable by others)."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)  # the umask may have narrowed it
    os.replace(tmp, path)


def read_token(path: Path) -> str:
    """The token in ``path`` (OSError when it cannot be read)."""
    return path.read_text().strip()


class Authority:
    """The engine's credentials: loads or creates them, checks presented ones, mints run tokens."""

    def __init__(self, data_dir: Path, share_group: str | None = None):
        self.data_dir = Path(data_dir)
        self.share_group = share_group
        self._owner_token = ""
        self._key = b""
        self._gid: int | None = None
        self._run_tokens: dict[tuple[str, str, str], str] = {}
        self.worker_runs: Callable[[str], set] | None = None  # worker id → the runs it is running actions of

    @property
    def token_path(self) -> Path:
        return self.data_dir / TOKEN_FILE

    @property
    def owner_token(self) -> str:
        return self._owner_token

    def load(self) -> None:
        """Read the credentials, creating them on first use; apply the group sharing setting."""
        key_path = self.data_dir / KEY_FILE
        if not key_path.exists():
            write_private(key_path, _b64(secrets.token_bytes(32)))
        if not self.token_path.exists():
            write_private(self.token_path, OWNER_PREFIX + _b64(secrets.token_bytes(32)))
        self._key = read_token(key_path).encode()
        self._owner_token = read_token(self.token_path)
        if not self._owner_token.startswith(OWNER_PREFIX) or len(self._owner_token) < 40:
            raise DataDirError(f"{self.token_path} does not hold a TaskDeck token; delete it to make a new one")
        self._apply_sharing()

    def _apply_sharing(self) -> None:
        os.chmod(self.data_dir / KEY_FILE, 0o600)
        if self.share_group is None:
            os.chmod(self.token_path, 0o600)
            return
        try:
            self._gid = grp.getgrnam(self.share_group).gr_gid
        except KeyError:
            raise DataDirError(f"--share-group: no Unix group named {self.share_group!r}") from None
        os.chown(self.data_dir, -1, self._gid)
        os.chmod(self.data_dir, 0o710)  # the group may open the files it is given, not list the directory
        self.share_file(self.token_path)
        log.warning("sharing the engine's token with Unix group %s (%s)", self.share_group, self.token_path)

    def share_dir(self, path: Path) -> None:
        """Let the shared group open the files it is given inside ``path`` (not list it)."""
        if self._gid is not None:
            os.chown(path, -1, self._gid)
            os.chmod(path, 0o710)

    def share_file(self, path: Path) -> None:
        """Let the shared group read ``path`` (nothing happens unless the engine shares its token)."""
        if self._gid is not None:
            os.chown(path, -1, self._gid)
            os.chmod(path, 0o640)

    # ---------------------------------------------------------------- checking
    def authenticate(self, headers: dict[str, str]) -> Principal | None:
        """The principal a request's ``authorization`` / ``proxy-authorization`` header proves, or None."""
        for name in ("authorization", "proxy-authorization"):
            value = headers.get(name, "")
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                principal = self.principal_of(token.strip())
                if principal is not None:
                    return principal
        return None

    def principal_of(self, token: str) -> Principal | None:
        if token.startswith(OWNER_PREFIX):
            ok = hmac.compare_digest(token.encode(), self._owner_token.encode())
            return OWNER if ok and self._owner_token else None
        if token.startswith(RUN_PREFIX):
            parts = token[len(RUN_PREFIX):].split(".")
            if len(parts) != 4:
                return None
            project, domain, run, signature = parts
            try:
                check_run_id(project, domain, run)
            except InvalidNameError:
                return None
            if hmac.compare_digest(signature, self._sign("run", project, domain, run)):
                return Principal("run", (project, domain, run))
        if token.startswith(WORKER_PREFIX) and self.worker_runs is not None:
            worker, _, signature = token[len(WORKER_PREFIX):].partition(".")
            if worker.isalnum() and hmac.compare_digest(signature, self._sign("worker", worker)):
                return Principal("worker", worker=worker, runs_of=self.worker_runs)
        return None

    # ---------------------------------------------------------------- minting
    def _sign(self, *fields: str) -> str:
        return _b64(hmac.new(self._key, "\n".join(fields).encode(), hashlib.sha256).digest())

    def run_token(self, project: str, domain: str, run: str) -> str:
        """The credential of one run's task processes (names are validated labels: no '.' inside)."""
        key = (project, domain, run)
        token = self._run_tokens.get(key)
        if token is None:  # asked for at every launch of the run's actions
            if len(self._run_tokens) > 4096:
                self._run_tokens.clear()
            token = self._run_tokens[key] = f"{RUN_PREFIX}{project}.{domain}.{run}.{self._sign('run', *key)}"
        return token

    def worker_token(self, worker: str) -> str:
        """The credential of one reusable worker (its id: letters and digits)."""
        if not worker.isalnum():
            raise ValueError(f"worker id {worker!r} is not alphanumeric")
        return f"{WORKER_PREFIX}{worker}.{self._sign('worker', worker)}"

    def sign_path(self, path: str, expires_in: float, now: float | None = None, bound: str = "") -> str:
        """``path`` with an expiry and an HMAC over both (and ``bound``, e.g. the MD5 the upload must have),
        as a query string: an upload URL's credential."""
        expires = int((now or time.time()) + expires_in)
        extra = f"&md5={bound}" if bound else ""
        return f"{path}?expires={expires}{extra}&signature={self._sign('path', path, str(expires), bound)}"

    def verify_path(self, path: str, expires: str, signature: str, now: float | None = None,
                    bound: str = "") -> bool:
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return False
        return hmac.compare_digest(signature, self._sign("path", path, expires, bound))
