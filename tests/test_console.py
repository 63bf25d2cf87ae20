"""The console's behaviour, driven with Textual's Pilot against a real engine."""

from __future__ import annotations

import pytest
from textual.widgets import DataTable, RichLog, Static

from console.app import TaskDeckApp
from console.screens.dialogs import ConfirmScreen, YamlScreen
from console.screens.run import RunScreen
from console.tree_model import group_key
from console.widgets.action_tree import ActionTree
from engine.engine import Engine, EngineConfig
from engine.phases import ActionPhase
from engine.plugins.core import PhaseInfo
from helpers import ScriptedPlugin, cached_spec, int_inputs, task_spec, until


def outcome(tctx, index):
    run, action = tctx.metadata.run_name, tctx.metadata.action_name
    if action.startswith("hold"):
        return PhaseInfo.running()
    if action.startswith("ok"):
        return PhaseInfo.success()
    if run.startswith("rfail"):
        return PhaseInfo.failure("ValueError", "boom") if tctx.metadata.attempt == 1 else PhaseInfo.success()
    if run.startswith("rslow"):
        return PhaseInfo.running()
    return PhaseInfo.success()


@pytest.fixture
async def console(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=1.0))
    engine.registry.register(ScriptedPlugin(outcome))
    app = TaskDeckApp(engine)
    async with app.run_test(size=(160, 45)) as pilot:
        yield app, pilot, engine
    if engine.started:
        await engine.stop()



def table(app) -> DataTable:
    return app.screen.query_one(DataTable)


def visible_runs(app) -> set[str]:
    t = table(app)
    return {t.coordinate_to_cell_key((i, 0)).row_key.value for i in range(t.row_count)}


async def test_filter_and_failed_only_toggle(console):
    app, pilot, engine = console
    for name in ("rfail1", "rokay1", "rokay2"):
        run = await engine.runs.create_run(task_spec("scripted"), name=name)
        await engine.runs.wait_for_run(run.run_name, timeout=10)
    await until(pilot, lambda: visible_runs(app) == {"rfail1", "rokay1", "rokay2"})
    await pilot.press("f")
    await until(pilot, lambda: visible_runs(app) == {"rfail1"})
    assert "failed only" in str(app.screen.query_one("#counters", Static).render())
    await pilot.press("f", "slash", *"rokay2")
    await until(pilot, lambda: visible_runs(app) == {"rokay2"})
    await pilot.press("escape")
    await until(pilot, lambda: len(visible_runs(app)) == 3)


async def test_filter_fields_and_sort_keep_the_cursor_on_its_run(console):
    app, pilot, engine = console
    for name in ("rfail5", "rokay5", "rokay6"):
        await engine.runs.wait_for_run((await engine.runs.create_run(task_spec("scripted"), name=name)).run_name,
                                       timeout=10)
    await until(pilot, lambda: visible_runs(app) == {"rfail5", "rokay5", "rokay6"})
    await pilot.press("slash", *"phase:succ", "enter")
    await until(pilot, lambda: visible_runs(app) == {"rokay5", "rokay6"})
    await pilot.press("escape")
    await pilot.press("slash", *"phase:bogus", "enter")
    counters = app.screen.query_one("#counters", Static)
    await until(pilot, lambda: "no phase 'bogus'" in str(counters.render()))
    assert len(visible_runs(app)) == 3  # the bad term is ignored, nothing is lost
    await pilot.press("escape")

    screen = app.screen
    t = table(app)
    t.move_cursor(row=t.get_row_index("rokay5"), animate=False)
    order = lambda: [t.coordinate_to_cell_key((i, 0)).row_key.value for i in range(t.row_count)]  # noqa: E731
    while screen.sort_key != "run":
        await pilot.press("s")
    assert order() == ["rfail5", "rokay5", "rokay6"] and "RUN ▲" in str(t.columns["run"].label)
    assert screen.selected_run == "rokay5"
    await pilot.press("S")
    assert order() == ["rokay6", "rokay5", "rfail5"] and "RUN ▼" in str(t.columns["run"].label)
    assert screen.selected_run == "rokay5"  # the cursor followed its run


