"""The one door into the engine for its clients (the console, the CLI, scripts).

``EngineClient`` is the interface; ``LocalClient`` implements it over an engine in this process and
``RemoteClient`` over a running engine's API. ``connect`` finds the engine serving a data directory (or
takes an address) and returns a remote client with the credential from the data directory or a token file.
"""

from __future__ import annotations

from pathlib import Path

from engine.auth import TOKEN_FILE, read_token
from engine.client.base import EngineClient, EngineUnavailableError
from engine.client.models import (
    ACTION_TYPE_CONDITION,
    ACTION_TYPE_TASK,
    ACTION_TYPE_TRACE,
    ROOT_ACTION_NAME,
    Action,
    ActionIO,
    ActionPhase,
    Change,
    ConditionInfo,
    Event,
    LogChunk,
    LogLine,
    cache_status_name,
    strict_dumps,
)
from engine.datadir import EngineAlreadyRunningError, default_data_dir, prepare_data_dir, read_endpoint
from engine.errors import AlreadyExistsError, DataDirError, InvalidRunError, PermissionDeniedError, RunNotFoundError
from engine.errors import StorageUnavailableError
from engine.names import InvalidNameError, check_action_name, check_run_id, check_run_name

__all__ = [
    "ACTION_TYPE_CONDITION", "ACTION_TYPE_TASK", "ACTION_TYPE_TRACE", "ROOT_ACTION_NAME", "Action", "ActionIO",
    "ActionPhase", "AlreadyExistsError", "Change", "ConditionInfo", "CredentialError", "DataDirError",
    "EngineAlreadyRunningError", "EngineClient", "EngineUnavailableError", "Event", "InvalidNameError",
    "InvalidRunError", "LogChunk", "LogLine", "PermissionDeniedError", "RunNotFoundError", "StorageUnavailableError",
    "cache_status_name", "check_action_name", "check_run_id", "check_run_name", "connect", "default_data_dir",
    "engine_url", "ensure_credential", "read_credential", "strict_dumps",
]


class CredentialError(PermissionError):
    """The engine's token cannot be read (another user's data directory, or no token file)."""


def engine_url(data_dir: Path) -> str | None:
    """The address of the engine serving ``data_dir``, or None when none does."""
    try:
        endpoint = read_endpoint(Path(data_dir))
    except PermissionError:
        raise CredentialError(f"cannot read {data_dir} (permission denied): it belongs to another user; its owner "
                              "can share the engine with a Unix group (`--share-group`)") from None
    return endpoint.get("url") if endpoint else None


def read_credential(data_dir: Path, token_file: Path | None = None) -> str:
    path = Path(token_file) if token_file else Path(data_dir) / TOKEN_FILE
    try:
        return read_token(path)
    except PermissionError:
        raise CredentialError(f"cannot read the engine's credential {path} (permission denied): its owner can "
                              "share it with a Unix group (`taskdeck --headless --share-group GROUP`)") from None
    except OSError as exc:
        raise CredentialError(f"cannot read the engine's credential {path}: {exc.strerror or exc}") from None


def connect(data_dir: Path, *, url: str | None = None, token_file: Path | None = None):
    """A RemoteClient to the engine at ``url``, or to the one serving ``data_dir``; None when none serves it."""
    from engine.client.remote import RemoteClient

    url = url or engine_url(data_dir)
    if url is None:
        return None
    return RemoteClient(url, read_credential(data_dir, token_file))


def ensure_credential(data_dir: Path) -> str:
    """The owner's token of ``data_dir``, made (with the directory) on first use."""
    from engine.auth import Authority

    if not (Path(data_dir) / TOKEN_FILE).exists():
        prepare_data_dir(Path(data_dir))
        Authority(Path(data_dir)).load()
    return read_credential(data_dir)
