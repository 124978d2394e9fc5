"""The left side: the conversation, newest at the bottom, the reply growing as it streams.

`ChatLog` is a `VerticalScroll` *anchored* to the bottom: it follows new lines until the user
scrolls up to read, and follows again once they scroll back down.

Everything here is drawn as Rich `Text` (never parsed as markup) after `visible`
(text/terminal.py): a reply, a note or an error message may hold whatever a checkpoint from a
stranger spells, and none of it may reach the terminal as a control or format character.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Static

from ..text.terminal import visible


class UserLine(Static):
    """A question, as the user typed it (after the session's cleaning)."""

    DEFAULT_CSS = """
    UserLine { margin: 1 0 0 0; color: $text; }
    """

    def __init__(self, text: str) -> None:
        super().__init__(Text.assemble(("you › ", "bold cyan"), visible(text)))


class BotReply(Static):
    """The bot's reply; `show` redraws it as characters arrive."""

    DEFAULT_CSS = """
    BotReply { color: $text; }
    BotReply.-streaming { color: $text-muted; }
    """

    def __init__(self) -> None:
        super().__init__(Text("bot › ", style="bold green"))
        self.text = ""
        self.add_class("-streaming")

    def show(self, text: str, *, streaming: bool = True, note: str = "") -> None:
        self.text = text  # exactly as generated; the screen gets `visible(text)`
        self.set_class(streaming, "-streaming")
        line = Text.assemble(("bot › ", "bold green"), visible(text))
        if streaming:
            line.append("▌", style="green")
        if note:
            line.append(f"  {visible(note)}", style="italic dim")
        self.update(line)


class Divider(Static):
    """A line across the log: where the memory was zeroed, or a notice worth keeping in view."""

    DEFAULT_CSS = """
    Divider { margin: 1 0 0 0; color: $warning; text-align: center; }
    """

    def __init__(self, text: str) -> None:
        super().__init__(Text(visible(text)))  # may quote a question: plain text, no markup


class Comparison(Horizontal):
    """ctrl+d: the same question answered with the carried memory and from a zeroed state."""

    DEFAULT_CSS = """
    Comparison { height: auto; margin: 1 0 0 0; }
    Comparison > Static {
        width: 1fr; height: auto; padding: 0 1; border: round $primary;
    }
    Comparison > .zeroed { border: round $warning; }
    """

    def __init__(self, question: str, carried: str, carried_was_on: bool, zeroed: str) -> None:
        super().__init__()
        self.question, self.carried, self.zeroed = question, carried, zeroed
        self.carried_was_on = carried_was_on

    def compose(self):
        left = Static(Text(visible(self.carried) or "(empty reply)"), classes="carried")
        left.border_title = "memory carried" if self.carried_was_on else "as asked (memory off)"
        right = Static(Text(visible(self.zeroed) or "(empty reply)"), classes="zeroed")
        right.border_title = "zeroed state"
        yield left
        yield right


class ChatLog(VerticalScroll):
    """The scrolling conversation."""

    DEFAULT_CSS = """
    ChatLog { padding: 0 1; scrollbar-size-vertical: 1; }
    ChatLog > .error { color: $error; margin: 1 0; }
    ChatLog > .hint { color: $text-muted; margin: 1 0 0 0; }
    """

    def on_mount(self) -> None:
        self.anchor()

    def add_user(self, text: str) -> None:
        self.mount(UserLine(text))

    def add_reply(self) -> BotReply:
        reply = BotReply()
        self.mount(reply)
        return reply

    def add_divider(self, text: str) -> None:
        self.mount(Divider(f"── {text} ──"))

    def add_comparison(self, question: str, carried: str, carried_was_on: bool, zeroed: str) -> None:
        self.mount(Divider(f"“{question}” again, carried vs zeroed"))
        self.mount(Comparison(question, carried, carried_was_on, zeroed))

    def add_note(self, text: str, *, error: bool = False) -> None:
        self.mount(Static(Text(visible(text)), classes="error" if error else "hint"))

    def clear(self) -> None:
        self.remove_children()
