"""kill -9 of the engine at random moments, repeatedly (a few trials here; bench/kill9.py runs 20+)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

# Loaded by path: putting bench/ on sys.path would let bench/console.py shadow the console package.
_spec = importlib.util.spec_from_file_location("kill9", Path(__file__).parent.parent / "bench" / "kill9.py")
kill9 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kill9)

pytestmark = pytest.mark.sdk


@pytest.mark.parametrize("seed", [11, 12])
def test_repeated_kill_9_keeps_every_invariant_and_starts_no_task_twice(tmp_path, seed):
    result = kill9.trial(tmp_path / "data", random.Random(seed), kills=2, sleeps=6)
    assert result["lost_events"] == 0 and result["recorded"] >= result["acknowledged"]
    assert result["double_starts"] == 0
    assert result["body_starts"] >= kill9.PARENT_N + 3  # parent, leaves, both attempts of the flaky child


@pytest.mark.parametrize("seed", [21])
def test_repeated_kill_9_with_children_on_reusable_workers_runs_no_action_twice(tmp_path, seed):
    result = kill9.trial(tmp_path / "data", random.Random(seed), kills=2, sleeps=2, reusable=True)
    assert result["lost_events"] == 0 and result["double_starts"] == 0
    assert result["body_starts"] >= kill9.PARENT_N + 3


def test_an_engine_killed_inside_a_launch_never_runs_that_task_twice(tmp_path):
    """Killed after the task process exists and before its launch is recorded: the gate never opens, the
    next engine relaunches, and each attempt's body starts exactly once."""
    result = kill9.trial(tmp_path / "data", random.Random(3), kills=0, sleeps=0, die_after_spawn=True)
    assert result["double_starts"] == 0 and result["lost_events"] == 0


def test_kill_9_on_the_kubernetes_backend_loses_nothing_and_starts_no_task_twice(tmp_path):
    """The same trial with the TaskActions on the API server emulator: an engine killed between an action's
    row and its resource, or between a status and its labels, leaves nothing the next one cannot finish."""
    from kube_apiserver import EmulatorThread

    with EmulatorThread() as emulator:
        kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", "flyte")
        result = kill9.trial(tmp_path / "data", random.Random(31), kills=2, sleeps=4,
                             engine_args=("--backend", "kubernetes", "--kubeconfig", str(kubeconfig)))
    assert result["lost_events"] == 0 and result["recorded"] >= result["acknowledged"]
    assert result["double_starts"] == 0 and result["body_starts"] >= kill9.PARENT_N + 3


def test_kill_9_with_the_runs_data_in_postgresql_loses_nothing_and_starts_no_task_twice(tmp_path, postgres_url):
    """The Kubernetes backend's trial again, the runs data on a real PostgreSQL server (--database): each write
    one transaction there, the outbox with the action row, so a kill between them is repaired the same way."""
    from kube_apiserver import EmulatorThread

    with EmulatorThread() as emulator:
        kubeconfig = emulator.kubeconfig(tmp_path / "kubeconfig", "flyte")
        result = kill9.trial(tmp_path / "data", random.Random(37), kills=2, sleeps=4,
                             engine_args=("--backend", "kubernetes", "--kubeconfig", str(kubeconfig),
                                          "--database", postgres_url))
    assert result["lost_events"] == 0 and result["recorded"] >= result["acknowledged"]
    assert result["double_starts"] == 0 and result["body_starts"] >= kill9.PARENT_N + 3
