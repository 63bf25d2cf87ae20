"""The reusable-worker pool's bookkeeping, with a fake worker start and an explicit clock: scaling by
demand between min and max, fair hand-off of freed places, the TTLs, and start failures."""

from __future__ import annotations

import asyncio

import pytest

from engine.auth import Authority
from engine.plugins.workers import PoolSpec, WorkerPool


def spec(min_replicas=1, max_replicas=3, concurrency=2, idle_ttl=100.0, scaledown_ttl=30.0) -> PoolSpec:
    return PoolSpec("env", "v1", min_replicas, max_replicas, concurrency, idle_ttl, scaledown_ttl, "global")


class Starts:
    """A starter that makes workers ready at once (or fails them)."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.count = 0

    async def __call__(self, pool, worker) -> None:
        self.count += 1
        if self.fail:
            raise OSError("no interpreter")
        worker.state = "ready"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_workers_start_by_demand_up_to_max_and_waiters_are_served_in_order():
    starts = Starts()
    pool = WorkerPool("k", spec(min_replicas=1, max_replicas=3, concurrency=2), starts)
    woken: list[str] = []
    assert [pool.acquire(f"a{i}", lambda i=i: woken.append(f"a{i}")) for i in range(8)] == [None] * 8
    await settle()
    assert starts.count == 3  # 8 waiting, 2 per worker: capped at max 3
    assert woken == [f"a{i}" for i in range(6)]  # places handed out in arrival order
    got = [pool.acquire(f"a{i}", lambda: None) for i in range(6)]
    assert all(w is not None for w in got) and max(w.claims for w in pool.workers) == 2
    assert pool.acquire("late", lambda: woken.append("late")) is None
    pool.release(got[0])
    assert woken[-1] == "a6"  # the first waiter gets the freed place, not the newcomer
    assert pool.acquire("late", lambda: None) is None and pool.acquire("a6", lambda: None) is got[0]


async def test_idle_workers_beyond_min_go_after_scaledown_ttl_and_all_after_idle_ttl():
    pool = WorkerPool("k", spec(min_replicas=1, max_replicas=3, concurrency=1, idle_ttl=100, scaledown_ttl=30),
                      Starts())
    for i in range(3):
        pool.acquire(f"a{i}", lambda: None, now=0)
    await settle()
    workers = [pool.acquire(f"a{i}", lambda: None, now=0) for i in range(3)]
    for worker in workers:
        pool.release(worker, now=10)
    assert pool.tick(now=20) == []  # idle 10 s < scaledown 30 s
    assert len(pool.tick(now=45)) == 2  # beyond min 1
    retired = pool.tick(now=111)
    assert len(retired) == 3  # the whole environment idle for idle_ttl
    for worker in retired:
        worker.state = "gone"
        pool.worker_gone(worker)
    await settle()
    assert pool.workers == []  # not replaced: min replicas hold while the environment is in use


async def test_a_worker_that_cannot_start_makes_the_pool_unavailable_and_is_not_retried_in_a_loop():
    starts = Starts(fail=True)
    pool = WorkerPool("k", spec(min_replicas=1, max_replicas=2, concurrency=1), starts)
    assert pool.acquire("a", lambda: None) is None
    await settle()
    assert "no interpreter" in pool.unavailable()
    for _ in range(10):
        pool.acquire("a", lambda: None)
    await settle()
    assert starts.count == 1  # backed off


async def test_a_dead_worker_hands_its_waiters_back_and_is_replaced():
    starts = Starts()
    pool = WorkerPool("k", spec(min_replicas=1, max_replicas=1, concurrency=1), starts)
    pool.acquire("a", lambda: None)
    await settle()
    worker = pool.acquire("a", lambda: None)
    woken = []
    assert pool.acquire("b", lambda: woken.append("b")) is None
    worker.state = "gone"
    pool.worker_gone(worker)
    await settle()
    assert starts.count == 2 and woken == ["b"] and pool.acquire("b", lambda: None) is not None


@pytest.fixture
def authority(tmp_path) -> Authority:
    authority = Authority(tmp_path)
    authority.load()
    return authority


def test_a_worker_token_covers_only_the_runs_its_worker_is_running(authority):
    running = {"w1a2b3c4d": {("proj", "dev", "r1")}}
    authority.worker_runs = lambda worker: running.get(worker, set())
    principal = authority.principal_of(authority.worker_token("w1a2b3c4d"))
    assert principal is not None and principal.kind == "worker"
    assert principal.covers("proj", "dev", "r1") and not principal.covers("proj", "dev", "r2")
    running["w1a2b3c4d"] = set()  # its action ended: nothing is covered any more
    assert not principal.covers("proj", "dev", "r1")
    forged = authority.worker_token("w1a2b3c4d").rsplit(".", 1)[0] + ".AAAA"
    assert authority.principal_of(forged) is None
    other = authority.worker_token("weeeeeeee").replace("weeeeeeee", "w1a2b3c4d", 1)
    assert authority.principal_of(other) is None  # a signature is for one worker
