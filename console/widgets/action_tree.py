"""A virtual action tree: a Line-API widget over ActionTreeModel that renders only the lines on screen.

Textual's Tree queues one repaint callback per relabelled node and rebuilds every line on any structural
change; with 10,000 live actions that kept a keypress waiting behind thousands of callbacks. Here a tick
costs what changed: labels are made lazily for visible lines and cached by node version.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from console.tree_model import ActionTreeModel, Changes

LINE_CACHE_SIZE = 512


class ActionTree(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    ActionTree { background: $surface; }
    ActionTree > .action-tree--guides { color: $text-muted; }
    ActionTree > .action-tree--cursor { background: $block-cursor-blurred-background; }
    ActionTree:focus > .action-tree--cursor { background: $block-cursor-background;
                                              color: $block-cursor-foreground; text-style: bold; }
    """
    COMPONENT_CLASSES = {"action-tree--guides", "action-tree--cursor"}
    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", key_display="↑ k", show=False),
        Binding("down,j", "cursor(1)", "Down", key_display="↓ j", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "cursor_to(0)", "First", show=False),
        Binding("end", "cursor_to(-1)", "Last", show=False),
        Binding("space", "toggle", "Fold/unfold", key_display="space", show=False,
                tooltip="Open or fold the selected node's children"),
        Binding("right", "set_expanded(True)", "Open", key_display="→", show=False),
        Binding("left", "fold_or_parent", "Fold / parent", key_display="←", show=False),
    ]

    class Highlighted(Message):
        """The cursor moved to another node (an action name or a group key)."""

        def __init__(self, tree: ActionTree, key: str) -> None:
            super().__init__()
            self.tree = tree
            self.key = key

        @property
        def control(self) -> ActionTree:
            return self.tree

    def __init__(self, model: ActionTreeModel, label: Callable[[str], Text], *, id: str | None = None):
        super().__init__(id=id)
        self.model = model
        self._label = label
        self.cursor_line = 0
        self.cursor_key: str | None = None
        self._cache: dict[tuple, Strip] = {}

    # ------------------------------------------------------------------ updates
    def apply(self, changes: Changes) -> None:
        """Repaint after a tick: relayout on structural changes, else only if a visible line changed."""
        if changes.structure:
            self._relayout()
            return
        top = int(self.scroll_offset.y)
        lines = self.model.lines
        visible = {key for key, _ in lines[top:top + self.size.height]}
        if visible & changes.keys:
            self.refresh()

    def _relayout(self) -> None:
        lines = self.model.lines
        self.virtual_size = Size(self.size.width, len(lines))
        if self.cursor_key is not None:  # the cursor stays on its node, or the ancestor that folded it
            key = self.model.visible_ancestor(self.cursor_key)
            index = self.model.line_of(key) if key is not None else None
            self.cursor_line = index if index is not None else min(self.cursor_line, max(len(lines) - 1, 0))
        self._sync_cursor(scroll=False)
        self.refresh()

    def _sync_cursor(self, scroll: bool = True) -> None:
        lines = self.model.lines
        if not lines:
            self.cursor_key = None
            return
        self.cursor_line = min(max(self.cursor_line, 0), len(lines) - 1)
        key = lines[self.cursor_line][0]
        if key != self.cursor_key:
            self.cursor_key = key
            self.post_message(self.Highlighted(self, key))
        if scroll:
            top, height = int(self.scroll_offset.y), self.scrollable_content_region.height
            if self.cursor_line < top:
                self.scroll_to(y=self.cursor_line, animate=False, immediate=True)
            elif height and self.cursor_line >= top + height:
                self.scroll_to(y=self.cursor_line - height + 1, animate=False, immediate=True)

    def select(self, key: str) -> bool:
        """Move the cursor to ``key``, opening its ancestors; False if the tree has no such node."""
        node = self.model.nodes.get(key)
        if node is None:
            return False
        parent, opened = node.parent, False
        while parent is not None:
            opened = self.model.set_expanded(parent, True) or opened
            parent = self.model.nodes[parent].parent
        if opened:
            self._relayout()
        index = self.model.line_of(key)
        self.cursor_line = index if index is not None else self.cursor_line
        self._sync_cursor()
        self.refresh()
        return True

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.model.lines))
        self._cache.clear()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()  # a theme change restyles every line

    # ------------------------------------------------------------------ rendering
    def render_line(self, y: int) -> Strip:
        index = y + int(self.scroll_offset.y)
        width = self.scrollable_content_region.width or self.size.width
        lines = self.model.lines
        base = self.rich_style
        if index >= len(lines):
            return Strip.blank(width, base)
        key, guide = lines[index]
        node = self.model.nodes[key]
        is_cursor = index == self.cursor_line
        cache_key = (key, node.version, node.expanded, guide, is_cursor, width, self.has_focus)
        strip = self._cache.get(cache_key)
        if strip is None:
            strip = self._render(key, guide, node.expanded, bool(node.children), is_cursor, width, base)
            if len(self._cache) >= LINE_CACHE_SIZE:
                self._cache.clear()
            self._cache[cache_key] = strip
        return strip

    def _render(self, key: str, guide: str, expanded: bool, has_children: bool, is_cursor: bool, width: int,
                base: Style) -> Strip:
        text = Text(no_wrap=True, overflow="ellipsis", end="")
        text.append(guide, self.get_component_rich_style("action-tree--guides", partial=True))
        if has_children:
            text.append("▼ " if expanded else "▶ ")
        text.append_text(self._label(key))
        if is_cursor:
            text.stylize(self.get_component_rich_style("action-tree--cursor", partial=True))
        text.truncate(width, overflow="ellipsis")
        segments = list(text.render(self.app.console))
        return Strip(Segment.apply_style(segments, base)).adjust_cell_length(width, base)

    # ------------------------------------------------------------------ keys and mouse
    def action_cursor(self, step: int) -> None:
        self.cursor_line += step
        self._sync_cursor()
        self.refresh()

    def action_cursor_to(self, index: int) -> None:
        self.cursor_line = index if index >= 0 else len(self.model.lines) - 1
        self._sync_cursor()
        self.refresh()

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(self.scrollable_content_region.height - 1, 1))

    def action_toggle(self) -> None:
        if self.cursor_key is not None and self.model.toggle(self.cursor_key):
            self._relayout()

    def action_set_expanded(self, expanded: bool) -> None:
        if self.cursor_key is not None and self.model.set_expanded(self.cursor_key, expanded):
            self._relayout()

    def action_fold_or_parent(self) -> None:
        key = self.cursor_key
        if key is None:
            return
        node = self.model.nodes[key]
        if node.children and node.expanded:
            self.action_set_expanded(False)
        elif node.parent is not None:
            self.select(node.parent)

    async def _on_click(self, event: Click) -> None:
        index = event.y + int(self.scroll_offset.y)
        if 0 <= index < len(self.model.lines):
            self.cursor_line = index
            self._sync_cursor()
            self.refresh()
