"""The engine's reusable workers (by pool), its quotas and fork servers, refreshed every second through the
client."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

REFRESH_SECONDS = 1.0
COLUMNS = ("environment", "pool", "worker", "pid", "state", "running", "served", "cpu s", "idle s")


def worker_rows(listing: dict) -> dict[str, tuple[str, ...]]:
    """Table rows by key: one per worker, or one per pool that has none (waiting for its first)."""
    rows: dict[str, tuple[str, ...]] = {}
    for pool in listing.get("pools") or []:
        env, key = pool["environment"], pool["pool"]
        for w in pool["workers"]:
            cpu = w.get("cpuSeconds")
            rows[f"{key}/{w['worker']}"] = (env, key, w["worker"], str(w.get("pid") or "-"), w["state"],
                                            f"{w['running']}/{pool['concurrency']}", str(w["served"]),
                                            f"{cpu:.1f}" if cpu is not None else "-", f"{w['idleSeconds']:.0f}")
        if not pool["workers"]:
            state = "cannot start" if pool.get("lastError") else "starting" if pool["waiting"] else "none"
            rows[key] = (env, key, "-", "-", state, "-", "-", "-", "-")
    return rows


def pool_summary(listing: dict) -> str:
    pools = listing.get("pools") or []
    if not pools:
        lines = ["[dim]no reusable workers (tasks of a flyte.ReusePolicy environment start them)[/]"]
    else:
        lines = []
        for pool in pools:
            live = sum(1 for w in pool["workers"] if w["state"] in ("starting", "ready"))
            error = f"  [$error]{escape(pool['lastError'].splitlines()[0][:60])}[/]" if pool.get("lastError") else ""
            lines.append(f"[b]{escape(pool['environment'])}[/] {pool['pool']}  workers {live} of "
                         f"{pool['minReplicas']}-{pool['maxReplicas']}, {pool['concurrency']} action(s) each, "
                         f"{pool['waiting']} waiting, idle ttl {pool['idleTtlSeconds']:.0f} s, scale-down "
                         f"{pool['scaledownTtlSeconds']:.0f} s, scope {pool['scope']}{error}")
    for quota in listing.get("quotas") or []:
        runs = ", ".join(f"{run} {n}" for run, n in sorted(quota.get("runs", {}).items()))
        lines.append(f"quota [b]{escape(quota['name'])}[/]  {quota['inUse']} of {quota['limit']} running, "
                     f"{quota['waiting']} waiting{'  (' + escape(runs) + ')' if runs else ''}")
    servers = listing.get("forkServers") or []
    if servers:
        lines.append("fork servers: " + ", ".join(
            f"{z['key']} (pid {z.get('pid')}, {z.get('forks')} forks{'' if z.get('alive') else ', gone'})"
            for z in servers))
    return "\n".join(lines)


class WorkersScreen(Screen):
    BINDINGS = [Binding("escape", "back", "Back")]
    DEFAULT_CSS = """
    #pools { height: auto; padding: 0 1; background: $panel; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", id="pools")
        yield DataTable(id="workers", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in COLUMNS:
            table.add_column(column, key=column)
        self.rows: dict[str, tuple[str, ...]] = {}
        self.set_interval(REFRESH_SECONDS, self.refresh_workers)
        self.call_later(self.refresh_workers)

    async def refresh_workers(self) -> None:
        try:
            listing = await self.app.client.list_workers()
        except Exception as exc:  # noqa: BLE001 - a lost engine: say so, keep the last rows
            self.query_one("#pools", Static).update(f"[$warning]workers unavailable: {escape(str(exc))}[/]")
            return
        self.apply(listing)

    def apply(self, listing: dict) -> None:
        """Render only what changed: rows added, removed, or cells that differ."""
        self.query_one("#pools", Static).update(pool_summary(listing))
        table = self.query_one(DataTable)
        rows = worker_rows(listing)
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

    def action_back(self) -> None:
        self.app.pop_screen()
