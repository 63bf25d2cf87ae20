"""The run screen's action tree as data: nodes, groups with rolled-up status, and the visible lines.

A tick applies only the actions that changed. A status change touches one node (and its group's
counts); only a structural change (a new node, a fold) rebuilds the flat list of visible lines, and the
widget renders only the lines on screen. Nothing here imports Textual, so it is tested on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from engine.client import Action, ActionPhase

GROUP_PREFIX = "group:"
ROOT_ACTION = "a0"

_TERMINAL = frozenset(int(p) for p in ActionPhase if p.is_terminal)
_LIVE_ORDER = (ActionPhase.RUNNING, ActionPhase.INITIALIZING, ActionPhase.PAUSED,
               ActionPhase.WAITING_FOR_RESOURCES, ActionPhase.QUEUED)
_DONE_ORDER = (ActionPhase.FAILED, ActionPhase.TIMED_OUT, ActionPhase.ABORTED, ActionPhase.SUCCEEDED,
               ActionPhase.RECOVERED)


def rollup_phase(counts: dict[int, int]) -> ActionPhase:
    """A group's phase: the liveliest member phase while any member is live, else the worst outcome."""
    for phase in _LIVE_ORDER:
        if counts.get(int(phase)):
            return phase
    for phase in _DONE_ORDER:
        if counts.get(int(phase)):
            return phase
    return ActionPhase.QUEUED


def group_key(parent: str, group: str) -> str:
    return f"{GROUP_PREFIX}{parent}/{group}"


@dataclasses.dataclass(eq=False)
class Node:
    key: str
    parent: str | None
    record: Action | None = None  # None for a group node
    group: str = ""  # a group node's name; for an action, the group node it sits in ("" if none)
    children: list[str] = dataclasses.field(default_factory=list)
    expanded: bool = True
    user_toggled: bool = False
    counts: dict[int, int] = dataclasses.field(default_factory=dict)  # a group's members by phase
    version: int = 0  # bumped whenever what the node's line shows may have changed

    @property
    def is_group(self) -> bool:
        return self.record is None

    @property
    def phase(self) -> ActionPhase:
        if self.record is not None:
            return ActionPhase(self.record.phase)
        return rollup_phase(self.counts)

    @property
    def done(self) -> bool:
        """Finished and succeeded: such a subtree folds unless the operator opened it."""
        if self.record is not None:
            return self.record.phase == ActionPhase.SUCCEEDED
        total = sum(self.counts.values())
        return total > 0 and self.counts.get(int(ActionPhase.SUCCEEDED), 0) == total


@dataclasses.dataclass
class Changes:
    structure: bool = False
    keys: set[str] = dataclasses.field(default_factory=set)


