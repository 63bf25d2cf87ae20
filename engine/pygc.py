"""How the engine process uses Python's cyclic garbage collector.

The engine keeps every live TaskAction in memory and makes no cyclic garbage on its hot path (the
collector finds nothing to free there), yet with CPython's default thresholds collections took ~40% of
the engine's time in bench/throughput.py: each full collection walks the whole heap, modules included.
So, while an engine runs: the heap that exists at start-up (modules, the loaded store) is frozen out of
collections, and young collections run every 10,000 allocations instead of 700. Reference counting
still frees everything acyclic at once; cycles are still collected, just less often.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000

_engines = 0
_saved_thresholds: tuple[int, int, int] | None = None


def engine_started() -> None:
    global _engines, _saved_thresholds
    _engines += 1
    if _engines > 1:
        return
    _saved_thresholds = gc.get_threshold()
    young, middle, old = _saved_thresholds
    if young and young < YOUNG_THRESHOLD:  # 0 means the application disabled collection: leave it
        gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    gc.collect()  # nothing collectable may be frozen, or it would never be freed
    gc.freeze()


def engine_stopped() -> None:
    global _engines, _saved_thresholds
    if _engines == 0:
        return
    _engines -= 1
    if _engines or _saved_thresholds is None:
        return
    gc.unfreeze()
    if gc.get_threshold()[0] == YOUNG_THRESHOLD:  # unless someone changed it meanwhile
        gc.set_threshold(*_saved_thresholds)
    _saved_thresholds = None
