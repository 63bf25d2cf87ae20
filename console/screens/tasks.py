"""Registered tasks (`taskdeck deploy`): each task's project, name and latest version; `enter` starts a run of
the selected one, asking for its inputs as `--name value` (parsed by the engine as `flyte run` parses them),
and opens it."""

from __future__ import annotations

import shlex
import time

from textual.binding import Binding
from textual.widgets import DataTable

from console.screens.dialogs import InputScreen
from console.screens.table_view import RefreshedTableScreen

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


class TasksScreen(RefreshedTableScreen):
    BINDINGS = [*RefreshedTableScreen.BINDINGS,
                Binding("enter", "run_task", "Run", tooltip="Start a run of the selected task (asks for its inputs)")]
    COLUMNS = COLUMNS
    REFRESH_SECONDS = REFRESH_SECONDS
    STATUS_ID, TABLE_ID, WHAT = "tasks-status", "tasks", "tasks"

    async def fetch(self) -> list[dict]:
        return await self.app.client.list_tasks()

    def rows_of(self, tasks: list[dict]) -> dict[str, tuple[str, ...]]:
        return task_rows(tasks)

    def status_of(self, tasks: list[dict], rows) -> str:
        return (f"[b]registered tasks[/] {len(rows)}  (enter runs one)" if rows else
                "[dim]no registered tasks (taskdeck deploy FILE registers a file's tasks)[/]")

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:  # enter on the table
        event.stop()
        self.action_run_task()

    def action_run_task(self) -> None:
        key = self.selected_key()
        if key is None:
            return
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