async def test_abort_asks_for_confirmation_naming_the_run(console):
    app, pilot, engine = console
    await engine.runs.create_run(task_spec("scripted"), name="rslow1")
    await until(pilot, lambda: visible_runs(app) == {"rslow1"})
    await pilot.press("ctrl+d")
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
    assert "rslow1" in str(app.screen.query_one("#question", Static).render())
    await pilot.press("n")  # cancelled: nothing happens
    await pilot.pause(0.3)
    assert (await engine.runs.get_run("rslow1")).phase == ActionPhase.RUNNING
    await pilot.press("ctrl+d", "y")
    result = await engine.runs.wait_for_run("rslow1", timeout=10)
    assert result.phase == ActionPhase.ABORTED and result.run.abort_reason == "aborted from the console"


async def test_retry_key_reruns_a_failed_run(console):
    app, pilot, engine = console
    run = await engine.runs.create_run(task_spec("scripted"), name="rfail2")
    assert (await engine.runs.wait_for_run(run.run_name, timeout=10)).phase == ActionPhase.FAILED
    await until(pilot, lambda: visible_runs(app) == {"rfail2"})
    await pilot.press("r")
    for _ in range(100):
        row = await engine.runs.get_run("rfail2")
        if row.phase == ActionPhase.SUCCEEDED:
            break
        await pilot.pause(0.05)
    assert row.phase == ActionPhase.SUCCEEDED and row.attempts == 2


async def test_read_only_hides_abort_and_retry(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False))
    engine.registry.register(ScriptedPlugin(outcome))
    app = TaskDeckApp(engine, read_only=True)
    async with app.run_test(size=(160, 45)) as pilot:
        await engine.runs.create_run(task_spec("scripted"), name="rslow2")
        await until(pilot, lambda: visible_runs(app) == {"rslow2"})
        await pilot.press("ctrl+d")
        await pilot.pause(0.3)
        assert not isinstance(app.screen, ConfirmScreen)
        assert (await engine.runs.get_run("rslow2")).phase == ActionPhase.RUNNING
        await engine.runs.abort_action("rslow2")
    assert not engine.started  # the app stopped its engine on the way out


async def test_run_screen_steps_attempts_and_follows_the_log(console):
    app, pilot, engine = console
    run = await engine.runs.create_run(task_spec("scripted"), name="rfail3")
    await engine.runs.wait_for_run(run.run_name, timeout=10)
    await engine.runs.retry_action(run.run_name)
    await engine.runs.wait_for_run(run.run_name, timeout=10)
    log_path = engine.reconciler.log_path(run.run_name, "a0", 2)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("".join(f"line {i}\n" for i in range(200)))

    app.open_run(run.run_name)
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and "a0" in app.screen.records)
    detail = app.screen.query_one("#detail", Static)
    await until(pilot, lambda: "viewing 2 of 2" in str(detail.render()))
    await pilot.press("left_square_bracket")
    await until(pilot, lambda: "viewing 1 of 2" in str(detail.render()))
    await pilot.press("right_square_bracket", "l")
    log = app.screen.query_one(RichLog)
    assert app.screen.focused is log  # the log is one key away: shown and focused
    status = app.screen.query_one("#log-status", Static)
    await until(pilot, lambda: len(log.lines) >= 200)
    assert log.auto_scroll  # following: at the end
    log.scroll_home(animate=False, immediate=True)  # not deferred to the next refresh: no tick sees the old offset
    await until(pilot, lambda: log.scroll_offset.y == 0)
    with open(log_path, "a") as f:
        f.write("more\n")
    await until(pilot, lambda: len(log.lines) >= 201)
    assert not log.auto_scroll  # scrolled up: follow stops, and the status says so
    await until(pilot, lambda: "paused (End follows again)" in str(status.render()))
    await pilot.press("end")  # End: back to the end, following again
    await until(pilot, lambda: "following" in str(status.render()) or "complete" in str(status.render()))
    with open(log_path, "a") as f:
        f.write("again\n")
    await until(pilot, lambda: len(log.lines) >= 202)
    assert log.auto_scroll  # follow resumed
    await until(pilot, lambda: log.scroll_offset.y >= log.max_scroll_y)
    await pilot.press("escape")
    await until(pilot, lambda: not isinstance(app.screen, RunScreen))


