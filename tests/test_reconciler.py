"""The reconciler, step by step (reference §2.2) and through the running engine."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3

import pytest

from engine.engine import Engine, EngineConfig
from engine.model import FINALIZER, LABEL_COMPLETED_TIME, LABEL_TERMINATION_STATUS
from engine.phases import ActionPhase, PluginPhase
from engine.plugins.core import PhaseInfo, PluginError
from engine.plugins.registry import PluginRegistry
from engine.reconciler import TaskActionReconciler
from engine.store.base import NotFoundError
from engine.store.sqlite import SqliteStore
from helpers import ScriptedPlugin, eventually, make_task_action, task_spec
from kube_apiserver import backend_config


# ----------------------------------------------------------------------------- step-by-step harness
@pytest.fixture
async def harness(tmp_path):
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.start()
    registry = PluginRegistry()
    plugin = ScriptedPlugin()
    registry.register(plugin)
    woken: list[str] = []
    reconciler = TaskActionReconciler(store, registry, tmp_path, woken.append, requeue_after=10.0)
    reconciler.data_roots.append("/tmp")  # make_task_action's default paths
    yield store, reconciler, plugin
    await store.close()


async def events_of(store, run="rtest", action="a0"):
    return [(e.attempt, ActionPhase(e.phase).name) for e in await store.list_events(("p", "d", run, action))]


async def test_first_reconcile_adds_the_finalizer_and_carries_on(harness):
    """Flyte returns after adding the finalizer and waits for the update's echo; we carry on in the same round."""
    store, reconciler, plugin = harness
    obj = await store.create(make_task_action())
    await reconciler.reconcile(obj.name)
    saved = await store.get(obj.name)
    assert saved.metadata.finalizers == [FINALIZER]
    assert plugin.handled == [(f"{obj.name}-0", 1)]
    assert reconciler.is_echo(obj.name)  # its own write: not news
    await store.patch_labels(obj.name, {"someone": "else"})
    assert not reconciler.is_echo(obj.name)  # another writer's change is news


async def test_missing_fields_fail_as_invalid_spec_without_event_or_finalizer(harness):
    store, reconciler, plugin = harness
    bad = make_task_action()
    bad.spec.input_uri = ""
    bad.spec.task_template = None
    obj = await store.create(bad)
    assert (await reconciler.reconcile(obj.name)).requeue_after is None
    saved = await store.get(obj.name)
    failed = saved.status.condition("Failed")
    assert failed.status == "True" and failed.reason == "InvalidSpec"
    assert "taskTemplate" in failed.message and "inputUri" in failed.message
    assert saved.status.condition("Progressing").status == "False"
    assert saved.metadata.finalizers == [] and await events_of(store) == [] and plugin.handled == []
    await reconciler.reconcile(obj.name)  # the next round stamps the terminal labels
    assert (await store.get(obj.name)).metadata.labels[LABEL_TERMINATION_STATUS] == "terminated"


async def test_unknown_task_type_fails_as_plugin_not_found(harness):
    store, reconciler, plugin = harness
    obj = await store.create(make_task_action(task_type="no-such-plugin"))
    await reconciler.reconcile(obj.name)
    saved = await store.get(obj.name)
    assert saved.status.condition("Failed").reason == "PluginNotFound"
    assert saved.status.is_terminal and await events_of(store) == []


@pytest.mark.parametrize("field,uri", [("input_uri", "/etc/passwd"), ("run_output_base", "/tmp/../etc"),
                                       ("input_uri", "s3://bucket/in")])
async def test_uris_outside_the_data_directory_fail_only_their_action(harness, field, uri):
    store, reconciler, plugin = harness
    bad = make_task_action(action="bad")
    setattr(bad.spec, field, uri)
    good = make_task_action(action="good")
    await store.create(bad)
    await store.create(good)
    for name in (bad.name, good.name, good.name):
        await reconciler.reconcile(name)
    failed = (await store.get(bad.name)).status.condition("Failed")
    assert failed.reason == "InvalidSpec" and "outside the engine's data directory" in failed.message
    assert plugin.handled == [(f"{good.name}-0", 1)]  # the other action is unaffected


