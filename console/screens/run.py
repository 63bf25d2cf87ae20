"""The run screen: the action tree, and the selected action's details, log and events."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, RichLog, Static, TabbedContent, TabPane

from console.screens.dialogs import InputScreen
from console.tree_model import ActionTreeModel
from console.widgets.action_tree import ActionTree
from console.state import PHASE_STYLE, REFRESH_HZ, duration_text, first_error_line, phase_markup
from engine.events import decode_event
from engine.model import task_action_name
from engine.phases import ActionPhase
from engine.runs import ACTION_TYPE_CONDITION, ACTION_TYPE_TRACE
from engine.store.base import ActionRecord, ActionsChanged
from engine.views import cache_status_name

LOG_POLL_SECONDS = 0.5
FULL_RELOAD_AFTER = 2000  # changed actions in one tick above which the whole run is re-read
MAX_LOG_BYTES = 2_000_000  # the tail that is loaded when a log is opened
MAX_LOG_LINES = 20_000
TIMELINE_ROWS = 100
TIMELINE_MIN_WIDTH = 20


def _time(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    return value.astimezone().strftime("%H:%M:%S.%f")[:-3]


class RunScreen(Screen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("d", "show_tab('details')", "Details"),
        Binding("l", "show_tab('logs')", "Logs"),
        Binding("e", "show_tab('events')", "Events"),
        Binding("g", "show_tab('timeline')", "Timeline"),
        Binding("left_square_bracket", "attempt(-1)", "Prev attempt", key_display="["),
        Binding("right_square_bracket", "attempt(1)", "Next attempt", key_display="]"),
        Binding("r", "retry", "Retry",
                tooltip="Re-run the selected failed action (a parent re-runs its failed children)"),
        Binding("ctrl+d", "abort", "Abort", tooltip="Abort the selected action and its subtree (asks first)"),
        Binding("s", "signal", "Signal", tooltip="Answer the selected condition (bool, int, float or str)"),
        Binding("c", "copy_id", "Copy id"),
        Binding("x", "evict_cache", "Evict cache", show=False,
                tooltip="Drop the selected action's cache entry (asks first)"),
        Binding("ctrl+r", "abort_run", "Abort run", show=False, tooltip="Abort the whole run (asks first)"),
        Binding("slash", "search_log", "Search log", key_display="/",
                tooltip="Highlight matches in the log; n for the next"),
        Binding("n", "next_match", "Next match", show=False),
        Binding("w", "toggle_wrap", "Wrap", show=False),
        Binding("t", "toggle_timestamps", "Timestamps", show=False, tooltip="Show when each log line arrived"),
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
        self._log_lines: list[tuple[float, str]] = []  # (when read, text) of the shown attempt's log
        self._search = ""
        self._match = -1
        self._timestamps = False
        self._loaded = False
        self._log_offset = 0

    def compose(self) -> ComposeResult:
        yield Static(id="run-title")
        with Horizontal():
            yield ActionTree(self.model, self._label, id="tree")
            with TabbedContent(id="tabs", initial="details"):
                with TabPane("Details", id="details"):
                    with VerticalScroll():
                        yield Static(id="detail")
                with TabPane("Logs", id="logs"):
                    yield RichLog(id="log", highlight=False, markup=False, wrap=False, max_lines=20_000)
                with TabPane("Events", id="events"):
                    with VerticalScroll():
                        yield Static(id="event-list")
                with TabPane("Timeline", id="timeline"):
                    with VerticalScroll():
                        yield Static(id="timeline-view")
        yield Footer()

    def on_mount(self) -> None:
        self._unsubscribe = self.app.engine.store.subscribe(self._on_change)
        self.set_interval(1 / REFRESH_HZ, self.refresh_view)
        self.set_interval(LOG_POLL_SECONDS, self.follow_log)
        self.set_interval(1.0, self.refresh_timeline)
        self.call_later(self.refresh_view)
        self.query_one(ActionTree).focus()

    def on_unmount(self) -> None:
        self._unsubscribe()

    def _on_change(self, change) -> None:
        """The engine says what changed; the next tick re-reads only that (or all, after a big burst)."""
        if isinstance(change, ActionsChanged):
            for key in change.keys:
                if key[2] == self.run_name:
                    self._dirty.add(key[3])

    # ------------------------------------------------------------------ tree
    @property
    def records(self) -> dict[str, ActionRecord]:
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
        if self._refreshing or not self.app.engine.started:
            return
        self._refreshing = True
        try:
            dirty, self._dirty = self._dirty, set()
            root = self.model.record("a0")
            if not self._loaded or root is None or len(dirty) > FULL_RELOAD_AFTER:
                records = await self.app.engine.runs.list_actions(self.run_name)
                self._loaded = True
            elif dirty:
                records = await self.app.engine.store.get_actions(root.project, root.domain, self.run_name,
                                                                   sorted(dirty))
            else:
                records = []
            changes = self.model.apply(records)
            self.query_one(ActionTree).apply(changes)
            if self._select is not None and self._loaded:
                self.select_action(self._select)
                self._select = None
            if records:
                self._render_title()
            selected = self.model.record(self.selected)
            live = selected is not None and not ActionPhase(selected.phase).is_terminal  # its elapsed time moves
            if live or self.selected in changes.keys or any(r.name == self.selected for r in records):
                await self._render_detail()
        except LookupError:
            self.query_one("#run-title", Static).update(f"run {escape(self.run_name)} not found")
        finally:
            self._refreshing = False

    def _render_title(self) -> None:
        root = self.model.record("a0")
        if root is None:
            return
        ascii_only = self.app.ascii_only
        summary = "  ".join(f"{phase_markup(p, ascii_only, with_name=False)} {n}"
                            for p, n in sorted(self.model.phase_counts.items()))
        self.query_one("#run-title", Static).update(
            f"[b]{self.run_name}[/]  {escape(root.task_name or '')}  {phase_markup(root.phase, ascii_only)}"
            f"  {duration_text(root)}   actions {self.model.action_count}: {summary}")

    def select_action(self, name: str) -> None:
        if not self.query_one(ActionTree).select(name):
            self.notify(f"run {self.run_name} has no action {name!r}", severity="warning")

    def on_action_tree_highlighted(self, event: ActionTree.Highlighted) -> None:
        self.selected = event.key
        self._log_source = None
        self.call_later(self._render_detail)

    # ------------------------------------------------------------------ details
    def _attempt(self, record: ActionRecord) -> int:
        return self.viewing_attempt.get(record.name, record.attempts or 1)

    async def _render_detail(self) -> None:
        node = self.model.nodes.get(self.selected)
        if node is None:
            return
        if node.record is None:
            self._render_group_detail(node)
            return
        record = node.record
        engine = self.app.engine
        attempt = self._attempt(record)
        obj = engine.store.peek(task_action_name(record.run_name, record.name))
        events = await engine.runs.list_events(record.key)
        lines = [
            f"[b]{escape(record.short_name or record.name)}[/]  {phase_markup(record.phase, self.app.ascii_only)}",
            f"action     {record.run_name}/{record.name}   parent {record.parent_action_name or '-'}",
            f"task       {escape(record.task_name or '-')}   type {record.task_type}   "
            f"project {record.project}/{record.domain}",
            f"attempts   viewing [b]{attempt}[/] of {record.attempts}   (\\[ and ] step)",
            f"started    {_time(record.created_at)}   duration {duration_text(record)}   "
            f"cache {cache_status_name(record.cache_status)}",
        ]
        if record.cache_key:
            lines.append(f"cache key  [dim]{escape(record.cache_key)}[/]   (x evicts)")
        if record.error_message or record.error_code:
            lines.append(f"[$error]error      \\[{escape(record.error_kind or '-')}] {escape(record.error_code or '')}: "
                         f"{escape(record.error_message or '')}[/]")
        if obj is not None:
            status = obj.status
            lines += ["", "[b]TaskAction[/]  " + escape(obj.name) + f"   pluginPhase {status.plugin_phase or '-'}"
                      f"   systemFailures {status.system_failures}"]
            for cond in status.conditions:
                lines.append(f"  condition {cond.type:<11} {cond.status:<5} {escape(cond.reason)}"
                             f"  [dim]{escape(cond.message[:70])}[/]")
            lines.append("  phaseHistory " + " → ".join(
                f"{escape(h.phase)} [dim]{_time(h.occurred_at)}[/]" for h in status.phase_history))
            if status.error_state is not None:
                lines.append(f"  errorState {escape(status.error_state.kind or '-')} "
                             f"{escape(status.error_state.code)}: {escape(status.error_state.message[:200])}")
        inputs = engine.runs.inputs_of(record) if record.input_uri else None
        if inputs is not None:
            lines += ["", "[b]inputs[/]  " + escape(_short(inputs))]
        if ActionPhase(record.phase) == ActionPhase.SUCCEEDED and record.action_type != ACTION_TYPE_CONDITION:
            from engine.literals import read_outputs

            outputs = read_outputs(os.path.join(engine.runs.attempt_prefix_of(record, attempt), "outputs.pb"))
            if outputs is not None:
                lines.append("[b]outputs[/] " + escape(_short(outputs)))
        attempt_events = [e for e in events if e.attempt == attempt]
        if attempt_events:
            lines += ["", f"[b]attempt {attempt}[/]  " + " → ".join(
                f"{phase_markup(e.phase, self.app.ascii_only)} [dim]{_time(e.updated_time)}[/]"
                for e in attempt_events)]
        self.query_one("#detail", Static).update("\n".join(lines))
        event_lines = []
        for e in events:
            event = decode_event(e)
            reasons = "; ".join(c.message for c in event.cluster_events)
            error = f" [$error]{escape(event.error_info.code)}: {escape(event.error_info.message[:80])}[/]" \
                if event.HasField("error_info") else ""
            event_lines.append(f"attempt {e.attempt}  {phase_markup(e.phase, self.app.ascii_only)}  "
                               f"[dim]{_time(e.updated_time)}[/]{error}  [dim]{escape(reasons[:80])}[/]")
        self.query_one("#event-list", Static).update("\n".join(event_lines) or "[dim]no events[/]")

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
        self.query_one("#detail", Static).update("\n".join(lines))
        self.query_one("#event-list", Static).update("[dim]a group has no events of its own[/]")

    # ------------------------------------------------------------------ logs
    def follow_log(self) -> None:
        """Append what the selected attempt's log gained since the last poll."""
        record = self.model.record(self.selected)
        if record is None:
            return
        log = self.query_one(RichLog)
        source = (record.name, self._attempt(record))
        path = self.app.engine.reconciler.log_path(record.run_name, record.name, source[1])
        if source != self._log_source:
            log.clear()
            self._log_lines = []
            self._match = -1
            self._log_source = source
            self._log_offset = max(0, path.stat().st_size - MAX_LOG_BYTES) if path.exists() else 0
            if not path.exists():
                log.write(f"(no log yet for {record.name} attempt {source[1]})")
        if not path.exists():
            return
        with open(path, "rb") as f:
            f.seek(self._log_offset)
            data = f.read()
        if not data:
            return
        complete = data.rfind(b"\n") + 1
        if complete == 0:
            return
        self._log_offset += complete
        at_end = log.scroll_offset.y >= log.max_scroll_y  # follow stops when you scroll up
        log.auto_scroll = at_end
        now = time.time()
        for line in data[:complete].decode(errors="replace").splitlines():
            self._log_lines.append((now, line))
            log.write(self._format_line(now, line))
        del self._log_lines[:-MAX_LOG_LINES]

    def _format_line(self, when: float, line: str) -> Text:
        text = Text(line)
        if self._search:
            text.highlight_words([self._search], style="reverse", case_sensitive=False)
        if self._timestamps:
            text = Text.assemble((dt.datetime.fromtimestamp(when).strftime("%H:%M:%S "), "dim"), text)
        return text

    def _rewrite_log(self) -> None:
        log = self.query_one(RichLog)
        log.clear()
        for when, line in self._log_lines:
            log.write(self._format_line(when, line))

    # ------------------------------------------------------------------ actions
    def action_back(self) -> None:
        self.app.pop_screen()

    def action_show_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
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
            events = await self.app.engine.runs.list_events(record.key)
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
        self.query_one("#timeline-view", Static).update("\n".join(lines))

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
                count = sum(1 for _, line in self._log_lines if self._search.lower() in line.lower())
                self.notify(f"{count} line(s) match {self._search!r}; n for the next")
                self.action_next_match()

        self.app.push_screen(InputScreen("Search the log:", self._search), search)

    def action_next_match(self) -> None:
        if not self._search:
            return
        needle = self._search.lower()
        order = list(range(self._match + 1, len(self._log_lines))) + list(range(0, self._match + 1))
        for index in order:
            if needle in self._log_lines[index][1].lower():
                self._match = index
                log = self.query_one(RichLog)
                log.auto_scroll = False
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
        path.write_text("".join(line + "\n" for _, line in self._log_lines))
        self.notify(f"saved {len(self._log_lines)} lines to {path}")

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


def _short(values: dict) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in values.items())
    return text if len(text) < 300 else text[:297] + "..."
