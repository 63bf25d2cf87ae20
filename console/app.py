"""The TaskDeck console: a Textual app over the client interface (``engine/client``).

It either attaches to the engine serving the data directory (``RemoteClient``) or runs an engine of its
own on the app's event loop (``LocalClient``); the screens cannot tell which. One change feed per app
says what changed; screens re-read only that, at a bounded rate. Quitting with runs still going on the
console's own engine asks what to do with them: hand them to an engine in the background (their task
processes keep running) or abort them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from rich.markup import escape
from textual.app import App
from textual.binding import Binding
from textual.color import Color

from console.commands import JumpCommands
from console.screens.dialogs import ChoiceScreen, ConfirmScreen, HelpScreen, InputScreen
from console.screens.run import RunScreen
from console.screens.runs import RunsScreen
from engine import pygc
from engine.client import Change, EngineClient, EngineUnavailableError, RunNotFoundError

_VARIABLE = re.compile(r"\$([a-z][a-z0-9-]*)")


def cluster_label(backend: dict | None) -> str:
    """The header's word on where the TaskActions live: nothing on the embedded default."""
    if not backend or backend.get("kind") != "kubernetes":
        return ""
    role = f" ({backend['role']})" if backend.get("role") else ""
    return f"kubernetes {backend.get('cluster')} namespace {backend.get('namespace')}{role}"