async def test_log_search_wrap_timestamps_and_save(console, tmp_path, monkeypatch):
    app, pilot, engine = console
    run = await engine.runs.create_run(task_spec("scripted"), name="rokay9")
    await engine.runs.wait_for_run(run.run_name, timeout=10)
    log_path = engine.reconciler.log_path(run.run_name, "a0", 1)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("".join(f"line {i}\n" for i in range(300)) + "needle here\n" + "tail\n")
    app.open_run(run.run_name)
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and "a0" in app.screen.records)
    await pilot.press("l")
    log = app.screen.query_one(RichLog)
    await until(pilot, lambda: len(log.lines) >= 302)

    await pilot.press("slash", *"needle", "enter")
    await until(pilot, lambda: app.screen.query_one(RichLog).scroll_offset.y > 0 or app.screen._match == 300)
    assert app.screen._match == 300 and not log.auto_scroll  # jumped to the match, follow paused
    highlighted = [seg.text for seg in log.lines[300] if seg.style is not None and seg.style.reverse]
    assert highlighted == ["needle"]  # the match itself is highlighted
    assert not [seg for seg in log.lines[299] if seg.style is not None and seg.style.reverse]

    await pilot.press("w")
    assert log.wrap
    await pilot.press("t")
    await pilot.pause(0.2)
    assert app.screen._timestamps and log.lines[0].text[2] == ":"  # HH:MM:SS prefix

    monkeypatch.chdir(tmp_path)
    await pilot.press("ctrl+s")
    saved = tmp_path / f"{run.run_name}-a0-1.log"
    await until(pilot, saved.exists)
    assert saved.read_text().splitlines()[-2:] == ["needle here", "tail"]


async def test_timeline_draws_each_action_over_the_run(console):
    app, pilot, engine = console
    run = await engine.runs.create_run(task_spec("scripted"), name="rokay8")
    await engine.runs.wait_for_run(run.run_name, timeout=10)
    app.open_run(run.run_name)
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and "a0" in app.screen.records)
    await pilot.press("g")
    view = app.screen.query_one("#timeline-view", Static)
    await until(pilot, lambda: "scripted" in str(view.render()) or "task" in str(view.render()))
    rows = str(view.render()).splitlines()
    assert len(rows) == 2 and "a0" in rows[1] and ("█" in rows[1] or "▏" in rows[1])
    assert len(rows[1]) <= app.screen.query_one("#tabs").size.width  # fits its pane


async def test_run_tree_groups_members_rolls_up_their_status_and_folds_by_keyboard(console):
    app, pilot, engine = console
    root = await engine.runs.create_run(task_spec("scripted"), name="rslowgroup")  # the root keeps running
    for name in ("ok1", "ok2", "hold1"):
        await engine.runs.create_action(root.run_name, name, "a0", task_spec("scripted"), root.input_uri,
                                        group="batch")
    app.open_run(root.run_name)
    await until(pilot, lambda: isinstance(app.screen, RunScreen))
    screen = app.screen
    key = group_key("a0", "batch")
    await until(pilot, lambda: key in screen.model.nodes and screen.model.nodes[key].counts == {
        int(ActionPhase.SUCCEEDED): 2, int(ActionPhase.RUNNING): 1})
    group = screen.model.nodes[key]
    assert group.phase == ActionPhase.RUNNING and group.expanded
    assert [k for k, _ in screen.model.lines] == ["a0", key, "ok1", "ok2", "hold1"]

    tree = screen.query_one(ActionTree)
    await pilot.press("down")
    assert tree.cursor_key == key
    detail = screen.query_one("#detail", Static)
    await until(pilot, lambda: "members 3" in str(detail.render()))
    await pilot.press("space")  # fold the group by hand
    assert [k for k, _ in screen.model.lines] == ["a0", key]
    await pilot.press("space", "down", "down", "down")  # open it again and walk to hold1
    assert tree.cursor_key == "hold1"
    await pilot.press("left")  # a leaf: left goes to its parent, the group
    assert tree.cursor_key == key

    await engine.runs.abort_action(root.run_name, "hold1")
    await until(pilot, lambda: group.phase == ActionPhase.ABORTED)  # all done: the worst outcome shows
    assert group.expanded  # not all succeeded: it stays open
    await until(pilot, lambda: "ABORTED" in str(detail.render()))