class ActionTreeModel:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.roots: list[str] = []
        self.phase_counts: dict[int, int] = {}  # every action of the run, by phase
        self._pending: dict[str, Action] = {}  # children that arrived before their parent
        self._lines: list[tuple[str, str]] | None = None  # (key, guide prefix) of every visible line
        self._index: dict[str, int] = {}

    # ------------------------------------------------------------------ reading
    @property
    def records(self) -> dict[str, Action]:
        return {k: n.record for k, n in self.nodes.items() if n.record is not None}

    def record(self, key: str) -> Action | None:
        node = self.nodes.get(key)
        return node.record if node is not None else None

    @property
    def action_count(self) -> int:
        return sum(self.phase_counts.values())

    @property
    def lines(self) -> list[tuple[str, str]]:
        if self._lines is None:
            self._rebuild()
        assert self._lines is not None
        return self._lines

    def line_of(self, key: str) -> int | None:
        self.lines  # noqa: B018 - builds the index when stale
        return self._index.get(key)

    def visible_ancestor(self, key: str) -> str | None:
        """``key`` if it has a line, else its nearest ancestor that has one."""
        current: str | None = key
        while current is not None and self.line_of(current) is None:
            node = self.nodes.get(current)
            current = node.parent if node is not None else None
        return current

    # ------------------------------------------------------------------ changes
    def apply(self, records: Iterable[Action]) -> Changes:
        changes = Changes()
        for record in records:
            node = self.nodes.get(record.name)
            if node is None:
                self._pending[record.name] = record
                continue
            old = node.record
            assert old is not None
            node.record = record
            self._count(old.phase, -1)
            self._count(record.phase, 1)
            if node.group:
                self._count_member(self.nodes[node.group], old.phase, -1)
                self._count_member(self.nodes[node.group], record.phase, 1)
                changes.keys.add(node.group)
                self._maybe_fold(self.nodes[node.group], changes)
            if _shown(old) != _shown(record):
                node.version += 1
                changes.keys.add(node.key)
            self._maybe_fold(node, changes)
        self._place_pending(changes)
        if changes.structure:
            self._lines = None
        return changes

    def _place_pending(self, changes: Changes) -> None:
        progress = True
        while self._pending and progress:  # parents before children, whatever the order they came in
            progress = False
            for name, record in list(self._pending.items()):
                parent = record.parent_action_name
                if parent is not None and parent not in self.nodes:
                    continue
                del self._pending[name]
                progress = True
                self._add(record, changes)

    def _add(self, record: Action, changes: Changes) -> None:
        parent = record.parent_action_name
        node = Node(key=record.name, parent=parent, record=record)
        if parent is None:
            self.roots.append(record.name)
        elif record.action_group:
            key = group_key(parent, record.action_group)
            group = self.nodes.get(key)
            if group is None:
                group = self.nodes[key] = Node(key=key, parent=parent, group=record.action_group)
                self.nodes[parent].children.append(key)
            node.parent, node.group = key, key
            group.children.append(record.name)
            self._count_member(group, record.phase, 1)
            changes.keys.add(key)
        else:
            self.nodes[parent].children.append(record.name)
        self.nodes[record.name] = node
        self._count(record.phase, 1)
        changes.structure = True
        changes.keys.add(record.name)
        if node.parent is not None:
            container = self.nodes[node.parent]
            container.version += 1  # it may gain a fold marker
            self._maybe_fold(container, changes)  # a finished parent or group that gains a child folds

    def _count(self, phase: int, delta: int) -> None:
        self.phase_counts[phase] = self.phase_counts.get(phase, 0) + delta
        if not self.phase_counts[phase]:
            del self.phase_counts[phase]

    @staticmethod
    def _count_member(group: Node, phase: int, delta: int) -> None:
        group.counts[phase] = group.counts.get(phase, 0) + delta
        if not group.counts[phase]:
            del group.counts[phase]
        group.version += 1

    def _maybe_fold(self, node: Node, changes: Changes) -> None:
        """Finished subtrees fold and reopen if they go live again (a new child, a retry); the root stays
        open; once the operator opened or folded a node by hand, that choice wins."""
        if node.user_toggled or not node.children or node.key == ROOT_ACTION:
            return
        expanded = not node.done
        if node.expanded != expanded:
            node.expanded = expanded
            node.version += 1
            changes.structure = True
            changes.keys.add(node.key)

    # ------------------------------------------------------------------ folding
    def set_expanded(self, key: str, expanded: bool) -> bool:
        """The operator opens or folds a node; returns whether anything changed."""
        node = self.nodes.get(key)
        if node is None or not node.children or node.expanded == expanded:
            return False
        node.expanded = expanded
        node.user_toggled = True
        node.version += 1
        self._lines = None
        return True

    def toggle(self, key: str) -> bool:
        node = self.nodes.get(key)
        return node is not None and self.set_expanded(key, not node.expanded)

    # ------------------------------------------------------------------ lines
    def _rebuild(self) -> None:
        lines: list[tuple[str, str]] = []
        nodes = self.nodes
        stack: list[tuple[str, str, str]] = [(key, "", "") for key in reversed(self.roots)]
        while stack:  # depth first, iterative: a deep tree must not hit the recursion limit
            key, guide, child_indent = stack.pop()
            lines.append((key, guide))
            node = nodes[key]
            if node.expanded and node.children:
                last = len(node.children) - 1
                for i in range(last, -1, -1):
                    is_last = i == last
                    stack.append((node.children[i], child_indent + ("└─ " if is_last else "├─ "),
                                  child_indent + ("   " if is_last else "│  ")))
        self._lines = lines
        self._index = {key: i for i, (key, _) in enumerate(lines)}


def _shown(record: Action) -> tuple:
    """What a line shows of a record; a change elsewhere (updated_at) needs no repaint."""
    return (record.phase, record.attempts, record.duration_ms, record.error_code, record.error_message,
            record.cache_status, record.short_name, record.task_name)
