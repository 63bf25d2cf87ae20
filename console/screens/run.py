"""The run screen: the action tree, and the selected action's details, log and events.

Everything comes through the client interface: the change feed names the actions that changed and a
tick re-reads only those; details, events and log lines are read when what they show has changed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from pathlib import Path

import yaml
from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, RichLog, Static, TabbedContent, TabPane

from console.screens.dialogs import InputScreen, YamlScreen
from console.state import PHASE_STYLE, REFRESH_HZ, duration_text, first_error_line, phase_markup, show
from console.tree_model import ActionTreeModel
from console.widgets.action_tree import ActionTree
from engine.client import (
    ACTION_TYPE_CONDITION,
    ACTION_TYPE_TRACE,
    Action,
    ActionPhase,
    Change,
    LogLine,
    cache_status_name,
)

LOG_POLL_SECONDS = 0.5
FULL_RELOAD_AFTER = 2000  # changed actions in one tick above which the whole run is re-read
MAX_LOG_BYTES = 2_000_000  # the tail that is loaded when a log is opened, and the most read per poll
MAX_LOG_LINES = 20_000
TIMELINE_ROWS = 100
TIMELINE_MIN_WIDTH = 20


def _time(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    return value.astimezone().strftime("%H:%M:%S.%f")[:-3]


class LogView(RichLog):
    """The attempt's log; End goes to its end and follows it again (shown above it)."""

    BINDINGS = [Binding("end", "screen.follow_log", "Follow", tooltip="Jump to the end and follow the log again")]


class RunScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("d", "show_tab('details')", "Details", show=False),
        Binding("l", "show_tab('logs')", "Logs"),
        Binding("e", "show_tab('events')", "Events", show=False),
        Binding("g", "show_tab('timeline')", "Timeline", show=False),
        Binding("left_square_bracket", "attempt(-1)", "Prev attempt", key_display="[", show=False),
        Binding("right_square_bracket", "attempt(1)", "Next attempt", key_display="]", show=False),
        Binding("r", "retry", "Retry",
                tooltip="Re-run the selected failed action (a parent re-runs its failed children)"),
        Binding("ctrl+d", "abort", "Abort", tooltip="Abort the selected action and its subtree (asks first)"),
        Binding("s", "signal", "Signal", tooltip="Answer the selected condition (bool, int, float or str)"),
        Binding("c", "copy_id", "Copy id", show=False),
        Binding("y", "show_yaml", "YAML", show=False,
                tooltip="The action's TaskAction and the Kubernetes object its plugin creates, as YAML"),
        Binding("o", "open_report", "Report", show=False,
                tooltip="Open the attempt's report (flyte.report) in a browser, or say where it is"),
        Binding("x", "evict_cache", "Evict cache", show=False,
                tooltip="Drop the selected action's cache entry (asks first)"),
        Binding("ctrl+r", "abort_run", "Abort run", show=False, tooltip="Abort the whole run (asks first)"),
        Binding("slash", "search_log", "Search log", key_display="/", show=False,
                tooltip="Highlight matches in the log; n for the next"),
        Binding("n", "next_match", "Next match", show=False),
        Binding("w", "toggle_wrap", "Wrap", show=False),
        Binding("t", "toggle_timestamps", "Timestamps", show=False,
                tooltip="Show when the task wrote each log line"),
        Binding("ctrl+s", "save_log", "Save log", show=False,
                tooltip="Write the shown log to RUN-ACTION-ATTEMPT.log here"),
    ]

    def __init__(self, run_name: str, select: str | None = None):
        super().__init__()
        self.run_name = run_name
        self._select = select  # an action to select once the run is loaded
        self.model = ActionTreeModel()
        self.selected: str = "a0"
        self.viewing_attempt: dict[str, int] = {}
        self._refreshing = False
        self._log_source: tuple[str, int] | None = None
        self._dirty: set[str] = set()
        self._log_lines: list[LogLine] = []  # the shown attempt's log (with when each line was written)
        self._following = True
        self._detail_key: tuple | None = None  # what the cached details below were read for
        self._detail_data: tuple = (None, [], None)  # (task action, events, inputs/outputs)
        self._search = ""
        self._match = -1
        self._timestamps = False
        self._loaded = False
        self._log_offset = 0
        self._following_busy = False

    def compose(self) -> ComposeResult:
        yield Static(id="run-title")
        with Horizontal():
            yield ActionTree(self.model, self._label, id="tree")
            with TabbedContent(id="tabs", initial="details"):
                with TabPane("Details", id="details"):
                    with VerticalScroll():
                        yield Static(id="detail")
                with TabPane("Logs", id="logs"):
                    yield Static(id="log-status")
                    yield LogView(id="log", highlight=False, markup=False, wrap=False, max_lines=20_000)
                with TabPane("Events", id="events"):
                    with VerticalScroll():
                        yield Static(id="event-list")
                with TabPane("Timeline", id="timeline"):
                    with VerticalScroll():
                        yield Static(id="timeline-view")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._unsubscribe = self.app.listen(self._on_change)
        self.set_interval(1 / REFRESH_HZ, self.refresh_view)
        self.set_interval(LOG_POLL_SECONDS, self.follow_log)
        self.set_interval(1.0, self.refresh_timeline)
        self.call_later(self.refresh_view)
        self.query_one(ActionTree).focus()

    def on_unmount(self) -> None:
        self._unsubscribe()

    def _on_change(self, change: Change) -> None:
        """The feed says what changed; the next tick re-reads only that (or all, after a snapshot or a burst)."""
        if change.kind in ("snapshot", "reconnected"):
            self._loaded = False
        for run, action in change.actions:
            if run == self.run_name:
                self._dirty.add(action)

    # ------------------------------------------------------------------ tree
    @property
    def records(self) -> dict[str, Action]:
        return self.model.records

    def _label(self, key: str) -> Text:
        """One tree line's label, made only when the line is on screen and has changed."""
        node = self.model.nodes[key]
        if node.record is None:
            return Text.from_markup(self.app.themed(self._group_markup(node)))
        record = node.record
        name = escape(record.short_name or record.task_name or record.name)
        parts = [phase_markup(record.phase, self.app.ascii_only, with_name=False), f"[b]{name}[/]"]
        if record.name != "a0":
            parts.append(f"[dim]{record.name}[/]")
        if record.action_type == ACTION_TYPE_TRACE:
            parts.append("[dim](trace)[/]")
        elif record.action_type == ACTION_TYPE_CONDITION:
            parts.append("[dim](condition)[/]")
        if record.attempts > 1:
            parts.append(f"\\[x{record.attempts}]")
        cache = cache_status_name(record.cache_status)
        if cache == "CACHE_HIT":
            parts.append("[$success]$[/]")
        elif cache in ("CACHE_MISS", "CACHE_POPULATED"):
            parts.append("[dim]~[/]")
        if ActionPhase(record.phase).is_terminal:  # live elapsed time is in the title and the details
            parts.append(f"[dim]{duration_text(record)}[/]")
        error = first_error_line(record)
        if error:
            parts.append(f"[$error]{escape(error[:60])}[/]")
        return Text.from_markup(self.app.themed(" ".join(parts)))

    def _group_markup(self, node) -> str:
        """A group: its rolled-up phase, name, member count and members per phase."""
        ascii_only = self.app.ascii_only
        total = sum(node.counts.values())
        per_phase = "  ".join(f"{phase_markup(p, ascii_only, with_name=False)} {n}"
                              for p, n in sorted(node.counts.items()))
        return (f"{phase_markup(node.phase, ascii_only, with_name=False)} [b]{escape(node.group)}[/] "
                f"[dim](group)[/] \\[{total}]  {per_phase}")

    async def refresh_view(self) -> None:
        if self._refreshing or not self.app.ready:
            return
        self._refreshing = True
        try:
            dirty, self._dirty = self._dirty, set()
            root = self.model.record("a0")
            if not self._loaded or root is None or len(dirty) > FULL_RELOAD_AFTER:
                records = await self.app.client.list_actions(self.run_name)
                self._loaded = True
            elif dirty:
                records = await self.app.client.get_actions(self.run_name, sorted(dirty))
            else:
                records = []
            changes = self.model.apply(records)
            self.query_one(ActionTree).apply(changes)
            if self._select is not None and self._loaded:
                self.select_action(self._select)
                self._select = None
            root = self.model.record("a0")
            if records or (root is not None and not root.is_terminal):  # a live run's duration ticks
                self._render_title()
            selected = self.model.record(self.selected)
            live = selected is not None and not ActionPhase(selected.phase).is_terminal  # its elapsed time moves
            if live or self.selected in changes.keys or any(r.name == self.selected for r in records):
                await self._render_detail()
        except LookupError:
            show(self.query_one("#run-title", Static), f"run {escape(self.run_name)} not found")
        except Exception as exc:  # noqa: BLE001 - the engine went away: say so, try again next tick
            self._dirty |= dirty
            show(self.query_one("#run-title", Static), f"[b]{escape(self.run_name)}[/]  {escape(str(exc))}")
        finally:
            self._refreshing = False

    def _render_title(self) -> None:
        root = self.model.record("a0")
        if root is None:
            return
        ascii_only = self.app.ascii_only
        summary = "  ".join(f"{phase_markup(p, ascii_only, with_name=False)} {n}"
                            for p, n in sorted(self.model.phase_counts.items()))
        status = self.app.status_markup()
        show(self.query_one("#run-title", Static), self.app.themed(
            f"[b]{self.run_name}[/]  {escape(root.task_name or '')}  {phase_markup(root.phase, ascii_only)}"
            f"  {duration_text(root)}   actions {self.model.action_count}: {summary}"
            + (f"   {status}" if status else "")))

    def select_action(self, name: str) -> None:
        if not self.query_one(ActionTree).select(name):
            self.notify(f"run {self.run_name} has no action {name!r}", severity="warning")

    def on_action_tree_highlighted(self, event: ActionTree.Highlighted) -> None:
        self.selected = event.key
        self._log_source = None
        self.call_later(self._render_detail)

    # ------------------------------------------------------------------ details
    def _attempt(self, record: Action) -> int:
        return self.viewing_attempt.get(record.name, record.attempts or 1)

    async def _details(self, record: Action, attempt: int) -> tuple:
        """(TaskAction, events, inputs/outputs) of the action, re-read only when its row changed."""
        key = (record.name, attempt, record.updated_at, record.phase, record.attempts)
        if key != self._detail_key:
            client = self.app.client
            self._detail_data = (await client.task_action(record.run_name, record.name),
                                 await client.list_events(record.run_name, record.name),
                                 await client.action_io(record.run_name, record.name, attempt))
            self._detail_key = key
        return self._detail_data

    async def _render_detail(self) -> None:
        node = self.model.nodes.get(self.selected)
        if node is None:
            return
        if node.record is None:
            self._render_group_detail(node)
            return
        record = node.record
        attempt = self._attempt(record)
        try:
            obj, events, io = await self._details(record, attempt)
        except Exception as exc:  # noqa: BLE001 - e.g. the engine went away: keep what is shown
            show(self.query_one("#detail", Static), f"[$error]{escape(str(exc))}[/]")
            return
        ascii_only = self.app.ascii_only
        lines = [
            f"[b]{escape(record.short_name or record.name)}[/]  {phase_markup(record.phase, ascii_only)}",
            f"action     {record.run_name}/{record.name}   parent {record.parent_action_name or '-'}",
            f"task       {escape(record.task_name or '-')}   type {record.task_type}   "
            f"project {record.project}/{record.domain}",
            f"attempts   viewing [b]{attempt}[/] of {record.attempts}   (\\[ and ] step)",
            f"started    {_time(record.created_at)}   duration {duration_text(record)}   "
            f"cache {cache_status_name(record.cache_status)}",
        ]
        if record.waiting:
            lines.append(f"[$warning]waiting    for condition(s) {escape(', '.join(record.waiting))}[/] (s signals)")
        if record.cache_key:
            lines.append(f"cache key  [dim]{escape(record.cache_key)}[/]   (x evicts)")
        if record.abort_requested_at:
            lines.append(f"[$warning]aborted    at {_time(record.abort_requested_at)}: "
                         f"{escape(record.abort_reason or 'no reason given')}[/]")
        if record.error_message or record.error_code:
            lines.append(f"[$error]error      \\[{escape(record.error_kind or '-')}] {escape(record.error_code or '')}: "
                         f"{escape(record.error_message or '')}[/]")
        backoff = _backoff_left(obj)
        if backoff is not None:
            lines.append(f"[$warning]retrying   in {backoff:.0f}s[/] (the task's retry backoff)")
        if obj is not None:
            status = obj.get("status") or {}
            lines += ["", "[b]TaskAction[/]  " + escape(obj["metadata"]["name"])
                      + f"   pluginPhase {status.get('pluginPhase') or '-'}"
                      f"   systemFailures {status.get('systemFailures') or 0}"]
            for cond in status.get("conditions") or []:
                lines.append(f"  condition {cond['type']:<11} {cond['status']:<5} {escape(cond.get('reason') or '')}"
                             f"  [dim]{escape((cond.get('message') or '')[:70])}[/]")
            lines.append("  phaseHistory " + " → ".join(
                f"{escape(h['phase'])} [dim]{_time(_parse_time(h.get('occurredAt')))}[/]"
                for h in status.get("phaseHistory") or []))
            error_state = status.get("errorState")
            if error_state:
                lines.append(f"  errorState {escape(error_state.get('kind') or '-')} "
                             f"{escape(error_state.get('code') or '')}: {escape((error_state.get('message') or '')[:200])}")
        if io.inputs is not None:
            lines += ["", "[b]inputs[/]  " + escape(_short(io.inputs))]
        if io.outputs is not None:
            lines.append("[b]outputs[/] " + escape(_short(io.outputs)))
        if io.report is not None:
            lines.append(f"[b]report[/]  {escape(io.report['path'])}  [dim](o opens it)[/]")
            if io.report.get("summary"):
                lines.append(f"  [dim]{escape(io.report['summary'][:200])}[/]")
        attempt_events = [e for e in events if e.attempt == attempt]
        if attempt_events:
            lines += ["", f"[b]attempt {attempt}[/]  " + " → ".join(
                f"{phase_markup(e.phase, ascii_only)} [dim]{_time(e.updated_time)}[/]" for e in attempt_events)]
            worker = next((e.worker for e in reversed(attempt_events) if e.worker), "")
            if worker:
                lines.append(f"  ran on reusable worker [b]{escape(worker)}[/]")
            links = dict(link for e in attempt_events for link in e.links)
            for name, uri in links.items():  # a cluster's dashboards (Dask, Ray, Spark UI)
                lines.append(f"  {escape(name)}  {escape(uri)}")
        show(self.query_one("#detail", Static), "\n".join(lines))
        event_lines = []
        for e in events:
            reasons = "; ".join(e.reasons)
            error = f" [$error]{escape(e.error_code)}: {escape(e.error_message[:80])}[/]" if e.error else ""
            worker = f"  worker {escape(e.worker)}" if e.worker else ""
            event_lines.append(f"attempt {e.attempt}  {phase_markup(e.phase, ascii_only)}  "
                               f"[dim]{_time(e.updated_time)}[/]{error}{worker}  [dim]{escape(reasons[:80])}[/]")
        show(self.query_one("#event-list", Static), "\n".join(event_lines) or "[dim]no events[/]")

    def _render_group_detail(self, node) -> None:
        ascii_only = self.app.ascii_only
        members = [self.model.record(key) for key in node.children]
        lines = [f"[b]{escape(node.group)}[/] (group)  {phase_markup(node.phase, ascii_only)}",
                 f"parent     {self.run_name}/{node.parent}   members {len(members)}", ""]
        for phase, count in sorted(node.counts.items()):
            lines.append(f"  {phase_markup(phase, ascii_only)}  {count}")
        failed = [r for r in members if r is not None and first_error_line(r)]
        if failed:
            lines += ["", "[b]failures[/]"]
            lines += [f"  {r.name}  [$error]{escape(first_error_line(r))}[/]" for r in failed[:20]]
        show(self.query_one("#detail", Static), "\n".join(lines))
        show(self.query_one("#event-list", Static), "[dim]a group has no events of its own[/]")

    # ------------------------------------------------------------------ logs
    async def follow_log(self) -> None:
        """Append what the selected attempt's log gained since the last poll (read through the client)."""
        record = self.model.record(self.selected)
        if record is None or self._following_busy:
            return
        self._following_busy = True
        try:
            await self._poll_log(record)
        except Exception as exc:  # noqa: BLE001 - the engine went away: the status line says so
            show(self.query_one("#log-status", Static), f"[$error]{escape(str(exc))}[/]")
        finally:
            self._following_busy = False

    async def _poll_log(self, record: Action) -> None:
        log = self.query_one(RichLog)
        source = (record.name, self._attempt(record))
        if source != self._log_source:
            log.clear()
            self._log_lines = []
            self._match = -1
            self._log_source = source
            self._log_offset = -MAX_LOG_BYTES  # a long log opens at its tail
            self._following = True
        chunk = await self.app.client.read_log(self.run_name, source[0], source[1], self._log_offset, MAX_LOG_BYTES)
        if source != self._log_source:
            return  # the selection moved while reading
        if not chunk.exists:
            if not self._log_lines:
                log.clear()
                log.write(f"(no log yet for {record.name} attempt {source[1]})")
            self._show_log_status(record)
            return
        if self._log_offset < 0:
            log.clear()
        self._log_offset = chunk.next_offset
        if chunk.lines:
            self._following = log.scroll_offset.y >= log.max_scroll_y  # scrolled up: paused; at the end: following
            log.auto_scroll = self._following
            for line in chunk.lines:
                self._log_lines.append(line)
                log.write(self._format_line(line))
            del self._log_lines[:-MAX_LOG_LINES]
        self._show_log_status(record)

    def _show_log_status(self, record: Action) -> None:
        name, attempt = self._log_source or (record.name, 1)
        state = ("[$success]following[/]" if self._following else "[$warning]paused[/] (End follows again)")
        if record.is_terminal and self._following:
            state = "[dim]complete[/]"
        show(self.query_one("#log-status", Static), self.app.themed(
            f"{escape(name)} attempt {attempt}  {len(self._log_lines)} lines  {state}"
            f"{'  [dim]times: when written (t)[/]' if self._timestamps else ''}"))

    def on_mouse_scroll_up(self) -> None:
        self._following = False

    def _format_line(self, line: LogLine) -> Text:
        text = Text(line.text)
        if self._search:
            text.highlight_words([self._search], style="reverse", case_sensitive=False)
        if self._timestamps:
            stamp = dt.datetime.fromtimestamp(line.time).strftime("%H:%M:%S.%f")[:-3] if line.time else "--:--:--.---"
            text = Text.assemble((stamp + " ", "dim"), text)
        return text

    def _rewrite_log(self) -> None:
        log = self.query_one(RichLog)
        log.clear()
        for line in self._log_lines:
            log.write(self._format_line(line))

    def action_follow_log(self) -> None:
        """End: the log's end, followed again (from the tree too: the log is one key away)."""
        self.action_show_tab("logs")
        log = self.query_one(RichLog)
        self._following = True
        log.auto_scroll = True
        log.scroll_end(animate=False, immediate=True)
        record = self.model.record(self.selected)
        if record is not None:
            self._show_log_status(record)

    # ------------------------------------------------------------------ actions
    def action_back(self) -> None:
        self.app.pop_screen()

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        if tab == "logs":  # one key away: shown and focused, ready to scroll
            self.query_one(RichLog).focus()
        if tab == "timeline":
            self.call_later(self.refresh_timeline)

    async def refresh_timeline(self) -> None:
        """Each action's phase transitions (from its events) as a bar over the run's time span."""
        all_records = self.model.records
        if self.query_one(TabbedContent).active != "timeline" or not all_records:
            return
        records = sorted(all_records.values(), key=lambda r: (r.created_at, r.name))[:TIMELINE_ROWS]
        now = time.time()
        start = min(r.created_at for r in records)
        end = max(max((r.ended_at or now) for r in records), start + 0.001)
        width = max(self.query_one(TabbedContent).size.width - 32, TIMELINE_MIN_WIDTH)  # the pane, not the text
        scale = width / (end - start)
        lines = [f"[dim]{'':<26} {_time(start)}{' ' * (width - 24)}{_time(end)}[/]"]
        for record in records:
            events = await self.app.client.list_events(record.run_name, record.name)
            marks = [(e.updated_time, e.phase) for e in events] or [(record.created_at, record.phase)]
            marks.sort()
            stop = record.ended_at or (now if not ActionPhase(record.phase).is_terminal else marks[-1][0])
            bar = [" "] * width
            for (at, phase), (following, _) in zip(marks, marks[1:] + [(stop, 0)]):
                first = min(int((at - start) * scale), width - 1)
                last = max(min(int((following - start) * scale), width), first + 1)
                glyph = "▏" if ActionPhase(phase).is_terminal else "█"
                _, _, style = PHASE_STYLE[ActionPhase(phase)]
                for i in range(first, last):
                    bar[i] = f"[{style}]{glyph if i == first or glyph == '█' else ' '}[/]"
            name = escape((record.short_name or record.name)[:14])
            lines.append(f"{name:<14} {record.name[:11]:<11} {''.join(bar)}")
        if len(all_records) > TIMELINE_ROWS:
            lines.append(f"[dim]… the first {TIMELINE_ROWS} of {len(all_records)} actions, by start time[/]")
        show(self.query_one("#timeline-view", Static), "\n".join(lines))

    def action_attempt(self, step: int) -> None:
        record = self.model.record(self.selected)
        if record is None:
            return
        attempt = min(max(self._attempt(record) + step, 1), record.attempts or 1)
        self.viewing_attempt[record.name] = attempt
        self.call_later(self._render_detail)

    def action_search_log(self) -> None:
        def search(term: str | None) -> None:
            if term is None:
                return
            self._search = term.strip()
            self._match = -1
            self.action_show_tab("logs")
            self._rewrite_log()
            if self._search:
                count = sum(1 for line in self._log_lines if self._search.lower() in line.text.lower())
                self.notify(f"{count} line(s) match {self._search!r}; n for the next")
                self.action_next_match()

        self.app.push_screen(InputScreen("Search the log:", self._search), search)

    def action_next_match(self) -> None:
        if not self._search:
            return
        needle = self._search.lower()
        order = list(range(self._match + 1, len(self._log_lines))) + list(range(0, self._match + 1))
        for index in order:
            if needle in self._log_lines[index].text.lower():
                self._match = index
                log = self.query_one(RichLog)
                log.auto_scroll = self._following = False
                log.scroll_to(y=index, animate=False)
                return

    def action_toggle_wrap(self) -> None:
        log = self.query_one(RichLog)
        log.wrap = not log.wrap
        self._rewrite_log()

    def action_toggle_timestamps(self) -> None:
        self._timestamps = not self._timestamps
        self._rewrite_log()

    def action_save_log(self) -> None:
        if self._log_source is None:
            return
        name, attempt = self._log_source
        path = Path.cwd() / f"{self.run_name}-{name}-{attempt}.log"
        path.write_text("".join(line.text + "\n" for line in self._log_lines))
        self.notify(f"saved {len(self._log_lines)} lines to {path}")

    def action_open_report(self) -> None:
        data = self._detail_data if self._detail_key and self._detail_key[0] == self.selected else None
        report = data[2].report if data else None
        if report is None:
            self.notify("the selected attempt has no report (its task sets no report=True)", severity="warning")
            return
        self.run_worker(self._open_report(report["path"]), group="report")

    async def _open_report(self, path: str) -> None:
        if await asyncio.to_thread(open_in_browser, path):
            self.notify(f"opened {path}")
        else:
            self.app.copy_to_clipboard(path)
            self.notify(f"no browser here; the report is {path} (copied)", timeout=10)

    async def action_show_yaml(self) -> None:
        node = self.model.nodes.get(self.selected)
        if node is None or node.record is None:
            return
        record, client = node.record, self.app.client
        try:
            task_action = await client.task_action(record.run_name, record.name)
        except Exception as exc:  # noqa: BLE001 - the engine went away: say so, keep the screen
            self.notify(str(exc), severity="error")
            return
        parts = []
        if task_action is not None:
            parts.append("# the TaskAction" + (f" ({self.app.cluster_label})" if self.app.cluster_label else "")
                         + "\n" + yaml.safe_dump(_shortened(task_action), sort_keys=False))
        try:
            live = await client.cluster_object(record.run_name, record.name)
        except Exception as exc:  # noqa: BLE001 - finished and collected, a trace, the cluster unreachable
            live, parts = None, parts + [f"# on the cluster: {exc}\n"]
        if live is not None:
            parts.append(cluster_section(live))
        else:
            try:
                created = await client.render(record.run_name, record.name)
                parts.append("# what its plugin creates on a cluster\n"
                             + yaml.safe_dump(_shortened(created), sort_keys=False))
            except Exception as exc:  # noqa: BLE001 - a trace, a condition, a type no resource plugin builds
                parts.append(f"# no Kubernetes object: {exc}\n")
        self.app.push_screen(YamlScreen(f"{record.run_name}/{record.name}", "\n".join(parts)))

    def action_copy_id(self) -> None:
        text = f"{self.run_name}/{self.selected}"
        self.app.copy_to_clipboard(text)
        self.notify(f"copied {text}")

    def action_abort(self) -> None:
        self.app.confirm_abort(self.run_name, self.selected)

    def action_abort_run(self) -> None:
        self.app.confirm_abort(self.run_name, "a0")

    def action_retry(self) -> None:
        self.app.retry(self.run_name, self.selected)

    def action_evict_cache(self) -> None:
        record = self.model.record(self.selected)
        if record is None or not record.cache_key:
            self.notify("the selected action's task is not cached", severity="warning")
            return
        self.app.confirm_evict(record.short_name or record.task_name or record.name, record.cache_key)

    def action_signal(self) -> None:
        record = self.model.record(self.selected)
        if record is None or record.action_type != ACTION_TYPE_CONDITION:
            self.notify("select a condition (a paused action) to signal it", severity="warning")
            return
        self.app.signal(self.run_name, record.name, record.short_name or record.name)

    def check_action(self, action: str, parameters) -> bool | None:
        if action in ("abort", "retry", "signal", "abort_run", "evict_cache") and self.app.read_only:
            return False
        return True