async def test_garbage_template_bytes_fail_as_invalid_spec(harness):
    store, reconciler, _ = harness
    obj = await store.create(make_task_action(template=b"\xff\xff\xff\x00garbage"))
    await reconciler.reconcile(obj.name)
    assert (await store.get(obj.name)).status.condition("Failed").reason == "InvalidSpec"


async def test_success_sets_conditions_history_event_and_terminal_labels(harness):
    store, reconciler, plugin = harness
    plugin.script = [PhaseInfo.running(), PhaseInfo.success()]
    obj = await store.create(make_task_action())
    result = await reconciler.reconcile(obj.name)  # finalizer, then the first handle
    assert result.requeue_after == 10.0
    running = await store.get(obj.name)
    assert running.status.plugin_phase == "PhaseRunning" and running.status.attempts == 1
    await reconciler.reconcile(obj.name)
    done = await store.get(obj.name)
    assert done.status.plugin_phase == "PhaseSuccess"
    assert done.status.condition("Succeeded").status == "True"
    assert done.status.condition("Progressing").status == "False"
    assert [h.phase for h in done.status.phase_history] == ["Executing", "Completed"]
    assert done.metadata.labels[LABEL_TERMINATION_STATUS] == "terminated"
    completed = done.status.condition("Succeeded").last_transition_time.astimezone(dt.timezone.utc)
    assert done.metadata.labels[LABEL_COMPLETED_TIME] == completed.strftime("%Y-%m-%d.%H-%M")
    assert await events_of(store) == [(1, "RUNNING"), (1, "SUCCEEDED")]
    handled = len(plugin.handled)
    await reconciler.reconcile(obj.name)  # terminal: never handled again
    assert len(plugin.handled) == handled


async def test_unchanged_status_writes_nothing(harness):
    store, reconciler, plugin = harness
    plugin.script = [PhaseInfo.running()]
    obj = await store.create(make_task_action())
    await reconciler.reconcile(obj.name)
    await reconciler.reconcile(obj.name)
    rv = (await store.get(obj.name)).metadata.resource_version
    await reconciler.reconcile(obj.name)
    assert (await store.get(obj.name)).metadata.resource_version == rv
    assert await events_of(store) == [(1, "RUNNING")]


async def test_system_failures_count_without_a_new_attempt_and_an_outcome_resets_them(harness):
    store, reconciler, plugin = harness
    plugin.script = [RuntimeError("api timeout"), RuntimeError("api timeout"), PhaseInfo.running(),
                     PhaseInfo.success()]
    obj = await store.create(make_task_action())
    await reconciler.reconcile(obj.name)
    assert (await store.get(obj.name)).status.system_failures == 1
    await reconciler.reconcile(obj.name)
    saved = await store.get(obj.name)
    assert saved.status.system_failures == 2 and saved.status.error_state.kind == "SYSTEM"
    assert await events_of(store) == []  # no event on the system-failure path
    await reconciler.reconcile(obj.name)
    saved = await store.get(obj.name)
    assert saved.status.system_failures == 2  # a Running report is not an outcome
    await reconciler.reconcile(obj.name)
    saved = await store.get(obj.name)
    assert saved.status.system_failures == 0 and saved.status.attempts == 1
    assert [a for _, a in plugin.handled] == [1, 1, 1, 1]


async def test_a_relaunch_that_keeps_crashing_ends_instead_of_looping(harness):
    store, reconciler, plugin = harness
    plugin.script = lambda tctx, i: (PhaseInfo.running() if i % 2 == 0
                                     else PhaseInfo.system_retryable_failure("Interrupted", "crashed"))
    obj = await store.create(make_task_action())
    for _ in range(20):
        await reconciler.reconcile(obj.name)
        if (await store.get(obj.name)).status.is_terminal:
            break
    saved = await store.get(obj.name)
    assert saved.status.is_terminal and saved.status.error_state.code == "MaxSystemFailuresExceeded"
    assert len(plugin.handled) == 8  # four launches, each crashing


