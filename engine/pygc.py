"""How a long-lived TaskDeck process uses Python's cyclic garbage collector.

The engine keeps every live TaskAction in memory, and a console attached to a big run keeps a view of
each of its actions; neither makes cyclic garbage on its hot path (the collector finds nothing to free
there), yet with CPython's default thresholds collections took ~40% of the engine's time in
bench/throughput.py, and a console's full collections stalled its frames for ~100 ms: each walks the
whole heap, modules included. So, while an engine (or an attached console) runs: the heap that exists
at start-up is frozen out of collections, and young collections run every 10,000 allocations instead
of 700. Reference counting still frees everything acyclic at once; cycles are still collected, just
less often.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000

_holders = 0
_saved_thresholds: tuple[int, int, int] | None = None


def hold() -> None:
    """Apply the policy (nested holds count: the last release undoes it)."""
    global _holders, _saved_thresholds
    _holders += 1
    if _holders > 1:
        return
    _saved_thresholds = gc.get_threshold()
    young, middle, old = _saved_thresholds
    if young and young < YOUNG_THRESHOLD:  # 0 means the application disabled collection: leave it
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.collect()  # nothing collectable may be frozen, or it would never be freed
    gc.freeze()


def release() -> None:
    global _holders, _saved_thresholds
    if _holders == 0:
        return
    _holders -= 1
    if _holders or _saved_thresholds is None:
        return
    gc.unfreeze()
    if gc.get_threshold()[0] == YOUNG_THRESHOLD:  # unless someone changed it meanwhile
        gc.set_threshold(*_saved_thresholds)
    _saved_thresholds = None
