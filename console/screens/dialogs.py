"""Modal dialogs: confirm a destructive action, type a value, show the keys of the current view."""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Input, Static


class ConfirmScreen(ModalScreen[bool]):
    """Names its target; the target was fixed when the key was pressed."""

    BINDINGS = [Binding("y,enter", "confirm", "Yes"), Binding("n,escape", "cancel", "No")]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 70; height: auto; border: thick $error; background: $surface; padding: 1 2; }
    """

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question")
            yield Static("[b]y[/] confirm    [b]n[/] / [b]esc[/] cancel", id="hint")

    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)


class InputScreen(ModalScreen[str | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    InputScreen { align: center middle; }
    InputScreen > Vertical { width: 70; height: auto; border: thick $accent; background: $surface; padding: 1 2; }
    """

    def __init__(self, prompt: str, placeholder: str = ""):
        super().__init__()
        self.prompt = prompt
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.prompt)
            yield Input(placeholder=self.placeholder)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    """The bindings of the view that was focused when `?` was pressed."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 96; height: auto; max-height: 90%; border: thick $accent;
                                  background: $surface; padding: 1 2; }
    """

    def __init__(self, title: str, bindings: list[tuple[str, str, str]]):
        super().__init__()
        self.title_text = title
        self.rows = bindings

    def compose(self) -> ComposeResult:
        lines = [f"[b]{escape(self.title_text)}[/]", ""]
        lines += [f"  [b]{escape(key):<12}[/] {escape(description):<16} [dim]{escape(tooltip)}[/]".rstrip()
                  for key, description, tooltip in self.rows]
        lines += ["", "[dim]esc closes[/]"]
        with VerticalScroll():
            yield Static("\n".join(lines))

    def action_close(self) -> None:
        self.dismiss(None)
