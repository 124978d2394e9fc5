"""F1: what the panel shows, the keys, and a dialogue to try."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# contextbot: a chat with a visible memory

The bot is a character-level recurrent network. It answers *Where does he live?* correctly only
because its hidden state **h** still holds the person from the previous turn.

**The panel, right**

- **Hidden-state norm**: ‖h‖ per layer after each reply character (‖c‖ too for an LSTM),
  over the last few hundred characters. A `│` marks a turn start: yellow = memory carried in,
  magenta = turn started from zero (memory off), red = you zeroed it (ctrl+r).
- **Gates**: GRU *update* z (near 1: keep the old h) and *reset* r (how much old h shapes the
  new proposal); LSTM *input*, *forget*, *output*. Averaged over units, for the newest character.
- **Carryover**: ‖h‖ carried into each turn, and the cosine between the states ending the
  previous turn and this one (near 1: the turn barely moved the memory).
- **Most active units**: the units of h that swing the most over the characters shown
  (index on the left), red positive, blue negative, time running left to right.

**Keys**: ctrl+r forget · ctrl+t memory on/off · ctrl+d same question from a zeroed state,
side by side · ctrl+s save JSON · ctrl+l clear · Escape stop a reply · up/down history ·
ctrl+q quit

**Try this**

1. *Who is Tom Cruise?* then *Where does he live?* (he is remembered)
2. *What about Megan Fox?* then *Is she married?* (the memory switches person)
3. ctrl+t (memory off), ask *Where does he live?* again: with nothing carried, it cannot know.
4. ctrl+d puts both answers side by side.

Press Escape or F1 to close.
"""


class HelpScreen(ModalScreen[None]):
    """A modal page of help over the chat; Escape, F1 or q close it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 100; height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """

    BINDINGS = [
        Binding("escape,f1,q", "dismiss", "Close help"),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)