async def test_fourth_consecutive_system_failure_fails_permanently(harness):
    store, reconciler, plugin = harness
    plugin.script = [RuntimeError("boom")]
    obj = await store.create(make_task_action())
    await reconciler.reconcile(obj.name)
    for _ in range(4):
        await reconciler.reconcile(obj.name)
    saved = await store.get(obj.name)
    assert saved.status.condition("Failed").status == "True"
    assert saved.status.error_state.code == "MaxSystemFailuresExceeded"
    assert saved.status.error_state.kind == "SYSTEM"
    assert 'plugin "scripted" failed with system error 4 times: boom' in saved.status.error_state.message
    assert len(plugin.handled) == 4 and await events_of(store) == [(1, "FAILED")]


async def test_system_retryable_phase_resets_the_plugin_and_counts(harness):
    store, reconciler, plugin = harness
    plugin.script = [PhaseInfo.running(), PhaseInfo.system_retryable_failure("Interrupted", "killed"),
                     PhaseInfo.running()]
    obj = await store.create(make_task_action())
    for _ in range(3):
        await reconciler.reconcile(obj.name)
    saved = await store.get(obj.name)
    assert saved.status.system_failures == 1 and saved.status.attempts == 1
    assert saved.status.plugin_state is None
    assert plugin.aborted == [f"{obj.name}-0"]
    assert saved.status.error_state.code == "Interrupted"


async def test_non_retryable_code_fails_at_once_as_a_user_error(harness):
    store, reconciler, plugin = harness
    plugin.script = [PluginError("the spec is broken", code="BadTaskSpecification")]
    obj = await store.create(make_task_action())
    await reconciler.reconcile(obj.name)
    await reconciler.reconcile(obj.name)
    saved = await store.get(obj.name)
    assert saved.status.is_terminal and saved.status.system_failures == 0
    assert (saved.status.error_state.code, saved.status.error_state.kind) == ("BadTaskSpecification", "USER")


def _with_retries(retries: int):
    return task_spec("scripted", retries=retries).task_template.SerializeToString()


async def test_user_retry_restarts_in_place_with_a_new_attempt(harness):
    store, reconciler, plugin = harness
    plugin.script = [PhaseInfo.retryable_failure("ValueError", "bad 1"), PhaseInfo.retryable_failure(
        "ValueError", "bad 2"), PhaseInfo.success()]
    obj = await store.create(make_task_action(template=_with_retries(2)))
    for _ in range(4):
        await reconciler.reconcile(obj.name)
    saved = await store.get(obj.name)
    assert saved.status.condition("Succeeded").status == "True"
    assert saved.status.attempts == 3
    assert [a for _, a in plugin.handled] == [1, 2, 3]
    assert [n for n, _ in plugin.handled] == [f"{obj.name}-0", f"{obj.name}-1", f"{obj.name}-2"]
    assert plugin.aborted == [f"{obj.name}-0", f"{obj.name}-1"]  # the failed attempt is cleaned up
    assert await events_of(store) == [(1, "FAILED"), (2, "QUEUED"), (2, "FAILED"), (3, "QUEUED"), (3, "SUCCEEDED")]


async def test_retries_exhausted_fail_with_the_plugins_error(harness):
    store, reconciler, plugin = harness
    plugin.script = [PhaseInfo.retryable_failure("ValueError", "still bad")]
    obj = await store.create(make_task_action(template=_with_retries(1)))
    for _ in range(4):
        await reconciler.reconcile(obj.name)
    saved = await store.get(obj.name)
    assert saved.status.attempts == 2 and saved.status.condition("Failed").reason == "PermanentFailure"
    assert (saved.status.error_state.code, saved.status.error_state.message) == ("ValueError", "still bad")
    assert len(plugin.handled) == 2


async def test_retries_exhausted_without_an_error_is_max_retries_exceeded(harness):
    store, reconciler, plugin = harness
    plugin.script = [PhaseInfo(PluginPhase.RETRYABLE_FAILURE)]
    obj = await store.create(make_task_action())
    await reconciler.reconcile(obj.name)
    await reconciler.reconcile(obj.name)
    error = (await store.get(obj.name)).status.error_state
    assert (error.code, error.kind, error.message) == ("MaxRetriesExceeded", "USER", "task failed after 1 attempt(s)")


