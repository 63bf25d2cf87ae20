"""Where task data lives: the data directory, or a raw-data prefix on an object store (``--raw-data``).

Inputs, outputs, error files and uploads (code bundles, File/Dir inputs) go through one ``DataStore``: local
paths on the embedded default; on an object store (``s3://``, ``gs://``, ``abfs://``) through the flyte SDK's
own storage layer, configured from the same variables its tasks read (``FLYTE_AWS_ENDPOINT``,
``FLYTE_AWS_ACCESS_KEY_ID``...), so what the engine writes a task finds and the other way round. Methods are
blocking (the remote ones run on fsspec's I/O thread): callers on the event loop use the ``a``-prefixed ones.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import posixpath
import re
import shutil
from pathlib import Path

from engine.paths import is_within, local_path

REMOTE_SCHEMES = ("s3", "gs", "abfs", "abfss")
# bucket (or container) names as the three clouds allow them, and a prefix of plain path segments
_REMOTE_URI = re.compile(r"^(s3|gs|abfs|abfss)://([a-z0-9][a-z0-9._@-]{1,253}[a-z0-9])(/[A-Za-z0-9._\-/=+@]*)?$")


class DataStoreError(ValueError):
    pass


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def check_raw_data_prefix(prefix: str) -> str:
    """``scheme://bucket[/path]`` without a trailing slash, or DataStoreError saying what is wrong."""
    text = prefix.strip().rstrip("/")
    match = _REMOTE_URI.match(text)
    if match is None:
        raise DataStoreError(f"--raw-data must be an object store prefix such as s3://bucket/path "
                             f"({', '.join(s + '://' for s in REMOTE_SCHEMES)}), not {prefix!r}")
    if any(part in (".", "..") for part in (match.group(3) or "").split("/")):
        raise DataStoreError(f"--raw-data {prefix!r} has '.' or '..' segments")
    return text


