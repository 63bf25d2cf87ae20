"""The runs screen: one table keyed by run id, updated in place when the change feed says runs changed.

Columns give way by priority on a narrow terminal: RUN, PHASE, DURATION and ERROR stay; TASK, STARTED and
ATTEMPTS come back as the width allows, and PROJECT (project/domain) once the runs span more than one.
"""

from __future__ import annotations

import time

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from console.runs_query import SORT_KEYS, RunQuery, next_sort_key
from console.state import REFRESH_HZ, duration_text, first_error_line, phase_markup, show, started_text
from engine.client import Action, ActionPhase, Change

# (key, narrowest, widest): fixed widths, since a narrowing update_width=True cell re-measures the column.
COLUMN_ORDER = ("run", "project", "task", "phase", "started", "duration", "attempts", "error")
ESSENTIAL = {"run": (21, 22), "phase": (11, 14), "duration": (8, 9), "error": (24, 60)}
OPTIONAL = (("task", (12, 28)), ("started", (15, 15)), ("attempts", (8, 8)))  # in the order they come back
PROJECT_COLUMN = ("project", (24, 30))  # only while the runs span several projects or domains
CELL_PADDING = 2
RELIST_SECONDS = 2.0  # runs are re-read at least this often (a condition starting to wait is not a run's change)
COUNTED = (ActionPhase.RUNNING, ActionPhase.QUEUED, ActionPhase.PAUSED, ActionPhase.SUCCEEDED, ActionPhase.FAILED,
           ActionPhase.TIMED_OUT, ActionPhase.ABORTED)


