"""Quotas (seed 001's ResourceManager, enforced): at most N actions of a project and domain, or of a queue
(the SDK's task-level ``queue``), run at once; the others wait as WaitingForResources, saying which quota.

* A grant is taken synchronously when an attempt is about to launch and given back when the action ends
  (terminal, aborted, deleted); an action a restarted engine finds launched is counted again, bound or not.
* Freed capacity goes to the waiting run that holds the fewest grants of that quota, the earliest of its
  waiters first, so a run with a hundred queued children does not starve a run that arrived after it.
* A parent awaiting its children lends them its grant (as process slots do), so a tree of any depth
  completes under any quota.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable

ANNOTATION_QUEUE = "taskdeck.flyte.org/queue"  # the TaskAction's queue, as the SDK named it
HANDOFF_SECONDS = 30.0  # a grant handed to a waiter that never claims it is taken back after this


class QuotaConfigError(ValueError):
    pass


def parse_limits(items: list[str] | tuple[str, ...], what: str) -> dict[str, int]:
    """``NAME=N`` entries (``PROJECT/DOMAIN=N`` for project quotas) as a dict; QuotaConfigError otherwise."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, number = item.partition("=")
        try:
            limit = int(number)
        except ValueError:
            limit = 0
        if not sep or not name.strip() or limit < 1 or limit > 100_000:
            raise QuotaConfigError(f"{what} {item!r} is not NAME=N with N from 1 to 100000")
        if what == "--quota" and name.count("/") != 1:
            raise QuotaConfigError(f"--quota {item!r}: name a project and a domain, as PROJECT/DOMAIN=N")
        out[name.strip()] = limit
    return out


@dataclasses.dataclass
class _Holder:
    run: str
    parent: str | None
    lent: bool = False


@dataclasses.dataclass
class _Waiter:
    run: str
    parent: str | None
    wake: Callable[[], None]
    arrived: int


class FairQuota:
    """One quota: holders, waiters, hand-offs; fair across runs."""

    def __init__(self, name: str, limit: int):
        self.name = name
        self.limit = limit
        self._holders: dict[str, _Holder] = {}
        self._waiting: dict[str, _Waiter] = {}
        self._handed: dict[str, tuple[float, str, str | None]] = {}  # name → (deadline, run, parent)
        self._children: dict[str, set[str]] = collections.defaultdict(set)
        self._arrivals = 0

    @property
    def in_use(self) -> int:
        return sum(1 for h in self._holders.values() if not h.lent) + len(self._handed)

    def acquire(self, name: str, run: str, parent: str | None, wake: Callable[[], None]) -> bool:
        if name in self._holders:
            return True
        self._expire()
        if parent is not None:
            self._children[parent].add(name)
        if self._handed.pop(name, None) is not None:
            return self._take(name, run, parent)
        if self.in_use < self.limit and (not self._waiting or self._next() == name):
            return self._take(name, run, parent)
        lender = self._holders.get(parent) if parent is not None else None
        if lender is not None and not lender.lent:
            lender.lent = True
            return self._take(name, run, parent)
        if name not in self._waiting:
            self._arrivals += 1
            self._waiting[name] = _Waiter(run, parent, wake, self._arrivals)
        return False

    def _take(self, name: str, run: str, parent: str | None) -> bool:
        self._waiting.pop(name, None)
        self._holders[name] = _Holder(run, parent)
        return True

    def _next(self) -> str:
        """The waiter whose run holds the fewest grants; the earliest of equals."""
        held = collections.Counter(h.run for h in self._holders.values())
        held.update(run for _, run, _ in self._handed.values())
        return min(self._waiting, key=lambda n: (held[self._waiting[n].run], self._waiting[n].arrived))

    def release(self, name: str) -> None:
        waiting = self._waiting.pop(name, None)
        handed = self._handed.pop(name, None)
        holder = self._holders.pop(name, None)
        for child in self._children.pop(name, set()):
            if child in self._holders:
                self._holders[child].parent = None
        parent = holder.parent if holder else waiting.parent if waiting else handed[2] if handed else None
        if parent is not None:
            siblings = self._children.get(parent)
            if siblings is not None:
                siblings.discard(name)
            lender = self._holders.get(parent)
            if lender is not None and lender.lent and not siblings:
                lender.lent = False
        self._hand_on()

    def adopt(self, name: str, run: str, parent: str | None) -> None:
        if name not in self._holders:
            self._waiting.pop(name, None)
            self._holders[name] = _Holder(run, parent)

    def _hand_on(self) -> None:
        self._expire()
        while self._waiting and self.in_use < self.limit:
            name = self._next()
            waiter = self._waiting.pop(name)
            self._handed[name] = (time.monotonic() + HANDOFF_SECONDS, waiter.run, waiter.parent)
            waiter.wake()

    def _expire(self) -> None:
        now = time.monotonic()
        for name in [n for n, (deadline, _, _) in self._handed.items() if deadline < now]:
            del self._handed[name]

    def snapshot(self) -> dict:
        runs = collections.Counter(h.run for h in self._holders.values())
        return {"name": self.name, "limit": self.limit, "inUse": self.in_use, "waiting": len(self._waiting),
                "runs": dict(runs)}


class ResourceManager:
    def __init__(self, project_limits: dict[str, int] | None = None, queue_limits: dict[str, int] | None = None):
        self.quotas: dict[str, FairQuota] = {}
        for key, limit in (project_limits or {}).items():
            self.quotas[f"project {key}"] = FairQuota(f"project {key}", limit)
        for key, limit in (queue_limits or {}).items():
            self.quotas[f"queue {key}"] = FairQuota(f"queue {key}", limit)

    def __bool__(self) -> bool:
        return bool(self.quotas)

    def _applicable(self, project: str, domain: str, queue: str | None) -> list[FairQuota]:
        keys = [f"project {project}/{domain}"] + ([f"queue {queue}"] if queue else [])
        return [self.quotas[k] for k in keys if k in self.quotas]

    def allocate(self, name: str, run: str, parent: str | None, project: str, domain: str, queue: str | None,
                 wake: Callable[[], None]) -> str | None:
        """None: granted (every applicable quota); else why it waits. A grant taken from one quota while
        another refuses is given back, so nothing is held while waiting."""
        taken = []
        for quota in self._applicable(project, domain, queue):
            if not quota.acquire(name, run, parent, wake):
                for earlier in taken:
                    earlier.release(name)
                return (f"waiting for quota {quota.name}: {quota.in_use} of {quota.limit} running, "
                        f"{len(quota._waiting)} waiting")
            taken.append(quota)
        return None

    def adopt(self, name: str, run: str, parent: str | None, project: str, domain: str, queue: str | None) -> None:
        for quota in self._applicable(project, domain, queue):
            quota.adopt(name, run, parent)

    def release(self, name: str) -> None:
        for quota in self.quotas.values():
            quota.release(name)

    def snapshot(self) -> list[dict]:
        return [q.snapshot() for q in self.quotas.values()]
