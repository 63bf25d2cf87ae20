"""The TaskDeck console: a Textual app with the engine running inside it, on the app's own event loop.

Abort, retry and signal go through the engine's runs service, exactly as the headless engine's API does.
"""

from __future__ import annotations

import re

from rich.markup import escape
from textual.app import App
from textual.binding import Binding
from textual.color import Color

from console.commands import JumpCommands
from console.screens.dialogs import ConfirmScreen, HelpScreen, InputScreen
from console.screens.run import RunScreen
from console.screens.runs import RunsScreen
from engine.engine import Engine


_VARIABLE = re.compile(r"\$([a-z][a-z0-9-]*)")


class TaskDeckApp(App):
    TITLE = "TaskDeck"
    CSS = """
    #counters, #run-title { height: 1; padding: 0 1; background: $panel; }
    #filter { height: 3; }
    #tree { width: 45%; border-right: solid $panel-lighten-2; }
    #tabs { width: 1fr; }
    #detail, #event-list { padding: 0 1; }
    """
    COMMANDS = App.COMMANDS | {JumpCommands}
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Keys", key_display="?"),
        Binding("colon", "jump", "Jump", key_display=":"),
    ]

    def __init__(self, engine: Engine, *, open_run: str | None = None, read_only: bool = False,
                 ascii_only: bool = False, start_engine: bool = True):
        super().__init__()
        self.engine = engine
        self.open_run_name = open_run
        self.read_only = read_only
        self.ascii_only = ascii_only
        self.start_engine = start_engine
        self.startup_error: str | None = None
        self._palette_cache: tuple[str, dict[str, str]] | None = None

    async def on_mount(self) -> None:
        if self.start_engine and not self.engine.started:
            try:
                await self.engine.start()
            except Exception as exc:  # noqa: BLE001 - e.g. another engine serves the directory
                self.startup_error = str(exc)
                self.exit(return_code=2, message=f"taskdeck: {exc}")
                return
        await self.push_screen(RunsScreen())
        if self.open_run_name:
            self.open_run(self.open_run_name)

    async def action_quit(self) -> None:
        await self._stop_engine()
        self.exit()

    async def on_unmount(self) -> None:
        await self._stop_engine()  # however the app ends (quit, exit, a test harness), the engine stops

    async def _stop_engine(self) -> None:
        if self.start_engine and self.engine.started:
            await self.engine.stop()  # a clean shutdown: in-flight work finishes, writes are committed

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

    def open_run(self, run_name: str, action: str | None = None) -> None:
        """Show a run (the one already open stays, no second copy), optionally with an action selected."""
        screen = self.screen
        if isinstance(screen, RunScreen) and screen.run_name == run_name:
            if action:
                screen.select_action(action)
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

    def action_jump(self) -> None:
        async def jump(value: str | None) -> None:
            run, _, action = (value or "").strip().partition("/")
            if not run:
                return
            try:
                await self.engine.runs.get_run(run)
            except LookupError as exc:
                self.notify(str(exc), severity="error")
                return
            self.open_run(run, action or None)

        self.push_screen(InputScreen("Jump to a run or an action (RUN or RUN/ACTION):", "r…/a0"), jump)

    # ------------------------------------------------------------------ engine actions
    def confirm_abort(self, run_name: str, action_name: str) -> None:
        target = run_name if action_name == "a0" else f"{run_name}/{action_name}"
        what = "the whole run" if action_name == "a0" else "this action and its subtree"

        async def decide(confirmed: bool | None) -> None:
            if not confirmed:
                return
            try:
                await self.engine.runs.abort_action(run_name, action_name, reason="aborted from the console")
                self.notify(f"abort requested for {target}")
            except Exception as exc:  # noqa: BLE001 - say why, keep the console alive
                self.notify(f"cannot abort {target}: {exc}", severity="error")

        self.push_screen(ConfirmScreen(f"Abort [b]{escape(target)}[/] ({what})?"), decide)

    def confirm_evict(self, task_label: str, key: str) -> None:
        async def decide(confirmed: bool | None) -> None:
            if not confirmed:
                return
            try:
                evicted = await self.engine.runs.evict_cache([key])
                self.notify(f"evicted the cache entry of {task_label}" if evicted
                            else f"{task_label} has no cache entry (already evicted?)")
            except Exception as exc:  # noqa: BLE001
                self.notify(f"cannot evict: {exc}", severity="error")

        self.push_screen(ConfirmScreen(f"Evict the cache entry of [b]{escape(task_label)}[/]? The next run with "
                                       "these inputs computes it again."), decide)

    def retry(self, run_name: str, action_name: str) -> None:
        async def go() -> None:
            try:
                names = await self.engine.runs.retry_action(run_name, action_name, who="console")
                self.notify(f"retrying {run_name}: {', '.join(names)}")
            except Exception as exc:  # noqa: BLE001
                self.notify(str(exc), severity="error")

        self.run_worker(go(), exclusive=False)

    def signal(self, run_name: str, action_name: str, label: str) -> None:
        async def send(value: str | None) -> None:
            if value is None:
                return
            try:
                await self.engine.runs.signal_text(run_name, action_name, value, signalled_by="console")
                self.notify(f"signalled {label} = {value}")
            except Exception as exc:  # noqa: BLE001
                self.notify(str(exc), severity="error")

        self.push_screen(InputScreen(f"Value for condition [b]{escape(label)}[/] (bool, int, float or str):"), send)