_RETRYING = re.compile(r"retrying in ([0-9.]+)s")


def _backoff_left(obj: dict | None) -> float | None:
    """Seconds until a retry in its backoff launches: the TaskAction's last phase-history entry is the
    restart, whose message says how long it waits."""
    history = ((obj or {}).get("status") or {}).get("phaseHistory") or []
    if not history or history[-1].get("phase") != "Queued":
        return None
    found = _RETRYING.search(history[-1].get("message") or "")
    since = _parse_time(history[-1].get("occurredAt"))
    if not found or since is None:
        return None
    left = float(found.group(1)) - (time.time() - since)
    return left if left > 0 else None


def open_in_browser(path: str) -> bool:
    """Open a local HTML file in a graphical browser; False where there is none (a text browser would take
    over the console's terminal, so only a display or macOS counts)."""
    import os
    import sys
    import webbrowser

    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin"):
        return False
    try:
        return webbrowser.get().open(Path(path).as_uri())
    except webbrowser.Error:
        return False


def _short(values: dict) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in values.items())
    return text if len(text) < 300 else text[:297] + "..."


def _parse_time(text: str | None) -> float | None:
    return dt.datetime.fromisoformat(text).timestamp() if text else None


def cluster_section(live: dict) -> str:
    """The action's object on the cluster now, and the Events about it (as `kubectl describe` ends)."""
    head = f"# on the cluster now: {live['kind']} {live['namespace']}/{live['name']}"
    body = yaml.safe_dump(_shortened(live["object"]), sort_keys=False) if live.get("object") else "# (gone)\n"
    events = live.get("events") or []
    lines = [f"# its events ({len(events)})"] + [
        f"#   {e['at'] or '-'}  {e['type'] or '-':7} {e['reason']:12} {e['from'] or '-'}: {e['message']}"
        + (f" (x{e['count']})" if e.get("count", 1) > 1 else "") for e in events]
    return f"{head}\n{body}" + "\n".join(lines) + "\n"


def _shortened(value, limit: int = 160):
    """Long strings (a base64 task template) cut, with their length: the rest of the object stays readable."""
    if isinstance(value, dict):
        return {k: _shortened(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_shortened(v, limit) for v in value]
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}… ({len(value)} characters)"
    return value