async def test_delete_aborts_finalizes_records_aborted_and_removes(harness):
    store, reconciler, plugin = harness
    plugin.script = [PhaseInfo.running()]
    obj = await store.create(make_task_action())
    await reconciler.reconcile(obj.name)
    await reconciler.reconcile(obj.name)
    await store.delete(obj.name)
    await reconciler.reconcile(obj.name)
    assert plugin.aborted == [f"{obj.name}-0"] and plugin.finalized == [f"{obj.name}-0"]
    with pytest.raises(NotFoundError):
        await store.get(obj.name)
    assert await events_of(store) == [(1, "RUNNING"), (1, "ABORTED")]


async def test_deleting_a_terminal_action_records_no_extra_aborted_event(harness):
    store, reconciler, plugin = harness
    plugin.script = [PhaseInfo.success()]
    obj = await store.create(make_task_action())
    await reconciler.reconcile(obj.name)
    await reconciler.reconcile(obj.name)
    await store.delete(obj.name)
    await reconciler.reconcile(obj.name)
    assert await events_of(store) == [(1, "SUCCEEDED")]


async def test_a_status_is_never_saved_without_its_event(harness):
    store, reconciler, plugin = harness
    plugin.script = [PhaseInfo.running()]
    obj = await store.create(make_task_action())
    real_db = store._write_db

    class FailingEventInsert:
        def __getattr__(self, name):
            return getattr(real_db, name)

        def executemany(self, sql, rows):
            if "action_events" in sql:
                raise sqlite3.OperationalError("disk I/O error")
            return real_db.executemany(sql, rows)

    store._write_db = FailingEventInsert()
    with pytest.raises(Exception):
        await reconciler.reconcile(obj.name)
    assert (await store.get(obj.name)).status.plugin_phase == ""  # no status without its event
    store._write_db = real_db
    await reconciler.reconcile(obj.name)
    assert (await store.get(obj.name)).status.plugin_phase == "PhaseRunning"
    assert await events_of(store) == [(1, "RUNNING")]


# ----------------------------------------------------------------------------- through the engine
@pytest.fixture(params=["embedded", "kubernetes", "kubernetes+postgresql"])
async def engine(tmp_path, request):
    """The engine on each backend: the embedded store, and TaskActions on the API server emulator."""
    plugin = ScriptedPlugin()
    with backend_config(request.param, tmp_path, request) as backend:
        engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False, requeue_after=0.05, workers=8,
                                     **backend))
        engine.registry.register(plugin)
        await engine.start()
        engine.test_plugin = plugin
        yield engine
        await engine.stop()


async def test_run_reaches_succeeded_in_the_actions_table(engine):
    engine.test_plugin.script = [PhaseInfo.running(), PhaseInfo.success()]
    run = await engine.runs.create_run(task_spec("scripted"))
    result = await engine.runs.wait_for_run(run.run_name, timeout=10)
    assert result.phase == ActionPhase.SUCCEEDED
    assert result.run.attempts == 1 and result.run.ended_at is not None


async def test_abort_cascades_to_children_and_marks_them_aborted(engine):
    engine.test_plugin.script = [PhaseInfo.running()]
    run = await engine.runs.create_run(task_spec("scripted"))
    root = await eventually(lambda: engine.store.peek(f"{run.run_name}-a0") if engine.store.peek(
        f"{run.run_name}-a0") and engine.store.peek(f"{run.run_name}-a0").status.plugin_phase == "PhaseRunning"
        else None)
    from engine.store.base import ActionRecord

    child = make_task_action(run=run.run_name, action="c1", parent=root, input_uri=run.input_uri,
                             run_output_base=run.run_output_base)
    child.spec.project, child.spec.domain = run.project, run.domain
    await engine.store.create_run_action(
        ActionRecord(project=run.project, domain=run.domain, run_name=run.run_name, name="c1",
                     parent_action_name="a0", created_at=1.0, updated_at=1.0, attempts=1), child, None)
    await eventually(lambda: (engine.store.peek(child.name) or child).status.plugin_phase == "PhaseRunning")
    await engine.runs.abort_action(run.run_name)
    await eventually(lambda: engine.store.peek(root.name) is None and engine.store.peek(child.name) is None)
    actions = {a.name: ActionPhase(a.phase) for a in await eventually(
        lambda: _all_terminal(engine, run.run_name))}
    assert actions == {"a0": ActionPhase.ABORTED, "c1": ActionPhase.ABORTED}
    assert sorted(engine.test_plugin.aborted) == sorted([f"{run.run_name}-a0-0", f"{run.run_name}-c1-0"])
    await engine.runs.abort_action(run.run_name)  # idempotent