def column_layout(width: int, projects: bool = False) -> dict[str, int]:
    """The columns that fit in ``width`` cells, with their widths (see the module docstring); ``projects``:
    the runs span several projects, so PROJECT competes for the space too, after the others."""
    optional = (*OPTIONAL, PROJECT_COLUMN) if projects else OPTIONAL
    widths = {key: low for key, (low, _) in ESSENTIAL.items()}
    spare = width - sum(widths.values()) - CELL_PADDING * len(widths) - 2  # the scrollbar's gutter
    for key, (low, _) in optional:
        if spare >= low + CELL_PADDING:
            widths[key] = low
            spare -= low + CELL_PADDING
    for key, (low, high) in (("run", ESSENTIAL["run"]), ("phase", ESSENTIAL["phase"]),
                             ("duration", ESSENTIAL["duration"]), *optional, ("error", ESSENTIAL["error"])):
        if key in widths and spare > 0:
            grow = min(high - widths[key], spare)
            widths[key] += grow
            spare -= grow
    return {key: widths[key] for key in COLUMN_ORDER if key in widths}


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open_run", "Open", tooltip="Show the run's action tree, details and logs"),
        Binding("slash", "filter", "Filter", key_display="/",
                tooltip="phase:failed,paused task:name project:p/d domain:d, or any text"),
        Binding("f", "toggle_failed", "Failed"),
        Binding("s", "cycle_sort", "Sort", show=False,
                tooltip="Sort by started, duration, phase, task, attempts, run, project (grouped)"),
        Binding("S", "reverse_sort", "Reverse sort", key_display="S", show=False),
        Binding("r", "retry", "Retry", tooltip="Re-run a failed, aborted or timed-out run as a new attempt"),
        Binding("ctrl+d", "abort", "Abort", tooltip="Abort the selected run and all its actions (asks first)"),
        Binding("c", "copy_id", "Copy id", show=False),
        Binding("W", "app.workers", "Workers", key_display="W",
                tooltip="The engine's reusable workers by pool, and its fork servers"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple] = {}
        self.records: dict[str, Action] = {}
        self.counts: dict[int, int] = {}
        self.filter_text = ""
        self.failed_only = False
        self.run_query = RunQuery()
        self.sort_key = "started"
        self.sort_reverse = SORT_KEYS["started"][2]
        self.columns_shown: dict[str, int] = {}
        self._refreshing = False
        self._stale = True
        self._listed_at = 0.0

    def compose(self) -> ComposeResult:
        yield Static(id="counters")
        yield Input(placeholder="filter: phase:failed,paused  task:square  project:demo/development  any text",
                    id="filter")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._apply_layout(self.app.size.width)
        self.query_one("#filter").display = False
        self._unlisten = self.app.listen(self._on_change)
        self.set_interval(1 / REFRESH_HZ, self.refresh_rows)
        self.call_later(self.refresh_rows)
        self.query_one(DataTable).focus()

    def on_unmount(self) -> None:
        self._unlisten()

    def on_resize(self) -> None:
        self._apply_layout(self.app.size.width)

    def _spans_projects(self) -> bool:
        return len({(r.project, r.domain) for r in self.records.values()}) > 1

    def _apply_layout(self, width: int) -> None:
        layout = column_layout(width, self._spans_projects())
        if layout == self.columns_shown:
            return
        self.columns_shown = layout
        table = self.query_one(DataTable)
        table.clear(columns=True)
        for key, column_width in layout.items():
            table.add_column(key.upper(), key=key, width=column_width)
        self.rows = {}
        self._show_sort()
        if self.records:
            self._render_rows(list(self.records.values()), self.counts, refetched=False)

    def _on_change(self, change: Change) -> None:
        if change.kind in ("snapshot", "reconnected", "storage") or any(a[1] == "a0" for a in change.actions):
            self._stale = True

    def _matches(self, record: Action) -> bool:
        return self.run_query.matches(record)

    def _row(self, record: Action) -> tuple:
        cells = {"run": record.run_name, "project": escape(f"{record.project}/{record.domain}"),
                 "task": escape(record.task_name or record.short_name or "-"),
                 "phase": self.app.themed(phase_markup(record.phase, self.app.ascii_only)),
                 "started": started_text(record), "duration": duration_text(record),
                 "attempts": str(record.attempts), "error": escape(first_error_line(record))}
        return tuple(cells[key] for key in self.columns_shown)

    def on_screen_resume(self) -> None:
        self._stale = True  # back on top: catch up at once
        self.call_later(self.refresh_rows)

    async def refresh_rows(self) -> None:
        if self._refreshing or not self.app.ready or not self.is_current:  # a covered screen waits
            return
        self._refreshing = True
        try:
            if self._stale or time.monotonic() - self._listed_at > RELIST_SECONDS:
                self._stale = False
                self._listed_at = time.monotonic()
                runs = await self.app.client.list_runs(limit=1000)
                self.counts = await self.app.client.run_counts()
                self._render_rows(runs, self.counts, refetched=True)
            else:  # nothing new: only the live durations move
                self._render_rows(list(self.records.values()), self.counts, refetched=False)
        except Exception as exc:  # noqa: BLE001 - an engine that went away: the header says so; keep going
            self._stale = True
            show(self.query_one("#counters", Static), f"[b]TaskDeck[/]  {escape(str(exc))}")
        finally:
            self._refreshing = False

    def _render_rows(self, runs: list[Action], counts: dict[int, int], refetched: bool) -> None:
        table = self.query_one(DataTable)
        selected = self.selected_run
        if refetched:
            spanned = self._spans_projects()
            self.records = {r.run_name: r for r in runs}
            if self._spans_projects() != spanned:  # a second project appeared (or the last other went)
                before = self.columns_shown
                self._apply_layout(self.app.size.width)
                if self.columns_shown != before:
                    return  # the new layout rendered every row
        wanted = {name: r for name, r in self.records.items() if self._matches(r)}
        for name in [n for n in self.rows if n not in wanted]:
            table.remove_row(name)
            del self.rows[name]
        resort = False
        sort_column = SORT_KEYS[self.sort_key][0]
        for name, record in wanted.items():
            row = self._row(record)
            old = self.rows.get(name)
            if old is None:
                table.add_row(*row, key=name)
                resort = True
            elif old != row:
                for column, before, after in zip(self.columns_shown, old, row):
                    if before != after:
                        table.update_cell(name, column, after)
                        resort = resort or column == sort_column
            self.rows[name] = row
        if resort:
            self._sort()
        if selected in self.rows:  # the cursor stays on the same run when rows change or re-sort
            index = table.get_row_index(selected)
            if index != table.cursor_row:
                table.move_cursor(row=index, animate=False)
        parts = [f"[b]TaskDeck[/]  runs {sum(counts.values())}"]
        if self.app.cluster_label:  # the Kubernetes backend: which cluster and namespace
            parts.insert(0, f"[b]TaskDeck[/]  [$accent]{escape(self.app.cluster_label)}[/]")
            parts[1] = f"runs {sum(counts.values())}"
        for phase in COUNTED:
            if counts.get(int(phase)):
                parts.append(f"{phase_markup(phase, self.app.ascii_only, with_name=False)} "
                             f"{phase.name.lower()} {counts[int(phase)]}")
        if self.failed_only:
            parts.append("[b $warning]failed only[/]")
        if self.filter_text:
            parts.append(f"filter: [b]{escape(self.filter_text)}[/] ({len(wanted)} shown)")
        if self.run_query.errors:
            parts.append(f"[b $error]{escape('; '.join(self.run_query.errors))}[/] (ignored)")
        status = self.app.status_markup()
        if status:
            parts.append(status)
        show(self.query_one("#counters", Static), self.app.themed("   ".join(parts)))

    @property
    def selected_run(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return row_key.value

    # ------------------------------------------------------------------ actions
    def action_open_run(self) -> None:
        run = self.selected_run
        if run:
            self.app.open_run(run)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.app.open_run(event.row_key.value)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        self.set_focus(box)  # now, not after the queued keys: a fast typist's "rfail" must not press r (retry)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self._requery()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.filter_text = ""
        self.query_one(DataTable).focus()
        self._requery()

    def action_toggle_failed(self) -> None:
        self.failed_only = not self.failed_only
        self._requery()

    def _requery(self) -> None:
        self.run_query = RunQuery.parse(self.filter_text, self.failed_only)
        self._render_rows(list(self.records.values()), self.counts, refetched=False)

    # ------------------------------------------------------------------ sorting
    def action_cycle_sort(self) -> None:
        self.sort_key = next_sort_key(self.sort_key)
        self.sort_reverse = SORT_KEYS[self.sort_key][2]
        self._sort()

    def action_reverse_sort(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._sort()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key in SORT_KEYS:
            if key == self.sort_key:
                self.sort_reverse = not self.sort_reverse
            else:
                self.sort_key, self.sort_reverse = key, SORT_KEYS[key][2]
            self._sort()

    def _sort(self) -> None:
        """Re-sort by the current key; the cursor stays on its run (sort alone would not keep it)."""
        table = self.query_one(DataTable)
        selected = self.selected_run
        value = SORT_KEYS[self.sort_key][1]
        records = self.records
        table.sort("run", key=lambda run: (value(records[run]), run) if run in records else (0, run),
                   reverse=self.sort_reverse)
        self._show_sort()
        if selected in self.rows:
            table.move_cursor(row=table.get_row_index(selected), animate=False)

    def _show_sort(self) -> None:
        table = self.query_one(DataTable)
        for key, width in self.columns_shown.items():
            arrow = ("▼" if self.sort_reverse else "▲") if key == self.sort_key else ""
            label = key.upper()
            if arrow:  # the arrow must show even where the name fills the column (DURATION, ATTEMPTS)
                label = label[:max(width - 2, 1)] + " " + arrow
            table.columns[key].label = Text(label)
        table.refresh()

    def action_copy_id(self) -> None:
        run = self.selected_run
        if run:
            self.app.copy_to_clipboard(run)
            self.notify(f"copied {run}")

    def action_abort(self) -> None:
        run = self.selected_run
        if run:
            self.app.confirm_abort(run, "a0")

    def action_retry(self) -> None:
        run = self.selected_run
        if run:
            self.app.retry(run, "a0")

    def check_action(self, action: str, parameters) -> bool | None:
        if action in ("abort", "retry") and self.app.read_only:
            return False
        return True
