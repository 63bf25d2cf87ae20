"""The engine's triggers: each one's task, schedule state and revision, refreshed every two seconds through
the client; `a` switches the selected trigger on or off (a new revision)."""

from __future__ import annotations

import time

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

REFRESH_SECONDS = 2.0
COLUMNS = ("trigger", "project", "task", "active", "revision", "fired up to")


def trigger_rows(triggers: list[dict]) -> dict[str, tuple[str, ...]]:
    rows = {}
    for t in triggers:
        key = f"{t['project']}/{t['domain']}/{t['name']}"
        rows[key] = (t["name"], f"{t['project']}/{t['domain']}", f"{t['task']} {t['taskVersion']}",
                     "yes" if t["active"] else "no", str(t["revision"]),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(t["cursor"])))
    return rows


class TriggersScreen(Screen):
    BINDINGS = [Binding("escape", "back", "Back"),
                Binding("a", "toggle_active", "Activate/deactivate",
                        tooltip="Switch the selected trigger on or off (a new revision)")]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[str, ...]] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="triggers-status")
        yield DataTable(id="triggers", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.set_interval(REFRESH_SECONDS, self.refresh_triggers)
        self.call_later(self.refresh_triggers)

    async def refresh_triggers(self) -> None:
        try:
            triggers = await self.app.client.list_triggers()
        except Exception as exc:  # noqa: BLE001 - a lost engine: say so, keep the last rows
            self.query_one("#triggers-status", Static).update(f"[$warning]triggers unavailable: {escape(str(exc))}[/]")
            return
        self.apply(triggers)

    def apply(self, triggers: list[dict]) -> None:
        """Render only what changed."""
        active = sum(1 for t in triggers if t["active"])
        self.query_one("#triggers-status", Static).update(
            f"[b]triggers[/] {len(triggers)}, {active} active" if triggers else
            "[dim]no triggers (a deployed task's triggers= appear here: taskdeck deploy FILE)[/]")
        table = self.query_one(DataTable)
        rows = trigger_rows(triggers)
        for key in [k for k in self.rows if k not in rows]:
            table.remove_row(key)
        for key, row in rows.items():
            old = self.rows.get(key)
            if old is None:
                table.add_row(*row, key=key)
            elif old != row:
                for column, before, after in zip(COLUMNS, old, row):
                    if before != after:
                        table.update_cell(key, column, after)
        self.rows = rows

    async def action_toggle_active(self) -> None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row is None:
            return
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        project, domain, name = key.split("/", 2)
        try:
            record = await self.app.client.set_trigger_active(name, self.rows[key][3] != "yes", project=project,
                                                              domain=domain)
        except Exception as exc:  # noqa: BLE001 - refused or the engine is gone: say so
            self.notify(str(exc), severity="error")
            return
        self.notify(f"trigger {name} is {'active' if record['active'] else 'inactive'} (revision {record['revision']})")
        await self.refresh_triggers()

    def action_back(self) -> None:
        self.app.pop_screen()