async def test_jump_opens_a_run_with_the_action_selected_and_refuses_unknown_runs(console):
    app, pilot, engine = console
    root = await engine.runs.create_run(task_spec("scripted"), name="rslowjump")
    for name in ("ok7", "ok8"):
        await engine.runs.create_action(root.run_name, name, "a0", task_spec("scripted"), root.input_uri)
    other = await engine.runs.create_run(task_spec("scripted"), name="rslowother")
    await pilot.press("colon", *"rnosuchrun", "enter")
    await until(pilot, lambda: any("no run is named" in n.message for n in app._notifications))
    assert not isinstance(app.screen, RunScreen)  # nothing opened, the console goes on
    await pilot.press("colon", *"rslow", "enter")  # two runs start so: say so, open neither
    await until(pilot, lambda: any("2 runs start with" in n.message for n in app._notifications))
    assert not isinstance(app.screen, RunScreen)

    await pilot.press("colon", *"rslowj/ok8", "enter")  # a unique prefix is enough
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.run_name == "rslowjump")
    tree = app.screen.query_one(ActionTree)
    await until(pilot, lambda: tree.cursor_key == "ok8")
    detail = app.screen.query_one("#detail", Static)
    await until(pilot, lambda: "rslowjump/ok8" in str(detail.render()))
    await pilot.press("colon", *other.run_name, "enter")  # a jump from a run replaces it...
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.run_name == other.run_name)
    await pilot.press("escape")  # ...so esc goes back one level, to the runs
    await until(pilot, lambda: not isinstance(app.screen, RunScreen))
    assert len(app.screen_stack) == 2  # the default screen and the runs screen


async def test_command_palette_jumps_to_a_run(console):
    app, pilot, engine = console
    await engine.runs.create_run(task_spec("scripted"), name="rslowpalette")
    await engine.runs.create_run(task_spec("scripted"), name="rokaypalette")
    await until(pilot, lambda: {"rslowpalette", "rokaypalette"} <= visible_runs(app))
    await pilot.press("ctrl+p")
    await pilot.press(*"slowpal")
    await pilot.pause(0.5)  # the palette searches in the background
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.run_name == "rslowpalette")


async def test_help_lists_the_focused_widgets_keys_with_their_hints(console):
    app, pilot, engine = console
    await pilot.press("question_mark")
    text = str(app.screen.query_one(Static).render())
    assert "Filter" in text and "phase:failed" in text  # the filter's hint is its syntax
    assert "Sort" in text and "Retry" in text
    await pilot.press("escape")
    root = await engine.runs.create_run(task_spec("scripted"), name="rslowhelp")
    app.open_run(root.run_name)
    await until(pilot, lambda: isinstance(app.screen, RunScreen))
    await pilot.press("question_mark")
    text = str(app.screen.query_one(Static).render())
    assert "Fold/unfold" in text and "Fold / parent" in text  # the focused tree's own keys
    assert "Timeline" in text and "Prev attempt" in text
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert rows["["].split()[1:3] == ["Prev", "attempt"] and rows["]"].split()[1:3] == ["Next", "attempt"]


