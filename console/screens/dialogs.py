"""Modal dialogs: confirm a destructive action, type a value, show the keys of the current view, show a
resource as YAML."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
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


class ChoiceScreen(ModalScreen[str | None]):
    """A question with a few answers, each on its own key; dismissed with the chosen answer's value."""

    DEFAULT_CSS = """
    ChoiceScreen { align: center middle; }
    ChoiceScreen > Vertical { width: 80; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    """

    def __init__(self, question: str, choices: list[tuple[str, str | None, str]]):
        super().__init__()
        self.question = question
        self.choices = choices  # (key, value, what it does)
        for key, value, text in choices:
            self._bindings.bind(key, f"choose({value!r})", text, show=False)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question")
            yield Static("\n".join(f"[b]{escape(key)}[/]  {escape(text)}" for key, _, text in self.choices),
                         id="choices")

    def action_choose(self, value: str | None) -> None:
        self.dismiss(value)


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
        text = Text.assemble((self.title_text, "bold"), "\n\n")
        for key, description, tooltip in self.rows:  # Text, not markup: a key like "[" is not a tag
            text.append_text(Text.assemble("  ", (f"{key:<12}", "bold"), f" {description:<16} ", (tooltip, "dim")))
            text.append("\n")
        text.append("\nesc closes", "dim")
        with VerticalScroll():
            yield Static(text)

    def action_close(self) -> None:
        self.dismiss(None)


class YamlScreen(ModalScreen[None]):
    """Objects as YAML, scrollable (`y` on an action: its TaskAction and what its plugin creates)."""

    BINDINGS = [Binding("escape,y,q", "close", "Close")]
    DEFAULT_CSS = """
    YamlScreen { align: center middle; }
    YamlScreen > VerticalScroll { width: 90%; height: 90%; border: thick $accent; background: $surface;
                                  padding: 0 1; }
    """

    def __init__(self, title: str, text: str):
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll():  # Text, not markup: YAML is full of brackets
            yield Static(Text.assemble((self.title_text, "bold"), "\n\n", self.text, ("\nesc closes", "dim")))

    def action_close(self) -> None:
        self.dismiss(None)
