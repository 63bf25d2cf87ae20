"""``taskdeck --headless``: the engine alone, printing one line per action event and storage change.

Ctrl-C (or SIGTERM) stops it. With runs still active, the first Ctrl-C says what happens to them (their
task processes keep running; the next engine on the data directory adopts them) and a second one stops
it; SIGTERM, what a service manager sends, stops it at once, saying the same. With ``idle_exit`` it
also stops by itself once nothing has happened for that long: no active run, no client following the
change feed, no request served (what ``taskdeck run`` relies on when it starts an engine in the
background).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from collections.abc import Callable

from engine.engine import Engine
from engine.events import decode_event
from engine.phases import ActionPhase
from engine.store.base import EventsRecorded, StorageChanged

IDLE_CHECK_SECONDS = 1.0


def event_line(event) -> str:
    """One event as headless prints it: time, action, attempt, phase, and the error or reason."""
    when = dt.datetime.fromtimestamp(event.updated_time, dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
    line = f"{when} {event.run_name}/{event.name} attempt {event.attempt} {ActionPhase(event.phase).name}"
    info = decode_event(event)
    if info.HasField("error_info"):
        message = info.error_info.message.splitlines()[0] if info.error_info.message else ""
        kind = (event.error_kind or "UNKNOWN").removeprefix("KIND_")
        line += f" [{kind}] {info.error_info.code}: {message[:160]}"
    elif info.cluster_events and ActionPhase(event.phase) in (ActionPhase.PAUSED, ActionPhase.ABORTED,
                                                              ActionPhase.SUCCEEDED):
        reason = info.cluster_events[-1].message
        if reason and reason not in ("aborted",):
            line += f" ({reason[:160]})"
    return line


async def active_runs(engine: Engine) -> int:
    counts = await engine.runs.run_counts()
    return sum(n for phase, n in counts.items() if not ActionPhase(phase).is_terminal)


async def serve(engine: Engine, *, idle_exit: float | None = None, say: Callable[[str], None] | None = None) -> int:
    say = say or (lambda text: print(text, flush=True))
    stop = asyncio.Event()
    interrupts = 0

    async def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        active = await active_runs(engine)
        if active and interrupts == 1:
            say(f"{active} run(s) still active: stopping leaves their task processes running, and the next engine "
                "on this data directory adopts them. Press Ctrl-C again to stop now.")
            return
        stop.set()

    async def on_terminate() -> None:
        active = await active_runs(engine)
        if active:
            say(f"stopping with {active} run(s) active: their task processes keep running; the next engine on "
                "this data directory adopts them")
        stop.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: asyncio.ensure_future(on_interrupt()))
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(on_terminate()))

    def on_storage(change: StorageChanged) -> None:
        if change.error:
            say(f"storage unavailable: {change.error}; launching nothing until writes succeed again")
        else:
            say("storage available again; resuming")

    def on_change(change) -> None:
        if isinstance(change, EventsRecorded):
            for event in change.events:
                say(event_line(event))

    unsubscribe = engine.store.subscribe(on_change)
    unsubscribe_storage = engine.health.subscribe(on_storage)
    say(f"TaskDeck engine serving {engine.data_dir} at {engine.url} (Ctrl-C to stop; clients authenticate "
        f"with the token in {engine.token_path})" + (f"; it stops after {idle_exit:g} s idle" if idle_exit else ""))
    watchdog = asyncio.ensure_future(_idle_watch(engine, idle_exit, stop, say)) if idle_exit else None
    try:
        await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
        unsubscribe()
        unsubscribe_storage()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await engine.stop()
        say("engine stopped")
    return 0


async def active_triggers(engine: Engine) -> bool:
    """An active trigger keeps the engine serving: it has runs to start."""
    return any(t.active for t in await engine.triggers.list())


async def _idle_watch(engine: Engine, idle_exit: float, stop: asyncio.Event, say) -> None:
    idle_since = time.monotonic()
    while not stop.is_set():
        await asyncio.sleep(IDLE_CHECK_SECONDS)
        busy = (engine.services.feed.followers or engine.last_request_age() < IDLE_CHECK_SECONDS * 2
                or await active_runs(engine) or await active_triggers(engine))
        if busy:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_exit:
            say(f"idle for {idle_exit:g} s: stopping")
            stop.set()
