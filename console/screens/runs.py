"""The runs screen: one table keyed by run id, updated in place from the console's state."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from console.runs_query import SORT_KEYS, RunQuery, next_sort_key
from console.state import REFRESH_HZ, duration_text, first_error_line, phase_markup, started_text
from engine.phases import ActionPhase
from engine.store.base import ActionRecord

# Fixed widths for the live columns: a narrowing update_width=True cell re-measures the whole column.
COLUMNS = (("run", 22), ("task", 28), ("phase", 14), ("started", 15), ("duration", 9), ("attempts", 8),
           ("error", 60))
COLUMN_KEYS = tuple(key for key, _ in COLUMNS)


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open_run", "Open", tooltip="Show the run's action tree, details and logs"),
        Binding("slash", "filter", "Filter", key_display="/",
                tooltip="phase:failed task:name project:p/d domain:d, or any text"),
        Binding("f", "toggle_failed", "Failed only"),
        Binding("s", "cycle_sort", "Sort", tooltip="Sort by started, duration, phase, task, attempts, run"),
        Binding("S", "reverse_sort", "Reverse sort", key_display="S", show=False),
        Binding("r", "retry", "Retry", tooltip="Re-run a failed, aborted or timed-out run as a new attempt"),
        Binding("ctrl+d", "abort", "Abort", tooltip="Abort the selected run and all its actions (asks first)"),
        Binding("c", "copy_id", "Copy id"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple] = {}
        self.records: dict[str, ActionRecord] = {}
        self.filter_text = ""
        self.failed_only = False
        self.run_query = RunQuery()
        self.sort_key = "started"
        self.sort_reverse = SORT_KEYS["started"][2]
        self._refreshing = False

    def compose(self) -> ComposeResult:
        yield Static(id="counters")
        yield Input(placeholder="filter: phase:failed,running  task:square  project:demo/development  any text",
                    id="filter")
        table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column, width in COLUMNS:
            table.add_column(column.upper(), key=column, width=width)
        self._show_sort()
        self.query_one("#filter").display = False
        self.set_interval(1 / REFRESH_HZ, self.refresh_rows)
        self.call_later(self.refresh_rows)
        table.focus()

    def _matches(self, record: ActionRecord) -> bool:
        return self.run_query.matches(record)

    def _row(self, record: ActionRecord) -> tuple:
        return (record.run_name, escape(record.task_name or record.short_name or "-"),
                self.app.themed(phase_markup(record.phase, self.app.ascii_only)), started_text(record),
                duration_text(record),
                str(record.attempts), escape(first_error_line(record)))

    async def refresh_rows(self) -> None:
        if self._refreshing or not self.app.engine.started:
            return
        self._refreshing = True
        try:
            runs = await self.app.engine.runs.list_runs(limit=1000)
            counts = await self.app.engine.store.phase_counts()
            self._render_rows(runs, counts)
        finally:
            self._refreshing = False

    def _render_rows(self, runs: list[ActionRecord], counts: dict[int, int]) -> None:
        table = self.query_one(DataTable)
        selected = self.selected_run
        wanted = {r.run_name: r for r in runs if self._matches(r)}
        self.records = wanted
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
                for column, before, after in zip(COLUMN_KEYS, old, row):
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
        for phase in (ActionPhase.RUNNING, ActionPhase.QUEUED, ActionPhase.PAUSED, ActionPhase.SUCCEEDED,
                      ActionPhase.FAILED, ActionPhase.TIMED_OUT, ActionPhase.ABORTED):
            if counts.get(int(phase)):
                parts.append(f"{phase_markup(phase, self.app.ascii_only, with_name=False)} "
                             f"{phase.name.lower()} {counts[int(phase)]}")
        if self.failed_only:
            parts.append("[b $warning]failed only[/]")
        if self.filter_text:
            parts.append(f"filter: [b]{escape(self.filter_text)}[/] ({len(wanted)} shown)")
        if self.run_query.errors:
            parts.append(f"[b $error]{escape('; '.join(self.run_query.errors))}[/] (ignored)")
        if self.app.engine.health.error:
            parts.append(f"[b $error]storage unavailable: {escape(self.app.engine.health.error)}[/]")
        self.query_one("#counters", Static).update("   ".join(parts))

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
        self.call_later(self.refresh_rows)

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
        for key, _ in COLUMNS:
            arrow = (" ▼" if self.sort_reverse else " ▲") if key == self.sort_key else ""
            table.columns[key].label = Text(key.upper() + arrow)
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
