"""Secrets, scoped to a project and domain, a whole project, or global (Flyte's SecretService scopes), given to
the tasks that ask for them and never handed back by any read.

``SecretStore`` is the interface; the embedded default keeps each value encrypted (Fernet: AES-128-CBC with
an HMAC) in the database, with the key in a separate owner-only file (``<data>/secrets.key``), so the
database file alone reveals nothing. The Kubernetes backend backs the same interface with Kubernetes
Secrets. A task's request (``flyte.Secret(key, group, as_env_var=...)``) is resolved by its key, the most
specific scope first.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Collection
from pathlib import Path

from flyteidl2.core import security_pb2, tasks_pb2

from engine.errors import InvalidRunError
from engine.names import check_run_id
from engine.store.base import SecretInfo

KEY_FILE = "secrets.key"
MAX_VALUE_BYTES = 1024 * 1024  # a Kubernetes Secret's limit
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?$")
MASK = "********"


class SecretNotFoundError(LookupError):
    pass


class SecretInputError(InvalidRunError):
    pass


def check_secret_scope(name: str, project: str, domain: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise SecretInputError("a secret name is 1 to 253 letters, digits, '.', '_' or '-', starting and ending "
                               "with a letter or digit", field="name")
    if domain and not project:
        raise SecretInputError("a domain-scoped secret needs its project too", field="project")
    if project:
        check_run_id(project, domain or "development", "r")


def check_secret_value(value: bytes) -> None:
    if not isinstance(value, bytes) or not value:
        raise SecretInputError("a secret needs a value", field="value")
    if len(value) > MAX_VALUE_BYTES:
        raise SecretInputError(f"a secret value may be at most {MAX_VALUE_BYTES} bytes", field="value")
    try:
        if "\0" in value.decode():
            raise UnicodeDecodeError("utf-8", value, 0, 1, "NUL")
    except UnicodeDecodeError:
        raise SecretInputError("a secret value is text (UTF-8, no NUL): tasks get it as an environment "
                               "variable", field="value") from None


def is_file_request(request: security_pb2.Secret) -> bool:
    return request.mount_requirement == security_pb2.Secret.FILE or not request.env_var


def secret_requests(template: tasks_pb2.TaskTemplate) -> list[security_pb2.Secret]:
    return list(template.security_context.secrets)


async def secret_env(store: SecretStore, template: tasks_pb2.TaskTemplate, project: str, domain: str,
                     passed: frozenset[str] = frozenset(), by_reference: Collection[str] = ()) -> dict[str, str]:
    """The environment a task's secret requests ask for, from the store (a variable the engine passes on
    with --pass-env stands in for a missing one), but for the variables pods take ``by_reference``;
    SecretNotFoundError naming the first it cannot give."""
    env: dict[str, str] = {}
    for request in secret_requests(template):
        if is_file_request(request) or request.env_var in by_reference:
            continue  # files: mounted, or refused when the run was created
        try:
            env[request.env_var] = (await store.resolve(request.key, project=project, domain=domain)).decode()
        except SecretNotFoundError:
            if request.env_var not in passed:
                raise
    return env


async def secret_refs(store: SecretStore, template: tasks_pb2.TaskTemplate, project: str,
                      domain: str) -> dict[str, tuple[str, str]]:
    """Where a store that keeps each value in a Kubernetes Secret has what the task asks for: variable →
    (Secret, key), for pods to take by ``secretKeyRef``; empty for other stores."""
    reference = getattr(store, "reference", None)
    refs: dict[str, tuple[str, str]] = {}
    if reference is None:
        return refs
    for request in secret_requests(template):
        if is_file_request(request):
            continue
        try:
            refs[request.env_var] = await reference(request.key, project=project, domain=domain)
        except SecretNotFoundError:
            continue  # an engine variable passed on stands in: its value travels as before
    return refs


def secret_file_path(request: security_pb2.Secret) -> str:
    """Where a file-mounted secret appears, relative to Flyte's mount path (/etc/flyte/secrets, the one the
    SDK allows): ``<group>/<key>``, or ``<key>``."""
    return f"{request.group}/{request.key}" if request.group else request.key


async def secret_file_refs(store: SecretStore, template: tasks_pb2.TaskTemplate, project: str,
                           domain: str) -> list[tuple[str, str, str]]:
    """(path under /etc/flyte/secrets, Kubernetes Secret, key) for each secret the task asks for as a file, from a
    store that keeps them in Kubernetes Secrets; SecretNotFoundError naming the first it cannot give."""
    reference = getattr(store, "reference", None)
    found = []
    for request in secret_requests(template):
        if not is_file_request(request):
            continue
        if reference is None:
            raise SecretNotFoundError(f"secret {request.key!r} is asked for as a file, which this secret store "
                                      "cannot mount")
        found.append((secret_file_path(request), *await reference(request.key, project=project, domain=domain)))
    return found


async def secret_file_values(store: SecretStore, template: tasks_pb2.TaskTemplate, project: str,
                             domain: str) -> dict[str, str]:
    """(path under /etc/flyte/secrets → value) for each secret the task asks for as a file, for a local
    process to mount (``plugins/secret_mounts.py``); SecretNotFoundError naming the first missing one."""
    return {secret_file_path(request): (await store.resolve(request.key, project=project, domain=domain)).decode()
            for request in secret_requests(template) if is_file_request(request)}


class SecretStore(abc.ABC):
    @abc.abstractmethod
    async def put(self, name: str, value: bytes, *, project: str = "", domain: str = "") -> SecretInfo: ...

    @abc.abstractmethod
    async def delete(self, name: str, *, project: str = "", domain: str = "") -> None:
        """SecretNotFoundError when there is no such secret in that scope."""

    @abc.abstractmethod
    async def list(self, *, project: str | None = None, domain: str | None = None) -> list[SecretInfo]: ...

    @abc.abstractmethod
    async def resolve(self, name: str, *, project: str, domain: str) -> bytes:
        """The value a task of ``project``/``domain`` gets for ``name``: its domain's, else its project's, else
        the global one; SecretNotFoundError when none exists."""

    async def values_for(self, project: str, domain: str) -> list[str]:
        """Every value a task of this scope could be given, for masking what tasks print."""
        out = []
        for info in await self.list(project=project, domain=domain):
            try:
                out.append((await self.resolve(info.name, project=project, domain=domain)).decode(errors="replace"))
            except SecretNotFoundError:
                continue
        return [v for v in out if v]


class EmbeddedSecretStore(SecretStore):
    """Values encrypted in the engine's database (``SecretsRepository``), the key in its own 0600 file."""

    def __init__(self, repository, data_dir: Path, clock=None):
        import time

        self.repository = repository
        self.key_file = Path(data_dir) / KEY_FILE
        self.clock = clock or time.time
        self._fernet = None
        self._masks: dict[tuple[str, str], list[str]] = {}  # values_for, by scope, until a secret changes

    def _cipher(self):
        if self._fernet is None:
            from cryptography.fernet import Fernet

            if not self.key_file.exists():
                self.key_file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key())
            self._fernet = Fernet(self.key_file.read_bytes().strip())
        return self._fernet

    async def put(self, name: str, value: bytes, *, project: str = "", domain: str = "") -> SecretInfo:
        check_secret_scope(name, project, domain)
        check_secret_value(value)
        now = self.clock()
        self._masks.clear()
        return await self.repository.secret_put(project, domain, name, self._cipher().encrypt(value), now)

    async def delete(self, name: str, *, project: str = "", domain: str = "") -> None:
        check_secret_scope(name, project, domain)
        self._masks.clear()
        if not await self.repository.secret_delete(project, domain, name):
            raise SecretNotFoundError(f"no secret {name!r} in {scope_text(project, domain)}")

    async def values_for(self, project: str, domain: str) -> list[str]:
        """As the base class, kept until a secret changes: a followed log asks for them at every read."""
        key = (project, domain)
        if key not in self._masks:
            self._masks[key] = await super().values_for(project, domain)
        return self._masks[key]

    async def list(self, *, project: str | None = None, domain: str | None = None) -> list[SecretInfo]:
        """All secrets, or those a task of ``project``/``domain`` can see (its scope and the wider ones)."""
        return await self.repository.secret_list(project, domain)

    async def resolve(self, name: str, *, project: str, domain: str) -> bytes:
        for scope in ((project, domain), (project, ""), ("", "")):
            ciphertext = await self.repository.secret_get(scope[0], scope[1], name)
            if ciphertext is not None:
                from cryptography.fernet import InvalidToken

                try:
                    return self._cipher().decrypt(ciphertext)
                except InvalidToken:
                    raise SecretNotFoundError(f"secret {name!r} cannot be decrypted with {self.key_file} (was the "
                                              "key file replaced?)") from None
        raise SecretNotFoundError(f"no secret {name!r} for project {project!r}, domain {domain!r} (nor project-wide "
                                  "or global)")


def scope_text(project: str, domain: str) -> str:
    if project and domain:
        return f"project {project!r}, domain {domain!r}"
    return f"project {project!r}" if project else "the global scope"


def mask(text: str, values: list[str]) -> str:
    """``text`` with every secret value replaced (longest first, so one value inside another goes whole)."""
    pieces = set(values) | {line for value in values for line in value.splitlines()}  # logs come a line at a time
    for value in sorted(pieces, key=len, reverse=True):
        if len(value) >= 4:  # a one-letter "secret" would blank out the log
            text = text.replace(value, MASK)
    return text
