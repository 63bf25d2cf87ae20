"""Command-palette entries (ctrl+p): jump to any run, and on a run screen to any of its actions."""

from __future__ import annotations

import itertools
from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from engine.client import ActionPhase

MAX_RUNS = 500
MAX_ACTIONS = 2000  # of the open run, in tree order: the palette stays quick on a 10,000-action run


class JumpCommands(Provider):
    async def _targets(self) -> list[tuple[str, str, object]]:
        """(text to match, help line, callback) for every run, then for the open run's actions."""
        from console.screens.run import RunScreen  # the screens import this module's app

        app = self.app
        targets: list[tuple[str, str, object]] = []
        if not app.ready:
            return targets
        screen = self.screen
        if isinstance(screen, RunScreen):
            records = (node.record for node in screen.model.nodes.values() if node.record is not None)
            for record in itertools.islice(records, MAX_ACTIONS):
                name, label = record.name, record.short_name or record.task_name or record.name
                targets.append((f"action {name} {label}", f"{ActionPhase(record.phase).name} in {screen.run_name}",
                                partial(screen.select_action, name)))
        for run in await app.client.list_runs(limit=MAX_RUNS):
            targets.append((f"run {run.run_name} {run.task_name or ''}".rstrip(),
                            f"{ActionPhase(run.phase).name}  {run.project}/{run.domain}",
                            partial(app.open_run, run.run_name)))
        return targets

    async def discover(self) -> Hits:
        for text, help_text, callback in (await self._targets())[:20]:
            yield DiscoveryHit(text, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for text, help_text, callback in await self._targets():
            score = matcher.match(text)
            if score > 0:
                yield Hit(score, matcher.highlight(text), callback, text=text, help=help_text)
