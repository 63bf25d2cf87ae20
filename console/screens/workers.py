"""The engine's reusable workers (by pool), its quotas and fork servers, refreshed every second through the
client."""

from __future__ import annotations

from rich.markup import escape

from console.screens.table_view import RefreshedTableScreen

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


class WorkersScreen(RefreshedTableScreen):
    DEFAULT_CSS = """
    #pools { height: auto; padding: 0 1; background: $panel; }
    """
    COLUMNS = COLUMNS
    REFRESH_SECONDS = REFRESH_SECONDS
    STATUS_ID, TABLE_ID, WHAT = "pools", "workers", "workers"

    async def fetch(self) -> dict:
        return await self.app.client.list_workers()

    def rows_of(self, listing: dict) -> dict[str, tuple[str, ...]]:
        return worker_rows(listing)

    def status_of(self, listing: dict, rows) -> str:
        return pool_summary(listing)