async def test_switching_theme_recolours_phases_from_the_theme(console):
    app, pilot, engine = console
    root = await engine.runs.create_run(task_spec("scripted"), name="rslowtheme")
    await engine.runs.create_action(root.run_name, "ok9", "a0", task_spec("scripted"), root.input_uri)
    app.open_run(root.run_name)
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.query(ActionTree))
    tree = app.screen.query_one(ActionTree)

    def glyph_colour() -> str:  # line 1: the succeeded child, not under the cursor
        segment = next(seg for seg in tree.render_line(1) if "✓" in seg.text)
        return segment.style.color.triplet.hex

    await until(pilot, lambda: any("✓" in seg.text for seg in tree.render_line(1)))
    for theme in ("textual-dark", "textual-light", "nord"):
        app.theme = theme
        await pilot.pause(0.1)
        assert glyph_colour() == app.get_css_variables()["success"].lower()[:7]


async def test_cache_markers_in_the_tree_and_evicting_an_entry_with_confirmation(console):
    app, pilot, engine = console
    first = await engine.runs.create_run(cached_spec(), int_inputs(3), name="rokaycache1")
    await engine.runs.wait_for_run(first.run_name, timeout=10)
    second = await engine.runs.create_run(cached_spec(), int_inputs(3), name="rokaycache2")
    assert (await engine.runs.wait_for_run(second.run_name, timeout=10)).run.cache_status == 2  # CACHE_HIT

    app.open_run("rokaycache2")
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.query(ActionTree)
                and app.screen.model.record("a0") is not None)
    tree = app.screen.query_one(ActionTree)
    await until(pilot, lambda: "$" in "".join(seg.text for seg in tree.render_line(0)))  # the hit marker
    detail = app.screen.query_one("#detail", Static)
    await until(pilot, lambda: "cache key" in str(detail.render()))
    await pilot.press("x")
    await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
    assert "Evict the cache entry of" in str(app.screen.query_one("#question", Static).render())
    await pilot.press("y")
    await until(pilot, lambda: any("evicted" in n.message for n in app._notifications))
    assert await engine.runs.list_cache() == []


async def test_keys_typed_right_after_slash_never_fire_the_tables_commands(console):
    from textual import events

    app, pilot, engine = console
    run = await engine.runs.create_run(task_spec("scripted"), name="rfail8")
    assert (await engine.runs.wait_for_run(run.run_name, timeout=10)).phase == ActionPhase.FAILED
    await until(pilot, lambda: visible_runs(app) == {"rfail8"})
    screen = app.screen
    for key in ("slash", "r", "f", "s"):  # one burst, as a fast typist or a paste delivers it
        app.post_message(events.Key(key, key if len(key) == 1 else "/"))
    await pilot.pause(0.5)
    assert (await engine.runs.get_run("rfail8")).attempts == 1  # r did not retry the selected run
    assert not screen.failed_only and screen.sort_key == "started"


async def test_a_running_runs_header_duration_ticks_and_an_abort_reason_shows_in_the_details(console):
    app, pilot, engine = console
    await engine.runs.create_run(task_spec("scripted"), name="rslowtick")
    app.open_run("rslowtick")
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and "a0" in app.screen.records)
    title = app.screen.query_one("#run-title", Static)
    await until(pilot, lambda: "RUNNING" in str(title.render()))
    first = str(title.render())
    await until(pilot, lambda: str(title.render()) != first, timeout=5)  # the duration moves while it runs
    await engine.runs.abort_action("rslowtick", reason="wrong inputs")
    detail = app.screen.query_one("#detail", Static)
    await until(pilot, lambda: "wrong inputs" in str(detail.render()))
    assert "aborted    at" in str(detail.render())
    await pilot.press("e")
    events = app.screen.query_one("#event-list", Static)
    await until(pilot, lambda: "ABORTED" in str(events.render()) and "wrong inputs" in str(events.render()))