class TaskDeckApp(App):
    TITLE = "TaskDeck"
    CSS = """
    #counters, #run-title { height: 1; padding: 0 1; background: $panel; }
    #filter { height: 3; }
    #tree { width: 45%; border-right: solid $panel-lighten-2; }
    #tabs { width: 1fr; }
    #detail, #event-list { padding: 0 1; }
    #log-status { height: 1; padding: 0 1; color: $text-muted; }
    """
    COMMANDS = App.COMMANDS | {JumpCommands}
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Keys", key_display="?"),
        Binding("colon", "jump", "Jump", key_display=":"),
    ]

    def __init__(self, engine=None, *, client: EngineClient | None = None, open_run: str | None = None,
                 read_only: bool = False, ascii_only: bool = False, start_engine: bool = True,
                 submit: Callable[[EngineClient], Awaitable[str]] | None = None, engine_args: list[str] = ()):
        super().__init__()
        self.engine = engine  # the console's own engine, or None when attached to another
        self.client = client
        self.open_run_name = open_run
        self.read_only = read_only
        self.ascii_only = ascii_only
        self.start_engine = start_engine
        self.submit = submit  # a run to create once connected; its name becomes submitted_run
        self.submitted_run: str | None = None
        self.engine_args = list(engine_args)
        self.connected = True
        self.storage_error: str | None = None
        self.cluster_label = ""  # on the Kubernetes backend: its cluster and namespace, for the header
        self.startup_error: str | None = None
        self._listeners: list[Callable[[Change], None]] = []
        self._palette_cache: tuple[str, dict[str, str]] | None = None
        self._gc_held = False

    @property
    def ready(self) -> bool:
        return self.client is not None

    async def on_mount(self) -> None:
        try:
            if self.client is None:
                from engine.client.local import LocalClient

                if self.start_engine and not self.engine.started:
                    await self.engine.start()
                self.client = LocalClient(self.engine.services)
            if self.submit is not None:
                self.submitted_run = await self.submit(self.client)
                self.open_run_name = self.submitted_run
            health = await self.client.health()
            self.storage_error = health.get("storageError")
        except Exception as exc:  # noqa: BLE001 - e.g. another engine serves the directory, or bad input
            self.startup_error = str(exc)
            self.exit(return_code=2, message=f"taskdeck: {exc}")
            return
        self.cluster_label = cluster_label(health.get("backend"))
        self.sub_title = self.client.description + (f" · {self.cluster_label}" if self.cluster_label else "")
        if self.engine is None:  # attached: a big run's views are many long-lived objects (see engine/pygc.py)
            pygc.hold()
            self._gc_held = True
        self.run_worker(self._follow_changes(), group="changes", exit_on_error=False)
        await self.push_screen(RunsScreen())
        if self.open_run_name:
            self.open_run(self.open_run_name)

    # ------------------------------------------------------------------ the change feed
    def listen(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """``callback(change)`` for every change-feed item; returns the function that stops it."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    async def _follow_changes(self) -> None:
        async for change in self.client.changes():
            if change.kind == "disconnected":
                self.connected = False
                self.notify(f"disconnected from the {self.client.description}; reconnecting…", severity="warning")
            elif change.kind == "reconnected":
                self.connected = True
                self.notify(f"reconnected to the {self.client.description}")
            elif change.kind == "storage":
                self.storage_error = change.storage_error
            for listener in list(self._listeners):
                listener(change)

    # ------------------------------------------------------------------ leaving
    async def action_quit(self) -> None:
        if self.engine is None or not self.engine.started or self.client is None:
            self.exit()
            return
        active = await self._active_runs()
        if not active:
            await self._stop_engine()
            self.exit()
            return

        async def decide(choice: str | None) -> None:
            if choice == "hand":
                await self._hand_over(len(active))
            elif choice == "abort":
                await self._abort_and_quit(active)

        self.push_screen(ChoiceScreen(
            f"{len(active)} run(s) of this console's engine are still going: "
            f"{', '.join(escape(r) for r in active[:5])}{' …' if len(active) > 5 else ''}",
            [("h", "hand", "hand them to an engine in the background: they keep running (it stops once idle)"),
             ("a", "abort", "abort them, then quit"), ("escape", None, "stay")]), decide)

    async def _active_runs(self) -> list[str]:
        return [r.run_name for r in await self.client.list_runs(limit=100_000) if not r.is_terminal]

    async def _hand_over(self, count: int) -> None:
        from console.background import BackgroundEngineError, start_background_engine

        self.notify("handing the runs over to a background engine…")
        data_dir = self.engine.data_dir
        await self._stop_engine()  # task processes keep running; the next engine adopts them
        try:
            url = await asyncio.to_thread(start_background_engine, data_dir, self.engine_args)
        except BackgroundEngineError as exc:
            self.exit(return_code=1, message=f"taskdeck: {exc}; the runs' processes keep running, and the next "
                                             f"engine on {data_dir} adopts them")
            return
        self.exit(message=f"taskdeck: {count} run(s) handed to the engine at {url}; `taskdeck` attaches to it")

    async def _abort_and_quit(self, runs: list[str]) -> None:
        for run in runs:
            try:
                await self.client.abort(run, "a0", "aborted when the console quit")
            except RunNotFoundError:
                pass
        for _ in range(200):  # until their processes are stopped (at most ~10 s)
            if not await self._active_runs():
                break
            await asyncio.sleep(0.05)
        await self._stop_engine()
        self.exit(message=f"taskdeck: aborted {len(runs)} run(s)")

    async def on_unmount(self) -> None:
        await self._stop_engine()  # however the app ends (quit, exit, a test harness), its own engine stops
        if self.client is not None and self.engine is None:
            await self.client.close()
        if self._gc_held:
            self._gc_held = False
            pygc.release()

    async def _stop_engine(self) -> None:
        if self.engine is not None and self.start_engine and self.engine.started:
            await self.engine.stop()  # a clean shutdown: in-flight work finishes, writes are committed

    # ------------------------------------------------------------------ looks
    def themed(self, markup: str) -> str:
        """Resolve $theme-variables in markup for widgets that parse Rich markup (DataTable, Tree)."""
        palette = self._palette()
        return _VARIABLE.sub(lambda m: palette.get(m.group(1), m.group(0)), markup)

    def _palette(self) -> dict[str, str]:
        """$variable → colour for the current theme, computed once per theme (it is not cheap)."""
        if self._palette_cache is None or self._palette_cache[0] != self.theme:
            resolved = {}
            for name, value in self.get_css_variables().items():
                try:
                    resolved[name] = Color.parse(value).hex
                except Exception:  # noqa: BLE001 - not a colour: leave such text unstyled
                    resolved[name] = "default"
            self._palette_cache = (self.theme, resolved)
        return self._palette_cache[1]

    def status_markup(self) -> str:
        """What is wrong with the connection or storage, for a screen's header (empty when all is well)."""
        if not self.connected:
            return f"[b $error]disconnected from the {escape(self.client.description)}; reconnecting…[/]"
        if self.storage_error:
            return f"[b $error]storage unavailable: {escape(self.storage_error)}[/]"
        return ""

    # ------------------------------------------------------------------ navigation
    def open_run(self, run_name: str, action: str | None = None) -> None:
        """Show a run: the one already open stays; another run's screen is replaced, so esc goes back to
        the runs, not through every jump."""
        screen = self.screen
        if isinstance(screen, RunScreen):
            if screen.run_name == run_name:
                if action:
                    screen.select_action(action)
                return
            self.switch_screen(RunScreen(run_name, select=action))
            return
        self.push_screen(RunScreen(run_name, select=action))

    def action_help(self) -> None:
        """The keys of the focused widget, then its screen's, then the app's: what works right here."""
        screen = self.screen
        rows: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        focused = screen.focused
        # Our own widgets' keys (the tree's folding); Textual's built-in cursor keys would only crowd the list.
        sources = [focused] if focused is not None and type(focused).__module__.startswith("console.") else []
        sources += [screen, self]
        for node in sources:
            for binding in getattr(node, "BINDINGS", []):
                if not isinstance(binding, Binding) or binding.key in seen:
                    continue
                if node.check_action(binding.action, ()) is False:  # e.g. hidden by --read-only
                    continue
                seen.add(binding.key)
                rows.append((binding.key_display or binding.key, binding.description, binding.tooltip or ""))
        self.push_screen(HelpScreen(f"Keys: {type(screen).__name__.replace('Screen', '').lower()} view", rows))

    def action_workers(self) -> None:
        from console.screens.workers import WorkersScreen

        if not isinstance(self.screen, WorkersScreen):
            self.push_screen(WorkersScreen())

    def action_triggers(self) -> None:
        from console.screens.triggers import TriggersScreen

        if not isinstance(self.screen, TriggersScreen):
            self.push_screen(TriggersScreen())

    def action_tasks(self) -> None:
        from console.screens.tasks import TasksScreen

        if not isinstance(self.screen, TasksScreen):
            self.push_screen(TasksScreen())

    def action_jump(self) -> None:
        async def jump(value: str | None) -> None:
            run, _, action = (value or "").strip().partition("/")
            if not run:
                return
            if run in ("workers", "pools"):  # k9s-style: a view by name
                self.action_workers()
                return
            if run in ("triggers", "schedules"):
                self.action_triggers()
                return
            if run in ("tasks", "deployed"):
                self.action_tasks()
                return
            try:
                run = await self.resolve_run(run)
            except (LookupError, ValueError, EngineUnavailableError) as exc:
                self.notify(str(exc), severity="error")
                return
            self.open_run(run, action or None)

        self.push_screen(InputScreen("Jump to a run or an action (RUN or RUN/ACTION; a unique prefix will do), or "
                                     "`workers`, `tasks` or `triggers`:",
                                     "r…/a0"), jump)

    async def resolve_run(self, text: str) -> str:
        """The run named ``text``, or the only run whose name starts with it."""
        try:
            return (await self.client.get_run(text)).run_name
        except (RunNotFoundError, ValueError):
            pass
        matches = [r.run_name for r in await self.client.list_runs(limit=100_000) if r.run_name.startswith(text)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise RunNotFoundError(f"no run is named {text!r} or starts with it")
        raise RunNotFoundError(f"{len(matches)} runs start with {text!r}: {', '.join(matches[:4])}…; type more")

    # ------------------------------------------------------------------ engine actions
    def confirm_abort(self, run_name: str, action_name: str) -> None:
        target = run_name if action_name == "a0" else f"{run_name}/{action_name}"
        what = "the whole run" if action_name == "a0" else "this action and its subtree"

        async def decide(confirmed: bool | None) -> None:
            if not confirmed:
                return
            try:
                await self.client.abort(run_name, action_name, reason="aborted from the console")
                self.notify(f"abort requested for {target}")
            except Exception as exc:  # noqa: BLE001 - say why, keep the console alive
                self.notify(f"cannot abort {target}: {exc}", severity="error")

        self.push_screen(ConfirmScreen(f"Abort [b]{escape(target)}[/] ({what})?"), decide)

    def confirm_evict(self, task_label: str, key: str) -> None:
        async def decide(confirmed: bool | None) -> None:
            if not confirmed:
                return
            try:
                evicted = await self.client.evict_cache([key])
                self.notify(f"evicted the cache entry of {task_label}" if evicted
                            else f"{task_label} has no cache entry (already evicted?)")
            except Exception as exc:  # noqa: BLE001
                self.notify(f"cannot evict: {exc}", severity="error")

        self.push_screen(ConfirmScreen(f"Evict the cache entry of [b]{escape(task_label)}[/]? The next run with "
                                       "these inputs computes it again."), decide)

    def retry(self, run_name: str, action_name: str) -> None:
        async def go() -> None:
            try:
                names = await self.client.retry(run_name, action_name, who="console")
                self.notify(f"retrying {run_name}: {', '.join(names)}")
            except Exception as exc:  # noqa: BLE001
                self.notify(str(exc), severity="error")

        self.run_worker(go(), exclusive=False)

    def signal(self, run_name: str, action_name: str, label: str) -> None:
        async def ask() -> None:
            try:
                condition = await self.client.condition(run_name, action_name)
            except Exception as exc:  # noqa: BLE001 - e.g. already cleaned up
                self.notify(str(exc), severity="error")
                return
            lines = [f"Condition [b]{escape(condition.name or label)}[/] expects "
                     f"[b]{escape(condition.type_name.lower() or 'a value')}[/]"]
            for text in (condition.prompt, condition.description):
                if text:
                    lines.append(escape(text))
            self.push_screen(InputScreen("\n".join(lines), _PLACEHOLDERS.get(condition.type_name, "")), send)

        async def send(value: str | None) -> None:
            if value is None:
                return
            try:
                await self.client.signal(run_name, action_name, value, by="console")
                self.notify(f"signalled {label} = {value}")
            except Exception as exc:  # noqa: BLE001
                self.notify(str(exc), severity="error")

        self.run_worker(ask(), exclusive=False)


_PLACEHOLDERS = {"BOOLEAN": "true or false", "INTEGER": "a whole number", "FLOAT": "a number", "STRING": "text"}
