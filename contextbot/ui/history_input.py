"""The question box: an `Input` that remembers what was asked (up/down walk the history)."""

from __future__ import annotations

import dataclasses

from textual import events
from textual.binding import Binding
from textual.widgets import Input

from ..text.terminal import typed


def _without(key: str, bindings) -> list[Binding]:
    """`bindings` with `key` taken out of every binding that lists it."""
    out = []
    for b in bindings:
        keys = [k for k in b.key.split(",") if k.strip() != key]
        if keys:
            out.append(dataclasses.replace(b, key=",".join(keys)))
    return out


class HistoryInput(Input, inherit_bindings=False):
    """Up recalls older questions, down newer ones; down past the newest restores the draft.

    Input's own keys are kept except ctrl+d (delete right; the Delete key still does that),
    which belongs to the app here: "ask again from a zeroed state".

    A paste keeps every line, joined by spaces (Textual's Input would keep only the first), and
    loses its control and format characters (`typed`): an escape sequence in a paste must not
    reach the terminal through the box. `ChatSession` then cleans the question again, and
    refuses an over-long one.
    """

    BINDINGS = _without("ctrl+d", Input.BINDINGS) + [
        Binding("up", "history(-1)", "Previous question", show=False),
        Binding("down", "history(1)", "Next question", show=False),
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[str] = []
        self._index: int | None = None  # position in history while browsing, else None
        self._draft = ""

    def remember(self, text: str) -> None:
        if text and (not self.history or self.history[-1] != text):
            self.history.append(text)
        self._index = None
        self._draft = ""

    def action_history(self, direction: int) -> None:
        if not self.history:
            return
        if self._index is None:
            if direction > 0:
                return
            self._draft = self.value
            self._index = len(self.history) - 1
        else:
            self._index += direction
            if self._index < 0:
                self._index = 0
            elif self._index >= len(self.history):
                self._index = None
                self._set(self._draft)
                return
        self._set(self.history[self._index])

    def _set(self, text: str) -> None:
        self.value = text
        self.cursor_position = len(text)

    def _on_paste(self, event: events.Paste) -> None:
        if event.text:
            text = typed(" ".join(event.text.splitlines()))
            selection = self.selection
            if selection.is_empty:
                self.insert_text_at_cursor(text)
            else:
                self.replace(text, *selection)
        event.stop()
        event.prevent_default()  # or Input's own handler would paste the first line again
