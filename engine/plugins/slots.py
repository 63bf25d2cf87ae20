"""Process slots: a real bound on the task processes that may use a CPU at once, fairly shared.

* A slot is reserved synchronously (no await between the check and the count), so concurrent launches
  cannot all pass the check and overshoot.
* Waiters queue in arrival order; each freed slot is handed to exactly one of them (reserved in its
  name, then it is woken), not to whichever reconcile runs first.
* A parent that is awaiting its children lends them its slot: when a child finds no free slot and its
  parent holds one, the child takes the parent's. The parent takes a slot back when its last live child
  ends (even over the bound: it is running already; new launches wait until the count is under it).
  So a tree of any depth completes with any bound, and at most ``capacity`` processes compute at once
  besides parents that are waiting on children.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Callable

HANDOFF_SECONDS = 30.0  # a slot handed to a waiter that never claims it is taken back after this


def default_capacity() -> int:
    """About twice the cores, at least 4: task processes mostly wait on I/O and on each other."""
    return max(4, 2 * (os.cpu_count() or 1))


@dataclasses.dataclass
class _Holder:
    parent: str | None
    lent: bool = False  # its slot is with one of its children


class ProcessSlots:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._holders: dict[str, _Holder] = {}  # live processes, by generated name
        self._waiting: collections.OrderedDict[str, tuple[str | None, Callable[[], None]]] = \
            collections.OrderedDict()
        self._handed: dict[str, tuple[float, str | None]] = {}  # slots reserved for woken waiters: deadline, parent
        self._children: dict[str, set[str]] = collections.defaultdict(set)  # parent → live or waiting children
        self.peak = 0

    @property
    def in_use(self) -> int:
        """Slots counted against the bound: live processes not lending theirs, plus slots handed on."""
        return sum(1 for h in self._holders.values() if not h.lent) + len(self._handed)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def acquire(self, name: str, parent: str | None, wake: Callable[[], None]) -> bool:
        """Reserve a slot for ``name`` (a process about to start); False: it waits and ``wake`` is called
        when a slot is handed to it. ``parent`` is the generated name of its parent's process, if any."""
        if name in self._holders:
            return True
        self._expire_handoffs()
        if parent is not None:
            self._children[parent].add(name)
        if self._handed.pop(name, None) is not None:
            return self._take(name, parent)
        if self.in_use < self.capacity and not self._waiting_before(name):
            return self._take(name, parent)
        lender = self._holders.get(parent) if parent is not None else None
        if lender is not None and not lender.lent:
            lender.lent = True
            return self._take(name, parent)
        self._waiting[name] = (parent, wake)
        return False

    def _waiting_before(self, name: str) -> bool:
        """Others queued first (a newcomer may not overtake them), unless ``name`` itself is queued."""
        return bool(self._waiting) and name not in self._waiting

    def _take(self, name: str, parent: str | None) -> bool:
        self._waiting.pop(name, None)
        self._holders[name] = _Holder(parent)
        self.peak = max(self.peak, self.in_use)
        return True

    def adopt(self, name: str, parent: str | None = None) -> None:
        """Count a process that is running already (adopted after a restart), bound or not."""
        if name not in self._holders:
            self._holders[name] = _Holder(parent)
            if parent is not None:
                self._children[parent].add(name)

    def release(self, name: str) -> None:
        """``name`` ended, or gave up waiting: free what it held and hand the slot on."""
        waiting = self._waiting.pop(name, None)
        handed = self._handed.pop(name, None)
        holder = self._holders.pop(name, None)
        children = self._children.pop(name, None)
        if children:  # its children are on their own now: none of them returns a slot to it
            for child in children:
                if child in self._holders:
                    self._holders[child].parent = None
        if holder is not None:
            parent = holder.parent
        elif waiting is not None:
            parent = waiting[0]
        else:
            parent = handed[1] if handed is not None else None
        if parent is not None:
            siblings = self._children.get(parent)
            if siblings is not None:
                siblings.discard(name)
            lender = self._holders.get(parent)
            if lender is not None and lender.lent and not siblings:
                lender.lent = False  # its last child is done: the parent computes again
        self._hand_on()

    def _hand_on(self) -> None:
        self._expire_handoffs()
        while self._waiting and self.in_use < self.capacity:
            name, (parent, wake) = self._waiting.popitem(last=False)
            self._handed[name] = (time.monotonic() + HANDOFF_SECONDS, parent)
            wake()

    def _expire_handoffs(self) -> None:
        if not self._handed:
            return
        now = time.monotonic()
        for name in [n for n, (deadline, _) in self._handed.items() if deadline < now]:
            del self._handed[name]

    def snapshot(self) -> dict[str, int]:
        return {"capacity": self.capacity, "inUse": self.in_use, "waiting": self.waiting,
                "lending": sum(1 for h in self._holders.values() if h.lent), "peak": self.peak}
