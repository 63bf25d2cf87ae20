"""A view that is a summary line and a table, re-read through the client every few seconds and rendered as a
diff (rows added, removed, or the cells that changed), as the workers, tasks and triggers views are."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static


class RefreshedTableScreen(Screen):
    BINDINGS = [Binding("escape", "back", "Back")]
    COLUMNS: tuple[str, ...] = ()
    REFRESH_SECONDS = 2.0
    STATUS_ID = "status"
    TABLE_ID = "table"
    WHAT = "rows"  # what the view shows, for "... unavailable"

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[str, ...]] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id=self.STATUS_ID)
        yield DataTable(id=self.TABLE_ID, cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in self.COLUMNS:
            table.add_column(column, key=column)
        self.set_interval(self.REFRESH_SECONDS, self.refresh_view)
        self.call_later(self.refresh_view)

    async def fetch(self):
        """What the view shows, read through the client."""
        raise NotImplementedError

    def rows_of(self, data) -> dict[str, tuple[str, ...]]:
        raise NotImplementedError

    def status_of(self, data, rows: dict[str, tuple[str, ...]]) -> str:
        raise NotImplementedError

    async def refresh_view(self) -> None:
        try:
            data = await self.fetch()
        except Exception as exc:  # noqa: BLE001 - a lost engine: say so, keep the last rows
            self.query_one(f"#{self.STATUS_ID}", Static).update(
                f"[$warning]{self.WHAT} unavailable: {escape(str(exc))}[/]")
            return
        self.apply(data)

    def apply(self, data) -> None:
        rows = self.rows_of(data)
        self.query_one(f"#{self.STATUS_ID}", Static).update(self.status_of(data, rows))
        table = self.query_one(DataTable)
        for key in [k for k in self.rows if k not in rows]:
            table.remove_row(key)
        for key, row in rows.items():
            old = self.rows.get(key)
            if old is None:
                table.add_row(*row, key=key)
            elif old != row:
                for column, before, after in zip(self.COLUMNS, old, row):
                    if before != after:
                        table.update_cell(key, column, after)
        self.rows = rows

    def selected_key(self) -> str | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row is None:
            return None
        return table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value

    def action_back(self) -> None:
        self.app.pop_screen()
