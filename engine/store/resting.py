"""Terminated TaskActions at rest: out of memory until someone asks for one.

A terminated TaskAction stays a resource until the garbage collector deletes it (the GC TTL), but
nothing reconciles it any more. Keeping every one as a live object made the engine's memory grow with
each run (~1 MiB per 100 children). At rest, only what the store's indexes need is kept (labels for
selectors, owner uids for cascades); the object itself is read back from SQLite, one primary-key
lookup, when it is peeked, listed or written, and the last few read are cached.
"""

from __future__ import annotations

import collections
import dataclasses
import sqlite3

from engine.model import LABEL_TERMINATION_STATUS, TaskAction

CACHED = 512


def can_rest(obj: TaskAction) -> bool:
    """Terminated and labelled so, and not being deleted (a deletion is still work to do)."""
    return LABEL_TERMINATION_STATUS in obj.metadata.labels and obj.metadata.deletion_timestamp is None


@dataclasses.dataclass(slots=True)
class Resting:
    labels: dict[str, str]
    owner_uids: tuple[str, ...]


class RestingObjects:
    def __init__(self) -> None:
        self.entries: dict[str, Resting] = {}
        self._cache: collections.OrderedDict[str, TaskAction] = collections.OrderedDict()
        self._db: sqlite3.Connection | None = None
        self.loads = 0

    def open(self, path: str) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, obj: TaskAction, *, cache: bool = True) -> None:
        self.entries[obj.name] = Resting(dict(obj.metadata.labels),
                                         tuple(ref.uid for ref in obj.metadata.owner_references))
        if cache:
            self._remember(obj)

    def pop(self, name: str) -> Resting | None:
        self._cache.pop(name, None)
        return self.entries.pop(name, None)

    def get(self, name: str) -> TaskAction | None:
        if name not in self.entries:
            return None
        obj = self._cache.get(name)
        if obj is not None:
            self._cache.move_to_end(name)
            return obj
        if self._db is None:
            return None
        # fetchall, not fetchone: the statement runs to its end, so no read snapshot stays open
        rows = self._db.execute("SELECT body FROM taskactions WHERE name = ?", (name,)).fetchall()
        if not rows:
            return None
        self.loads += 1
        obj = TaskAction.from_json(rows[0][0])
        self._remember(obj)
        return obj

    def names_matching(self, matches) -> list[str]:
        return [name for name, entry in self.entries.items() if matches(entry.labels)]

    def _remember(self, obj: TaskAction) -> None:
        self._cache[obj.name] = obj
        self._cache.move_to_end(obj.name)
        while len(self._cache) > CACHED:
            self._cache.popitem(last=False)
