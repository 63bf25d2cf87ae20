"""Errors a request can end in, shared by every door (HTTP API, Connect services, command line).

Each door maps them the same way: invalid input → 400 / ``invalid_argument`` / exit 2, a missing run or
action → 404 / ``not_found``, a caller outside its scope → 403 / ``permission_denied``.
"""

from __future__ import annotations


class InvalidRunError(ValueError):
    """The request is not acceptable as given; ``field`` names the part at fault when one is."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


class RunNotFoundError(LookupError):
    pass


class AlreadyExistsError(InvalidRunError):
    """A run or an action of that name exists already (409, ``already_exists``)."""


class StorageUnavailableError(RuntimeError):
    """The database or the data directory could not be written (disk full, read-only, I/O error).
    Nothing was applied (503, ``unavailable``)."""


class PermissionDeniedError(Exception):
    """The caller's credential does not cover what it asked for."""


class DataDirError(RuntimeError):
    """The data directory cannot be used (not a directory, not creatable, not writable, bad credentials)."""


class ConfigFileError(ValueError):
    """A configuration file the engine was given is unreadable or does not fit its schema."""


class PluginNotFoundError(LookupError):
    """No plugin handles a task type, or a configured override names no plugin."""