async def _all_terminal(engine, run_name):
    actions = await engine.runs.list_actions(run_name)
    return actions if all(ActionPhase(a.phase).is_terminal for a in actions) else None


async def test_a_hanging_plugin_does_not_stall_other_actions(engine):
    hang = asyncio.Event()

    async def handle(tctx, original=engine.test_plugin.handle):
        if tctx.metadata.run_name == "rhang":
            await hang.wait()
        return await original(tctx)

    engine.test_plugin.script = lambda tctx, i: PhaseInfo.success()
    engine.test_plugin.handle = handle
    await engine.runs.create_run(task_spec("scripted"), name="rhang")
    runs = [await engine.runs.create_run(task_spec("scripted")) for _ in range(20)]
    results = await asyncio.gather(*(engine.runs.wait_for_run(r.run_name, timeout=10) for r in runs))
    assert all(r.phase == ActionPhase.SUCCEEDED for r in results)
    assert (await engine.runs.get_run("rhang")).phase != ActionPhase.SUCCEEDED
    hang.set()
    assert (await engine.runs.wait_for_run("rhang", timeout=10)).phase == ActionPhase.SUCCEEDED


async def test_abort_racing_success_ends_in_exactly_one_terminal_phase(harness):
    store, reconciler, plugin = harness
    plugin.script = [PhaseInfo.success()]
    from engine.store.base import ActionRecord

    outcomes = set()
    for i in range(20):
        name = f"race{i}"
        obj = make_task_action(run=name)
        await store.create_run_action(ActionRecord(project="p", domain="d", run_name=name, name="a0",
                                                   created_at=1.0, updated_at=1.0, attempts=1), obj, None)
        await reconciler.reconcile(obj.name)  # finalizer
        ops = [reconciler.reconcile(obj.name), store.delete(obj.name)]
        await asyncio.gather(*(ops if i % 2 else reversed(ops)))
        for _ in range(5):  # let the deletion finish
            await reconciler.reconcile(obj.name)
        assert store.peek(obj.name) is None
        row = await store.get_action(("p", "d", name, "a0"))
        terminal_events = [p for _, p in await events_of(store, run=name) if p in ("SUCCEEDED", "ABORTED", "FAILED")]
        assert len(terminal_events) == 1, terminal_events
        assert ActionPhase(row.phase).name == terminal_events[0]
        outcomes.add(terminal_events[0])
    assert outcomes <= {"SUCCEEDED", "ABORTED"}


@pytest.mark.parametrize("template", [
    task_spec("scripted").task_template.SerializeToString()[:-7],  # truncated
    b"\x0a" + b"\xff" * 64,  # garbage
])
async def test_truncated_or_garbage_templates_fail_only_their_action(harness, template):
    store, reconciler, plugin = harness
    bad = await store.create(make_task_action(action="bad", template=template))
    good = await store.create(make_task_action(action="good"))
    for name in (bad.name, good.name, good.name):
        await reconciler.reconcile(name)
    assert (await store.get(bad.name)).status.condition("Failed").reason == "InvalidSpec"
    assert plugin.handled == [(f"{good.name}-0", 1)]


async def test_an_oversized_template_fails_as_invalid_spec(harness):
    from engine import reconciler as reconciler_module

    store, reconciler, _ = harness
    huge = task_spec("scripted")
    huge.task_template.custom.update({"blob": "x" * (reconciler_module.MAX_TEMPLATE_BYTES + 1)})
    obj = await store.create(make_task_action(template=huge.task_template.SerializeToString()))
    await reconciler.reconcile(obj.name)
    failed = (await store.get(obj.name)).status.condition("Failed")
    assert failed.reason == "InvalidSpec" and "limit" in failed.message