async def test_details_of_a_running_action_show_its_elapsed_time_moving(console):
    import re

    app, pilot, engine = console
    await engine.runs.create_run(task_spec("scripted"), name="rslowclock")
    app.open_run("rslowclock")
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.query(ActionTree))
    detail = app.screen.query_one("#detail", Static)

    def elapsed() -> float | None:
        found = re.search(r"duration ([\d.]+)s", str(detail.render()))
        return float(found.group(1)) if found else None

    await until(pilot, lambda: elapsed() is not None)
    first = elapsed()
    await until(pilot, lambda: elapsed() >= first + 1.0, timeout=5)  # nothing about the action changed meanwhile


async def test_c_copies_the_focused_run_or_action_id(console):
    app, pilot, engine = console
    root = await engine.runs.create_run(task_spec("scripted"), name="rslowcopy")
    await engine.runs.create_action(root.run_name, "ok5", "a0", task_spec("scripted"), root.input_uri)
    await until(pilot, lambda: visible_runs(app) == {"rslowcopy"})
    await pilot.press("c")
    assert app.clipboard == "rslowcopy"
    app.open_run("rslowcopy")
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.query(ActionTree)
                and app.screen.model.record("ok5") is not None)
    await pilot.press("down", "c")
    assert app.clipboard == "rslowcopy/ok5"


async def test_quitting_with_runs_going_asks_and_can_abort_them(tmp_path):
    engine = Engine(EngineConfig(data_dir=tmp_path, serve=False, requeue_after=0.2))
    engine.registry.register(ScriptedPlugin(outcome))
    app = TaskDeckApp(engine)
    async with app.run_test(size=(160, 45)) as pilot:
        await engine.runs.create_run(task_spec("scripted"), name="rslowquit")
        await until(pilot, lambda: visible_runs(app) == {"rslowquit"})
        await pilot.press("q")
        from console.screens.dialogs import ChoiceScreen

        await until(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        question = str(app.screen.query_one("#question", Static).render())
        assert "1 run(s)" in question and "rslowquit" in question
        await pilot.press("escape")  # stay: nothing happens
        await until(pilot, lambda: not isinstance(app.screen, ChoiceScreen))
        assert (await engine.runs.get_run("rslowquit")).phase == ActionPhase.RUNNING
        await pilot.press("q", "a")  # abort them, then quit
        await until(pilot, lambda: not app.is_running, timeout=20)
    store_engine = Engine(EngineConfig(data_dir=tmp_path, serve=False))
    await store_engine.start()
    try:
        run = await store_engine.runs.get_run("rslowquit")
        assert run.phase == ActionPhase.ABORTED and run.abort_reason == "aborted when the console quit"
    finally:
        await store_engine.stop()


async def test_quitting_can_hand_the_runs_to_a_background_engine(tmp_path, monkeypatch):
    from engine.client import connect, engine_url
    from helpers import sleep_inputs, sleep_spec

    monkeypatch.setenv("TASKDECK_IDLE_EXIT", "2")
    engine = Engine(EngineConfig(data_dir=tmp_path / "data", requeue_after=0.2))
    app = TaskDeckApp(engine)
    async with app.run_test(size=(160, 45)) as pilot:
        run = await engine.runs.create_run(sleep_spec(), sleep_inputs(8), name="rhanded")
        await until(pilot, lambda: visible_runs(app) == {"rhanded"})
        await pilot.press("q", "h")
        await until(pilot, lambda: not app.is_running, timeout=60)
    url = engine_url(tmp_path / "data")
    assert url is not None  # another engine serves the directory now...
    client = connect(tmp_path / "data")
    try:
        assert (await client.get_run(run.run_name)).phase == ActionPhase.RUNNING  # ...and the run goes on
        result = await client.wait(run.run_name, 60)
        assert result["phase"] == "SUCCEEDED"
    finally:
        await client.close()


async def test_a_report_shows_in_the_details_and_o_opens_it_or_says_where(console, monkeypatch):
    from pathlib import Path

    app, pilot, engine = console
    scripted = engine.registry.resolve("scripted")

    def reporting(tctx, index):
        Path(tctx.output_prefix).mkdir(parents=True, exist_ok=True)
        (Path(tctx.output_prefix) / "report.html").write_text(
            "<html><body><nav>main</nav><h1>Loss curve</h1><p>final loss 0.12</p><script>x()</script></body></html>")
        return PhaseInfo.success()

    scripted.script = reporting
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    run = await engine.runs.create_run(task_spec("scripted"), name="rreport")
    await engine.runs.wait_for_run(run.run_name, timeout=10)
    app.open_run("rreport")
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.query(ActionTree))
    detail = app.screen.query_one("#detail", Static)
    await until(pilot, lambda: "report.html" in str(detail.render()))
    assert "Loss curve final loss 0.12" in str(detail.render()) and "x()" not in str(detail.render())
    await pilot.press("o")
    await until(pilot, lambda: app.clipboard.endswith("/a0/1/report.html"))  # no browser: where it is, copied


