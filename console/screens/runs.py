"""The runs screen: one table keyed by run id, updated in place from the console's state."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from console.state import REFRESH_HZ, duration_text, first_error_line, phase_markup, started_text
from engine.phases import ActionPhase
from engine.store.base import ActionRecord

COLUMNS = ("run", "task", "phase", "started", "duration", "attempts", "error")
FAILED_PHASES = {ActionPhase.FAILED, ActionPhase.TIMED_OUT, ActionPhase.ABORTED}


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open_run", "Open", tooltip="Show the run's action tree, details and logs"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("f", "toggle_failed", "Failed only"),
        Binding("r", "retry", "Retry"),
        Binding("ctrl+d", "abort", "Abort"),
        Binding("c", "copy_id", "Copy id"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple] = {}
        self.records: dict[str, ActionRecord] = {}
        self.filter_text = ""
        self.failed_only = False
        self._refreshing = False

    def compose(self) -> ComposeResult:
        yield Static(id="counters")
        yield Input(placeholder="filter: run, task, phase, project/domain, error text", id="filter")
        table = DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield table
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column.upper(), key=column)
        self.query_one("#filter").display = False
        self.set_interval(1 / REFRESH_HZ, self.refresh_rows)
        self.call_later(self.refresh_rows)
        table.focus()

    def _matches(self, record: ActionRecord) -> bool:
        if self.failed_only and ActionPhase(record.phase) not in FAILED_PHASES:
            return False
        if not self.filter_text:
            return True
        haystack = " ".join(str(x) for x in (
            record.run_name, record.task_name, record.short_name, ActionPhase(record.phase).name,
            f"{record.project}/{record.domain}", record.error_message, record.error_code)).lower()
        return all(term in haystack for term in self.filter_text.lower().split())

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
        added = False
        for name, record in wanted.items():
            row = self._row(record)
            old = self.rows.get(name)
            if old is None:
                table.add_row(*row, key=name)
                added = True
            elif old != row:
                for column, before, after in zip(COLUMNS, old, row):
                    if before != after:
                        table.update_cell(name, column, after, update_width=True)
            self.rows[name] = row
        if added:
            table.sort("started", reverse=True)
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
            parts.append(f"filter: [b]{escape(self.filter_text)}[/]")
        if self.app.engine.store.storage_error:
            parts.append(f"[b $error]storage unavailable: {escape(self.app.engine.store.storage_error)}[/]")
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
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.call_later(self.refresh_rows)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(DataTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.display = False
        self.filter_text = ""
        self.query_one(DataTable).focus()
        self.call_later(self.refresh_rows)

    def action_toggle_failed(self) -> None:
        self.failed_only = not self.failed_only
        self.call_later(self.refresh_rows)

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
