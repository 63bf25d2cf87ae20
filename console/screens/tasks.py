"""Registered tasks (`taskdeck deploy`): each task's project, name and latest version; `enter` starts a run of
the selected one, asking for its inputs as `--name value` (parsed by the engine as `flyte run` parses them),
and opens it."""

from __future__ import annotations

import shlex
import time

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from console.screens.dialogs import InputScreen

REFRESH_SECONDS = 2.0
COLUMNS = ("task", "project", "version", "deployed")


def task_rows(tasks: list[dict]) -> dict[str, tuple[str, ...]]:
    """One row per task: its latest version."""
    latest: dict[str, dict] = {}
    for t in tasks:
        key = f"{t['project']}/{t['domain']}/{t['name']}"
        if key not in latest or t["createdAt"] > latest[key]["createdAt"]:
            latest[key] = t
    return {key: (t["name"], f"{t['project']}/{t['domain']}", t["version"],
                  time.strftime("%Y-%m-%d %H:%M", time.localtime(t["createdAt"]))) for key, t in latest.items()}


class TasksScreen(Screen):
    BINDINGS = [Binding("escape", "back", "Back"),
                Binding("enter", "run_task", "Run", tooltip="Start a run of the selected task (asks for its inputs)")]

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[str, ...]] = {}

    def compose(self) -> ComposeResult:
        yield Static("", id="tasks-status")
        yield DataTable(id="tasks", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.set_interval(REFRESH_SECONDS, self.refresh_tasks)
        self.call_later(self.refresh_tasks)

    async def refresh_tasks(self) -> None:
        try:
            tasks = await self.app.client.list_tasks()
        except Exception as exc:  # noqa: BLE001 - a lost engine: say so, keep the last rows
            self.query_one("#tasks-status", Static).update(f"[$warning]tasks unavailable: {escape(str(exc))}[/]")
            return
        rows = task_rows(tasks)
        self.query_one("#tasks-status", Static).update(
            f"[b]registered tasks[/] {len(rows)}  (enter runs one)" if rows else
            "[dim]no registered tasks (taskdeck deploy FILE registers a file's tasks)[/]")
        table = self.query_one(DataTable)
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

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:  # enter on the table
        event.stop()
        self.action_run_task()

    def action_run_task(self) -> None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row is None:
            return
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        project, domain, name = key.split("/", 2)

        async def start(text: str | None) -> None:
            if text is None:
                return
            try:
                args = shlex.split(text)
                run = await self.app.client.run_task(name, project=project, domain=domain, args=args)
            except Exception as exc:  # noqa: BLE001 - a bad input or a refused run: say so, keep the view
                self.notify(str(exc).splitlines()[0], severity="error", timeout=10)
                return
            self.notify(f"started run {run.run_name} of {name}")
            self.app.open_run(run.run_name)

        self.app.push_screen(InputScreen(f"Run {name} ({project}/{domain}): its inputs as --name value",
                                         "--x 3 --flag"), start)

    def action_back(self) -> None:
        self.app.pop_screen()