async def test_a_retry_waiting_out_its_backoff_counts_down_in_the_details(console):
    import re

    from google.protobuf import duration_pb2

    app, pilot, engine = console
    engine.registry.resolve("scripted").script = lambda tctx, i: PhaseInfo.retryable_failure("Flaky", "again")
    spec = task_spec("scripted", retries=2)
    spec.task_template.metadata.retries.backoff.base.CopyFrom(duration_pb2.Duration(seconds=30))
    await engine.runs.create_run(spec, name="rbackoff")
    app.open_run("rbackoff")
    await until(pilot, lambda: isinstance(app.screen, RunScreen) and app.screen.query(ActionTree))
    detail = app.screen.query_one("#detail", Static)

    def left() -> float | None:
        found = re.search(r"retrying\s+in (\d+)s", str(detail.render()))
        return float(found.group(1)) if found else None

    await until(pilot, lambda: left() is not None, timeout=10)
    first = left()
    assert 25 <= first <= 30
    await until(pilot, lambda: left() is not None and left() <= first - 1, timeout=5)  # it counts down


async def test_a_project_column_appears_once_runs_span_projects_and_sorting_groups_them(console):
    app, pilot, engine = console
    await engine.projects.create("ml")
    await engine.runs.create_run(task_spec("scripted"), name="rokproj1")
    await until(pilot, lambda: visible_runs(app) == {"rokproj1"})
    assert "project" not in app.screen.columns_shown  # one project: no column for it
    await engine.runs.create_run(task_spec("scripted"), name="rokproj2", project="ml", domain="staging")
    await until(pilot, lambda: visible_runs(app) == {"rokproj1", "rokproj2"} and "project" in app.screen.columns_shown)
    t = table(app)
    assert t.get_cell("rokproj2", "project") == "ml/staging"
    while app.screen.sort_key != "project":
        await pilot.press("s")
    await until(pilot, lambda: [t.coordinate_to_cell_key((i, 0)).row_key.value for i in range(t.row_count)]
                == ["rokproj1", "rokproj2"])  # flytesnacks/development before ml/staging


async def test_on_the_kubernetes_backend_the_console_names_the_cluster_and_drives_runs_unchanged(tmp_path):
    from kube_apiserver import backend_config

    with backend_config("kubernetes", tmp_path) as backend:
        engine = Engine(EngineConfig(data_dir=tmp_path / "data", serve=False, requeue_after=1.0, **backend))
        engine.registry.register(ScriptedPlugin(outcome))
        app = TaskDeckApp(engine)
        try:
            async with app.run_test(size=(160, 45)) as pilot:
                assert "kubernetes http://127.0.0.1:" in app.sub_title and "namespace flyte" in app.sub_title
                await engine.runs.create_run(task_spec("scripted"), name="rslow9")
                await until(pilot, lambda: visible_runs(app) == {"rslow9"})
                header = str(app.screen.query_one("#counters", Static).render())
                assert "kubernetes http://127.0.0.1:" in header and "namespace flyte (leader)" in header
                app.open_run("rslow9")
                await until(pilot, lambda: isinstance(app.screen, RunScreen))
                await pilot.press("y")  # the action's resources as YAML
                await until(pilot, lambda: isinstance(app.screen, YamlScreen))
                shown = str(app.screen.query_one(Static).render())
                assert "kind: TaskAction" in shown and "name: rslow9-a0" in shown and "namespace flyte" in shown
                assert "no Kubernetes object" in shown and "'scripted'" in shown  # no resource plugin builds it
                await pilot.press("escape", "ctrl+d", "y")  # abort, as on the embedded default
                result = await engine.runs.wait_for_run("rslow9", timeout=10)
                assert result.phase == ActionPhase.ABORTED
        finally:
            if engine.started:
                await engine.stop()


