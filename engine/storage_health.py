"""Whether the engine can write: its database, and the files of its data directory.

A database fault comes from the store (a failed commit); a file fault is reported by whoever failed to
write a file the engine owns (inputs, logs, launch markers, cached outputs). Either one pauses launching
until a probe write succeeds; both show in ``/health``, in the headless output and in the console.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from engine.store.base import EngineStore, StorageChanged

log = logging.getLogger(__name__)

RECHECK_SECONDS = (1.0, 30.0)  # after a file fault, probe from every second, backing off to every 30 s


class StorageHealth:
    def __init__(self, store: EngineStore, data_dir: Path):
        self.store = store
        self.data_dir = Path(data_dir)
        self.file_error: str | None = None
        self._fault_path: str | None = None
        self._subscribers: list[Callable[[StorageChanged], None]] = []
        self._published: str | None = None
        self._recheck: asyncio.Task | None = None
        store.subscribe(self._on_store_change)

    @property
    def error(self) -> str | None:
        """Why writes fail now (the database's reason first), or None."""
        return self.store.storage_error or self.file_error

    def subscribe(self, callback: Callable[[StorageChanged], None]) -> Callable[[], None]:
        """``callback(StorageChanged(error))`` each time ``error`` changes between None and a reason."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def report_file_fault(self, path: str, exc: OSError) -> None:
        reason = f"cannot write {path}: {exc.strerror or exc}"
        if self.file_error is None:
            log.error("storage fault: %s", reason)
        self.file_error, self._fault_path = reason, path
        self._publish()
        if self._recheck is None or self._recheck.done():  # notice recovery even when nothing else probes
            with contextlib.suppress(RuntimeError):  # no running loop: the next writable() call probes
                self._recheck = asyncio.get_running_loop().create_task(self._recheck_files(), name="storage-recheck")

    async def writable(self) -> bool:
        """True when both the database and the data directory accept writes (probing after a fault)."""
        if self.store.storage_error is not None and not await self.store.probe():
            return False
        return self.file_error is None or self._files_recovered()

    def _files_recovered(self) -> bool:
        if not self._probe_files():
            return False
        if self.file_error is not None:
            log.warning("the data directory accepts writes again")
            self.file_error = self._fault_path = None
            self._publish()
        return True

    async def _recheck_files(self) -> None:
        delay = RECHECK_SECONDS[0]
        while self.file_error is not None and not self._files_recovered():
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECHECK_SECONDS[1])

    async def close(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
            await asyncio.gather(self._recheck, return_exceptions=True)
            self._recheck = None

    def _probe_files(self) -> bool:
        """Create and remove a file where the fault happened (its nearest existing directory) and in the
        data directory's roots."""
        places = {self.data_dir / "logs", self.data_dir / "data"}
        if self._fault_path:
            place = Path(self._fault_path).parent
            while not place.exists() and place != self.data_dir and place.parent != place:
                place = place.parent
            places.add(place)
        for place in places:
            probe = place / f".taskdeck-probe-{uuid.uuid4().hex}"
            try:
                place.mkdir(parents=True, exist_ok=True)
                fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, b"probe")
                finally:
                    os.close(fd)
            except OSError:
                return False
            finally:
                with contextlib.suppress(OSError):
                    probe.unlink()
        return True

    def _on_store_change(self, change) -> None:
        if isinstance(change, StorageChanged):
            self._publish()

    def _publish(self) -> None:
        error = self.error
        if (error is None) == (self._published is None):
            self._published = error
            return  # no change between healthy and faulty
        self._published = error
        for callback in list(self._subscribers):
            try:
                callback(StorageChanged(error))
            except Exception:  # noqa: BLE001 - a broken subscriber must not break the writer
                log.exception("storage health subscriber failed")
