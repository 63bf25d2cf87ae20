"""The change feed: what changed in the runs data, in order, resumable from a cursor.

Every commit that touches the actions table becomes one numbered item naming the (run, action) pairs it
changed; storage going down or coming back is an item too. A reader follows the feed from a cursor
(``<epoch>.<seq>``): it gets every item after it, once, then live ones as they come. A cursor the feed no
longer holds (older than its history, or from before the engine restarted: another epoch) is answered
with a snapshot item ("re-read everything"), then the feed goes on from there. Readers learn *what*
changed and read the rows themselves, so an item stays small whatever the change.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
from collections.abc import AsyncIterator

from engine.client.models import Change
from engine.storage_health import StorageHealth
from engine.store.base import ActionsChanged, RunsRepository, StorageChanged

DEFAULT_HISTORY = 5_000  # items kept for resuming readers (further behind: a fresh snapshot)
HEARTBEAT_SECONDS = 5.0


class ChangeFeed:
    def __init__(self, store: RunsRepository, health: StorageHealth, history: int = DEFAULT_HISTORY):
        self.epoch = secrets.token_hex(4)
        self._seq = 0
        self._items: collections.deque[tuple[int, Change]] = collections.deque(maxlen=history)
        self._wake = asyncio.Event()
        self.followers = 0  # readers following now (an idle engine with none may exit)
        store.subscribe(self._on_change)
        health.subscribe(self._on_storage)

    @property
    def cursor(self) -> str:
        return f"{self.epoch}.{self._seq}"

    def _append(self, kind: str, actions: tuple[tuple[str, str], ...] = (), storage_error: str | None = None) -> None:
        self._seq += 1
        self._items.append((self._seq, Change(kind, self.cursor, actions, storage_error)))
        self._wake.set()
        self._wake = asyncio.Event()

    def _on_change(self, change) -> None:
        if isinstance(change, ActionsChanged) and change.keys:
            self._append("changes", tuple(dict.fromkeys((key[2], key[3]) for key in change.keys)))

    def _on_storage(self, change: StorageChanged) -> None:
        self._append("storage", storage_error=change.error)

    def _resume_point(self, cursor: str | None) -> int | None:
        """The sequence number to follow after, or None when ``cursor`` cannot be resumed from."""
        if not cursor:
            return None
        epoch, _, seq = cursor.partition(".")
        if epoch != self.epoch or not seq.isdigit() or int(seq) > self._seq:
            return None
        oldest = self._items[0][0] if self._items else self._seq + 1
        return int(seq) if int(seq) >= oldest - 1 else None

    async def follow(self, cursor: str | None = None, run: str | None = None,
                     heartbeat: float = HEARTBEAT_SECONDS) -> AsyncIterator[Change]:
        """Items after ``cursor`` (a snapshot first when it cannot be resumed), then live ones.

        ``run`` keeps only the changes of that run (storage items always come). A heartbeat carries the
        current cursor when nothing was sent for ``heartbeat`` seconds.
        """
        after = self._resume_point(cursor)
        self.followers += 1
        try:
            if after is None:
                after = self._seq
                yield Change("snapshot", self.cursor)
            while True:
                wake = self._wake
                pending = self._seq - after
                if pending > len(self._items):  # a reader this far behind re-reads everything instead
                    after = self._seq
                    yield Change("snapshot", self.cursor)
                    continue
                if pending > 0:
                    seq, item = self._items[len(self._items) - pending]  # near the end: cheap to index
                    after = seq
                    if run is not None and item.kind == "changes":
                        mine = tuple(a for a in item.actions if a[0] == run)
                        if not mine:
                            continue
                        item = Change("changes", item.cursor, mine)
                    yield item
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), heartbeat)
                except TimeoutError:
                    yield Change("heartbeat", f"{self.epoch}.{after}")
        finally:
            self.followers -= 1