@pytest.mark.sdk
async def test_with_tasks_as_pods_y_shows_the_pod_as_the_cluster_has_it_and_its_events(tmp_path):
    from pathlib import Path

    from engine.code_bundle import loaded_files, make_bundle
    from engine.sdk import inputs_from_strings, load_task, serialize_task
    from engine.uploads import UploadStore
    from kube_apiserver import EmulatorThread
    from kubelet import KubeletSimulator

    examples = Path(__file__).resolve().parent.parent / "examples"
    with EmulatorThread() as emulator, KubeletSimulator(emulator) as kubelet:
        engine = Engine(EngineConfig(data_dir=tmp_path / "data", requeue_after=1.0, backend="kubernetes",
                                     kubeconfig=emulator.kubeconfig(tmp_path / "kubeconfig", "flyte"),
                                     tasks_on="pods"))
        app = TaskDeckApp(engine)
        try:
            async with app.run_test(size=(160, 45)) as pilot:
                task = load_task(examples / "fanout.py", "nap")
                packed, digest = make_bundle(loaded_files(examples, examples / "fanout.py"), examples, tmp_path)
                spec = serialize_task(task, project="flytesnacks", domain="development", root_dir=examples,
                                      bundle=(UploadStore(engine.data_dir).stage(str(packed), "flytesnacks",
                                                                                 "development"), digest))
                await engine.runs.create_run(spec, inputs_from_strings(task, {"x": "1"}), name="rpod1")
                await until(pilot, lambda: kubelet.started == ["rpod1-a0-0"], timeout=60)
                app.open_run("rpod1")
                await until(pilot, lambda: isinstance(app.screen, RunScreen))

                async def shown_after_y() -> str:
                    await pilot.press("y")
                    await until(pilot, lambda: isinstance(app.screen, YamlScreen))
                    return str(app.screen.query_one(Static).render())

                await until(pilot, lambda: len(kubelet_events(emulator)) >= 2, timeout=30)
                shown = await shown_after_y()
                assert "on the cluster now: Pod flyte/rpod1-a0-0" in shown and "phase: Running" in shown
                assert "Scheduled" in shown and "default-scheduler" in shown and "Started" in shown
                await pilot.press("escape", "ctrl+d", "y")  # abort: the Pod is deleted, the node stops it
                result = await engine.runs.wait_for_run("rpod1", timeout=30)
                assert result.phase == ActionPhase.ABORTED
        finally:
            if engine.started:
                await engine.stop()


def kubelet_events(emulator) -> list:
    return [o for (plural, _, _), o in list(emulator.server.store.objects.items()) if plural == "events"]


def test_long_strings_in_the_yaml_view_are_cut_with_their_length():
    from console.screens.run import _shortened

    cut = _shortened({"spec": {"taskTemplate": "A" * 5000, "args": ["x", "B" * 200]}, "n": 3})
    assert cut["spec"]["taskTemplate"].endswith("… (5000 characters)") and len(cut["spec"]["taskTemplate"]) < 200
    assert cut["spec"]["args"][0] == "x" and cut["spec"]["args"][1].endswith("(200 characters)") and cut["n"] == 3
