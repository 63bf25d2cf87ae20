"""The run screen's tree model: placement, groups with rolled-up status, folding and the visible lines."""

from __future__ import annotations

import dataclasses

from console.tree_model import ActionTreeModel, group_key, rollup_phase
from engine.phases import ActionPhase as P
from engine.store.base import ActionRecord


def rec(name: str, parent: str | None = "a0", phase: P = P.QUEUED, group: str = "", **kw) -> ActionRecord:
    return ActionRecord(project="p", domain="d", run_name="r1", name=name, parent_action_name=parent,
                        phase=int(phase), action_group=group, **kw)


def keys(model: ActionTreeModel) -> list[str]:
    return [key for key, _ in model.lines]


def test_children_that_arrive_before_their_parent_are_placed_when_it_comes():
    model = ActionTreeModel()
    model.apply([rec("c2", parent="c1"), rec("c1")])
    assert keys(model) == []  # no root yet
    model.apply([rec("a0", parent=None, phase=P.RUNNING)])
    assert keys(model) == ["a0", "c1", "c2"]
    assert [guide for _, guide in model.lines] == ["", "└─ ", "   └─ "]


def test_group_members_sit_under_one_group_node_with_counts_and_a_rolled_up_phase():
    model = ActionTreeModel()
    model.apply([rec("a0", None, P.RUNNING), rec("s1", group="squares"), rec("s2", group="squares"), rec("v")])
    group = group_key("a0", "squares")
    assert keys(model) == ["a0", group, "s1", "s2", "v"]
    node = model.nodes[group]
    assert node.is_group and node.counts == {int(P.QUEUED): 2} and node.phase == P.QUEUED
    model.apply([rec("s1", group="squares", phase=P.RUNNING)])
    assert node.phase == P.RUNNING and node.counts == {int(P.QUEUED): 1, int(P.RUNNING): 1}
    model.apply([rec("s1", group="squares", phase=P.FAILED), rec("s2", group="squares", phase=P.SUCCEEDED)])
    assert node.phase == P.FAILED  # all done: the worst outcome shows
    assert node.expanded  # a failed group stays open
    assert model.phase_counts == {int(P.RUNNING): 1, int(P.FAILED): 1, int(P.SUCCEEDED): 1, int(P.QUEUED): 1}


def test_rollup_prefers_live_phases_then_the_worst_outcome():
    assert rollup_phase({int(P.SUCCEEDED): 3, int(P.RUNNING): 1}) == P.RUNNING
    assert rollup_phase({int(P.SUCCEEDED): 3, int(P.PAUSED): 1, int(P.QUEUED): 2}) == P.PAUSED
    assert rollup_phase({int(P.SUCCEEDED): 3, int(P.ABORTED): 1}) == P.ABORTED
    assert rollup_phase({int(P.TIMED_OUT): 1, int(P.FAILED): 1}) == P.FAILED
    assert rollup_phase({int(P.SUCCEEDED): 2}) == P.SUCCEEDED


def test_a_status_change_is_not_a_structural_change_and_unseen_fields_repaint_nothing():
    model = ActionTreeModel()
    model.apply([rec("a0", None, P.RUNNING), rec("c1")])
    lines = model.lines
    changes = model.apply([rec("c1", phase=P.RUNNING)])
    assert not changes.structure and changes.keys == {"c1"}
    assert model.lines is lines  # not rebuilt
    version = model.nodes["c1"].version
    changes = model.apply([rec("c1", phase=P.RUNNING, updated_at=99.0)])  # nothing a line shows
    assert changes.keys == set() and model.nodes["c1"].version == version


def test_finished_subtrees_fold_the_root_never_does_and_the_operators_choice_wins():
    model = ActionTreeModel()
    model.apply([rec("a0", None, P.RUNNING), rec("p1", phase=P.RUNNING), rec("k1", parent="p1"),
                 rec("k2", parent="p1")])
    assert keys(model) == ["a0", "p1", "k1", "k2"]
    changes = model.apply([rec("p1", phase=P.SUCCEEDED)])
    assert changes.structure and keys(model) == ["a0", "p1"]
    assert model.visible_ancestor("k2") == "p1"  # the cursor on k2 would land on p1

    assert model.toggle("p1") and keys(model) == ["a0", "p1", "k1", "k2"]  # the operator opens it
    model.apply([rec("p1", phase=P.SUCCEEDED, attempts=2)])
    assert keys(model) == ["a0", "p1", "k1", "k2"]  # stays open: the operator chose
    model.apply([rec("a0", None, P.SUCCEEDED)])
    assert keys(model)[0] == "a0" and model.nodes["a0"].expanded


def test_a_finished_parent_that_gains_children_later_folds():
    model = ActionTreeModel()
    model.apply([rec("a0", None, P.SUCCEEDED), rec("p1", phase=P.SUCCEEDED)])
    model.apply([rec("k1", parent="p1", phase=P.SUCCEEDED)])
    assert keys(model) == ["a0", "p1"]


def test_a_folded_group_reopens_when_a_live_member_joins_or_a_member_is_retried():
    model = ActionTreeModel()
    group = group_key("a0", "g")
    model.apply([rec("a0", None, P.RUNNING), rec("s1", group="g", phase=P.SUCCEEDED)])
    assert keys(model) == ["a0", group]  # everything in it succeeded: folded
    model.apply([rec("s2", group="g", phase=P.RUNNING)])
    assert keys(model) == ["a0", group, "s1", "s2"]  # live again: open
    model.apply([rec("s2", group="g", phase=P.SUCCEEDED)])
    assert keys(model) == ["a0", group]
    model.apply([rec("s1", group="g", phase=P.QUEUED, attempts=2)])  # an operator retry
    assert keys(model) == ["a0", group, "s1", "s2"]


def test_a_very_deep_tree_builds_without_recursion():
    model = ActionTreeModel()
    chain = [rec("a0", None, P.RUNNING)] + [rec(f"d{i}", parent="a0" if i == 0 else f"d{i - 1}")
                                           for i in range(5000)]
    model.apply(chain)
    assert len(model.lines) == 5001 and model.line_of("d4999") == 5000


def test_records_view_holds_the_latest_record_of_every_action():
    model = ActionTreeModel()
    root = rec("a0", None, P.RUNNING)
    model.apply([root, rec("c1", group="g")])
    model.apply([dataclasses.replace(root, phase=int(P.SUCCEEDED))])
    assert set(model.records) == {"a0", "c1"} and model.record("a0").phase == P.SUCCEEDED
    assert model.record(group_key("a0", "g")) is None
