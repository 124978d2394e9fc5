"""F1: what the panel shows, the keys, and a dialogue to try.

The page fits the smallest supported terminal, 80×24, whole: at most `MAX_LINES` lines of at most
`MAX_WIDTH` characters, laid out by hand (a Markdown page spends a third of that on margins). On
a smaller terminal the box scrolls.

`HELP` is the page for a checkpoint with the referent head; for one without it, the Memory
section is hidden and `NO_MEMORY_HELP` says why in the same two lines (`help_text`).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

MAX_WIDTH = 76  # 80 columns less the box's border and padding
MAX_LINES = 22  # 24 rows less the box's border

HELP = """\
A character-level recurrent network. It answers [i]Where does he live?[/i] right
only because its hidden state [b]h[/b] still holds the person of the previous turn.

[b]The panel[/b]
{memory}
 [b]Hidden-state norm[/b]  ‖h‖ per layer after each reply character (‖c‖ too for
                    an LSTM). [yellow]│[/yellow] = a turn start: [yellow]yellow[/yellow], memory carried in;
                    [magenta]magenta[/magenta], from zero (memory off); [red]red[/red], zeroed by ctrl+r.
 [b]Gates[/b]              GRU update z (near 1: keep the old h) and reset r; LSTM
                    input, forget, output. Unit means, newest character.
 [b]Carryover[/b]          ‖h‖ carried into each turn; cosine of the states ending
                    the previous turn and this one (near 1: barely moved).
 [b]Most active units[/b]  the units of h that swing most; red +, blue −.

[b]Keys[/b]
 [b]ctrl+r[/b] forget           [b]ctrl+t[/b] memory on/off   [b]ctrl+d[/b] again, from zero
 [b]ctrl+s[/b] save JSON        [b]ctrl+l[/b] clear screen    [b]Escape[/b] stop a reply
 [b]up/down[/b] history         [b]F1[/b] this help           [b]ctrl+q[/b] quit

[b]Try[/b] [i]Who is Tom Cruise?[/i] then [i]Where does he live?[/i] Then ctrl+t (memory off)
and ask again: from zero, it cannot know who "he" is. ctrl+d: both answers."""

MEMORY_LINES = """\
 [b]Memory[/b]             who "he"/"she" mean, as a linear probe on h reads it
                    (replies never read it). By turn: – nobody, ? stranger."""
NO_MEMORY_LINES = """\
 [b]Memory[/b]             hidden: this checkpoint has no referent head (trained
                    with --referent-weight 0, or without a facts file)."""

_TEMPLATE = HELP
HELP = _TEMPLATE.format(memory=MEMORY_LINES)
NO_MEMORY_HELP = _TEMPLATE.format(memory=NO_MEMORY_LINES)


def help_text(memory: bool = True) -> str:
    """The page, for a checkpoint with the referent head (`memory`) or without it."""
    return HELP if memory else NO_MEMORY_HELP


class HelpScreen(ModalScreen[None]):
    """A modal page of help over the chat; Escape, F1 or q close it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: auto; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; background: $surface; padding: 0 1;
        border-title-align: center; border-subtitle-align: center;
    }
    HelpScreen Static { width: auto; }
    """

    BINDINGS = [
        Binding("escape,f1,q", "dismiss", "Close help"),
    ]

    def __init__(self, memory: bool = True) -> None:
        """`memory`: whether the checkpoint has the referent head (the Memory section)."""
        super().__init__()
        self.memory = memory

    def compose(self) -> ComposeResult:
        box = VerticalScroll()
        box.border_title = "contextbot: a chat with a visible memory"
        box.border_subtitle = "Escape, F1 or q closes"
        with box:
            yield Static(Text.from_markup(help_text(self.memory)), id="help-text")