class DataStore:
    """The data directory: plain files."""

    remote = False

    def __init__(self, data_dir: Path):
        self.root = str(Path(data_dir) / "data")
        self.uploads_root = str(Path(data_dir) / "uploads")

    def describe(self) -> str:
        return self.root

    def upload_uri(self, *parts: str) -> str:
        """Where the upload store's ``<project>/<domain>/<folder>/<name>`` is for tasks."""
        return "/".join([self.uploads_root, *parts])

    def contains(self, uri: str, root: str) -> bool:
        """``uri`` names ``root`` or something below it (syntactically: a request's links are checked apart)."""
        return is_within(local_path(uri), [root])

    def read(self, uri: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        with open(local_path(uri), "rb") as f:
            return f.read()

    def write(self, uri: str, data: bytes) -> None:
        """Create or replace, making the directory. No fsync: a new run's inputs are as durable as the WAL
        commit that follows (synchronous=NORMAL survives a process crash)."""
        path = local_path(uri)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def exists(self, uri: str) -> bool:
        return os.path.exists(local_path(uri))

    def size(self, uri: str) -> int:
        return os.path.getsize(local_path(uri))

    def copy(self, source: str, target: str) -> None:
        """FileNotFoundError (its filename the source) when the source is gone."""
        target = local_path(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(local_path(source), target)

    def task_env(self) -> dict[str, str]:
        """What a task needs to reach this store (nothing: it shares the filesystem)."""
        return {}

    async def aread(self, uri: str) -> bytes:
        return self.read(uri)

    async def awrite(self, uri: str, data: bytes) -> None:
        self.write(uri, data)

    async def aexists(self, uri: str) -> bool:
        return self.exists(uri)

    async def acopy(self, source: str, target: str) -> None:
        self.copy(source, target)


class ObjectDataStore(DataStore):
    """A raw-data prefix on an object store, through the flyte SDK's storage layer (obstore)."""

    remote = True

    def __init__(self, prefix: str):
        from flyte.storage import ABFS, GCS, S3

        self.prefix = check_raw_data_prefix(prefix)
        self.scheme = self.prefix.split("://", 1)[0]
        self.root = f"{self.prefix}/data"
        self.uploads_root = f"{self.prefix}/uploads"
        # the engine's environment, by the SDK's own names and reader (.auto()), as its tasks read theirs
        self._config = {"s3": S3, "gs": GCS, "abfs": ABFS, "abfss": ABFS}[self.scheme].auto()
        self.fs = self._filesystem()

    def _filesystem(self):
        import fsspec

        kwargs = self._config.get_fsspec_kwargs()
        # the SDK's retries (5 s first backoff, 3 min in all) would stall reconciles and the start's probe
        kwargs["retry_config"] = {"max_retries": 2, "backoff": {"init_backoff": dt.timedelta(milliseconds=100),
                                                                "max_backoff": dt.timedelta(seconds=2), "base": 2},
                                  "retry_timeout": dt.timedelta(seconds=20)}
        kwargs["client_options"] = {**kwargs.get("client_options", {}), "connect_timeout": "5s", "timeout": "300s"}
        return fsspec.filesystem(self.scheme, **kwargs)

    def describe(self) -> str:
        return self.prefix

    def contains(self, uri: str, root: str) -> bool:
        if not uri.startswith(f"{self.scheme}://"):
            return False
        path = uri.rstrip("/")
        if any(part in (".", "..") for part in path.split("://", 1)[1].split("/")):
            return False
        return path == root or path.startswith(root.rstrip("/") + "/")

    def task_env(self) -> dict[str, str]:
        """The storage variables the engine was given (the SDK's names), for task pods: secret values, since
        they hold credentials."""
        names = set(type(self._config)._KEY_ENV_VAR_MAPPING.values())
        names.update({"AWS_REGION", "AWS_DEFAULT_REGION"})
        return {k: v for k, v in sorted(os.environ.items()) if k in names and v}

    @staticmethod
    def _failed(uri: str, exc: Exception) -> OSError:
        """The store's error as an OSError (FileNotFoundError for a missing object), naming the object: what
        the callers of the local store already handle."""
        if isinstance(exc, FileNotFoundError):
            error = FileNotFoundError(2, f"no such object: {uri}")
        elif isinstance(exc, OSError) and exc.errno is not None:
            return exc
        else:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            error = OSError(5, f"{type(exc).__name__}: {text}")
        error.filename = uri
        return error

    def read(self, uri: str) -> bytes:
        try:
            return self.fs.cat_file(uri)
        except Exception as exc:  # noqa: BLE001 - obstore's errors, turned into OSError
            raise self._failed(uri, exc) from None

    def write(self, uri: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(uri, data)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(uri, exc) from None

    def exists(self, uri: str) -> bool:
        try:
            return bool(self.fs.exists(uri))
        except Exception as exc:  # noqa: BLE001
            raise self._failed(uri, exc) from None

    def size(self, uri: str) -> int:
        try:
            return int(self.fs.info(uri)["size"])
        except Exception as exc:  # noqa: BLE001
            raise self._failed(uri, exc) from None

    def copy(self, source: str, target: str) -> None:
        """FileNotFoundError (its filename the source) when the source is gone."""
        if not is_remote(source):
            self.put_file(source, target)
            return
        try:
            self.fs.copy(source, target)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(source if isinstance(exc, FileNotFoundError) else target, exc) from None

    def put_file(self, path: str, uri: str) -> None:
        """A local file to ``uri``."""
        try:
            self.fs.put_file(local_path(path), uri)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(uri, exc) from None

    def put_tree(self, directory: str, uri: str) -> None:
        """Every file under a local directory to the same names below ``uri``."""
        for current, _dirs, files in os.walk(directory):
            for name in sorted(files):
                full = os.path.join(current, name)
                relative = os.path.relpath(full, directory).replace(os.sep, "/")
                self.put_file(full, posixpath.join(uri, relative))

    def probe(self) -> None:
        """Write, read and delete one object: a clear error at start, not at the first run's."""
        marker = f"{self.prefix}/.taskdeck-probe"
        try:
            self.write(marker, b"ok")
            if self.read(marker) != b"ok":
                raise OSError("what was written did not read back")
            self.fs.rm_file(marker)
        except Exception as exc:  # noqa: BLE001 - the store's own errors are many; say which store
            raise DataStoreError(f"cannot use the raw-data store {self.prefix}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else exc!r}") from None

    async def aread(self, uri: str) -> bytes:
        return await asyncio.to_thread(self.read, uri)

    async def awrite(self, uri: str, data: bytes) -> None:
        await asyncio.to_thread(self.write, uri, data)

    async def aexists(self, uri: str) -> bool:
        return await asyncio.to_thread(self.exists, uri)

    async def acopy(self, source: str, target: str) -> None:
        await asyncio.to_thread(self.copy, source, target)


def open_data_store(data_dir: Path, raw_data: str | None) -> DataStore:
    return DataStore(data_dir) if not raw_data else ObjectDataStore(raw_data)
