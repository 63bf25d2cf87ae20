"""The runs screen's filter language and sort keys."""

from __future__ import annotations

from console.runs_query import SORT_ORDER, RunQuery, next_sort_key
from engine.phases import ActionPhase as P
from engine.store.base import ActionRecord


def run(name: str, phase: P, task: str = "demo.square", project: str = "demo", domain: str = "development",
        error: str | None = None) -> ActionRecord:
    return ActionRecord(project=project, domain=domain, run_name=name, name="a0", phase=int(phase),
                        task_name=task, error_message=error)


RUNS = [
    run("r1", P.FAILED, error="ValueError: even"),
    run("r2", P.RUNNING, task="demo.pipeline"),
    run("r3", P.SUCCEEDED, project="other"),
    run("r4", P.TIMED_OUT, domain="production"),
]


def shown(text: str, failed_only: bool = False) -> list[str]:
    query = RunQuery.parse(text, failed_only)
    return [r.run_name for r in RUNS if query.matches(r)]


def test_fields_combine_and_every_term_must_match():
    assert shown("phase:failed") == ["r1"]
    assert shown("phase:fail,timed") == ["r1", "r4"]  # prefixes, comma = any of
    assert shown("task:pipeline") == ["r2"]
    assert shown("project:other") == ["r3"]
    assert shown("project:demo/production") == ["r4"]  # project/domain in one term
    assert shown("domain:development phase:running,succeeded") == ["r2", "r3"]
    assert shown("project:demo phase:running,succeeded") == ["r2"]
    assert shown("valueerror") == ["r1"]  # free text reaches the error
    assert shown("PHASE:Succeeded") == ["r3"]


def test_failed_only_keeps_failed_timed_out_and_aborted():
    assert shown("", failed_only=True) == ["r1", "r4"]
    assert shown("domain:production", failed_only=True) == ["r4"]


def test_a_term_that_cannot_be_understood_is_reported_and_ignored():
    query = RunQuery.parse("phase:nosuch task:square phase:")
    assert query.errors == ("no phase 'nosuch'", "phase: needs a value")
    assert [r.run_name for r in RUNS if query.matches(r)] == ["r1", "r3", "r4"]  # only task: applies


def test_an_unknown_field_is_free_text():
    assert RunQuery.parse("owner:me").words == ("owner:me",)


def test_sort_keys_cycle_through_all():
    seen, key = [], "started"
    for _ in SORT_ORDER:
        seen.append(key)
        key = next_sort_key(key)
    assert key == "started" and sorted(seen) == sorted(SORT_ORDER)
