"""Process slots: a real bound, handed on one waiter at a time in arrival order, lent by waiting parents."""

from __future__ import annotations

import pytest

from engine.plugins import slots as slots_module
from engine.plugins.slots import ProcessSlots, default_capacity


class Wakes:
    def __init__(self):
        self.woken: list[str] = []

    def __call__(self, name: str):
        return lambda: self.woken.append(name)


def test_the_bound_holds_and_a_freed_slot_goes_to_the_first_waiter_only():
    slots, wakes = ProcessSlots(2), Wakes()
    assert slots.acquire("a", None, wakes("a")) and slots.acquire("b", None, wakes("b"))
    assert not slots.acquire("c", None, wakes("c"))
    assert not slots.acquire("d", None, wakes("d"))
    assert slots.in_use == 2 and slots.waiting == 2
    slots.release("a")
    assert wakes.woken == ["c"]  # one freed slot, one waiter woken
    assert not slots.acquire("e", None, wakes("e"))  # a newcomer cannot take the slot handed to c
    assert not slots.acquire("d", None, wakes("d"))  # nor can d, queued after c
    assert slots.acquire("c", None, wakes("c"))
    assert slots.in_use == 2 and slots.peak == 2
    slots.release("b")
    assert wakes.woken == ["c", "d"]


def test_a_waiter_that_gives_up_passes_its_turn_on():
    slots, wakes = ProcessSlots(1), Wakes()
    assert slots.acquire("a", None, wakes("a"))
    assert not slots.acquire("b", None, wakes("b"))
    assert not slots.acquire("c", None, wakes("c"))
    slots.release("a")
    assert wakes.woken == ["b"]
    slots.release("b")  # aborted before it claimed the slot
    assert wakes.woken == ["b", "c"] and slots.acquire("c", None, wakes("c"))


def test_an_unclaimed_handoff_expires(monkeypatch):
    slots, wakes = ProcessSlots(1), Wakes()
    slots.acquire("a", None, wakes("a"))
    slots.acquire("b", None, wakes("b"))
    slots.release("a")
    assert wakes.woken == ["b"] and slots.in_use == 1
    monkeypatch.setattr(slots_module, "HANDOFF_SECONDS", -1.0)
    slots._handed = {name: (0.0, parent) for name, (_, parent) in slots._handed.items()}
    assert slots.acquire("c", None, wakes("c"))  # b never came: its slot is free again


def test_a_parent_lends_its_slot_to_one_child_and_takes_it_back_after_the_last():
    slots, wakes = ProcessSlots(1), Wakes()
    assert slots.acquire("p", None, wakes("p"))
    assert slots.acquire("x", "p", wakes("x"))  # the parent's slot
    assert not slots.acquire("y", "p", wakes("y"))
    assert slots.in_use == 1
    slots.release("x")
    assert wakes.woken == ["y"] and slots.acquire("y", "p", wakes("y"))
    assert slots.snapshot()["lending"] == 1
    slots.release("y")
    assert slots.snapshot()["lending"] == 0 and slots.in_use == 1  # p computes again


def test_a_three_level_tree_completes_with_a_bound_of_two():
    """Simulated: each process either starts its children and waits for them, or ends; depth 3, fan-out 3."""
    slots, wakes = ProcessSlots(2), Wakes()
    children = {"r": ["m0", "m1", "m2"], **{f"m{i}": [f"l{i}{j}" for j in range(3)] for i in range(3)}}
    parent_of = {c: p for p, cs in children.items() for c in cs}
    live: set[str] = set()
    pending = ["r"]
    finished: set[str] = set()
    max_computing = 0
    for _ in range(1000):
        for name in list(pending):
            if slots.acquire(name, parent_of.get(name), wakes(name)):
                pending.remove(name)
                live.add(name)
                pending.extend(c for c in children.get(name, []) if c not in pending)
        computing = [n for n in live if not any(c in live or c in pending for c in children.get(n, []))
                     or n not in children]
        max_computing = max(max_computing, len([n for n in computing if n not in children]))
        done = [n for n in live if all(c in finished for c in children.get(n, []))]
        if not done and not pending and not live:
            break
        for name in done[:1]:  # one process ends per step
            live.discard(name)
            finished.add(name)
            slots.release(name)
        if "r" in finished:
            break
    assert "r" in finished and len(finished) == 13
    assert max_computing <= 2 and slots.in_use == 0


def test_capacity_is_about_twice_the_cores(monkeypatch):
    monkeypatch.setattr(slots_module.os, "cpu_count", lambda: 2)
    assert default_capacity() == 4
    monkeypatch.setattr(slots_module.os, "cpu_count", lambda: 8)
    assert default_capacity() == 16
    with pytest.raises(ValueError):
        ProcessSlots(0)
