"""The engine's triggers: each one's task, schedule state and revision, refreshed every two seconds through
the client; `a` switches the selected trigger on or off (a new revision)."""

from __future__ import annotations

import time

from textual.binding import Binding

from console.screens.table_view import RefreshedTableScreen

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


class TriggersScreen(RefreshedTableScreen):
    BINDINGS = [*RefreshedTableScreen.BINDINGS,
                Binding("a", "toggle_active", "Activate/deactivate",
                        tooltip="Switch the selected trigger on or off (a new revision)")]
    COLUMNS = COLUMNS
    REFRESH_SECONDS = REFRESH_SECONDS
    STATUS_ID, TABLE_ID, WHAT = "triggers-status", "triggers", "triggers"

    async def fetch(self) -> list[dict]:
        return await self.app.client.list_triggers()

    def rows_of(self, triggers: list[dict]) -> dict[str, tuple[str, ...]]:
        return trigger_rows(triggers)

    def status_of(self, triggers: list[dict], rows) -> str:
        active = sum(1 for t in triggers if t["active"])
        return (f"[b]triggers[/] {len(triggers)}, {active} active" if triggers else
                "[dim]no triggers (a deployed task's triggers= appear here: taskdeck deploy FILE)[/]")

    async def action_toggle_active(self) -> None:
        key = self.selected_key()
        if key is None:
            return
        project, domain, name = key.split("/", 2)
        try:
            record = await self.app.client.set_trigger_active(name, self.rows[key][3] != "yes", project=project,
                                                              domain=domain)
        except Exception as exc:  # noqa: BLE001 - refused or the engine is gone: say so
            self.notify(str(exc), severity="error")
            return
        self.notify(f"trigger {name} is {'active' if record['active'] else 'inactive'} (revision {record['revision']})")
        await self.refresh_view()
