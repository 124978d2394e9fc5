"""The status line under the chat: is the memory carried, and what is the bot doing."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class StatusLine(Static):
    """One line: memory carried/off, the turn count, the context size, and activity."""

    DEFAULT_CSS = """
    StatusLine { height: 1; padding: 0 1; background: $boost; color: $text; }
    """

    def show(self, *, loaded: bool, carry: bool = True, turns: int = 0, context: int = 0,
             activity: str = "") -> None:
        if not loaded:
            self.update(Text(activity or "loading the model…", style="italic"))
            return
        line = Text(no_wrap=True, overflow="ellipsis")
        if carry:
            line.append(" memory: carried ", style="bold black on green")
        else:
            line.append(" memory: OFF ", style="bold white on red")
        if activity:
            line.append(f" {activity}", style="bold yellow")
        line.append(f" · turn {turns} · {context:,} chars of context · ")
        line.append("each turn starts where the last one ended" if carry
                    else "every turn starts from zero", style="dim")
        self.update(line)
