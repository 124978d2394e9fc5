"""The Messages that background workers post to the app: the only way they talk to the UI.

A worker thread must never touch a widget. It posts one of these instead (`post_message` is
thread-safe), and Textual hands it to the app's handler on the event-loop thread.

`ReplyProgress` arrives once per generated character, which can be faster than the screen
redraws. Its `can_replace` lets Textual drop a stale one when a newer one for the same turn is
already waiting in the queue; nothing is lost, because every ReplyProgress carries the whole
reply so far. `PromptProgress` (one per character of the question, before the reply) collapses
the same way: only the newest reading is drawn.
"""

from __future__ import annotations

from textual.message import Message

from ..analysis.readout import Readout
from ..chat import ChatSession
from .streaming import Memory, Tick, TurnResult


class ModelLoaded(Message):
    """The checkpoint loaded; the chat can start. `readout`: its referent head's reader, and
    `zero`: what that reads in the all-zero state (both None for a checkpoint without the head)."""

    def __init__(self, session: ChatSession, readout: Readout | None = None,
                 zero: Memory | None = None) -> None:
        super().__init__()
        self.session = session
        self.readout = readout
        self.zero = zero


class ModelFailed(Message):
    """The checkpoint could not be loaded; `error` is the one-line reason."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class PromptProgress(Message):
    """Turn `turn`'s prompt is being read: `fed` is the prompt so far, `memory` who he and she
    mean right after its last character."""

    def __init__(self, turn: int, fed: str, memory: Memory) -> None:
        super().__init__()
        self.turn = turn
        self.fed = fed
        self.memory = memory

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, PromptProgress) and message.turn == self.turn


class ReplyProgress(Message):
    """The reply of turn `turn` so far: every tick since the turn began."""

    def __init__(self, turn: int, ticks: tuple[Tick, ...]) -> None:
        super().__init__()
        self.turn = turn
        self.ticks = ticks

    def can_replace(self, message: Message) -> bool:
        # Textual asks the *older* message whether the newer one supersedes it: when it does,
        # the older one is dropped unhandled. Safe, since the newer one holds everything.
        return isinstance(message, ReplyProgress) and message.turn == self.turn


class ReplyFinished(Message):
    """Turn `turn` is over (completed or stopped); the session's state is consistent again."""

    def __init__(self, turn: int, result: TurnResult) -> None:
        super().__init__()
        self.turn = turn
        self.result = result


class ReplyRefused(Message):
    """The session refused the question (ValueError: too long); nothing was fed."""

    def __init__(self, turn: int, error: str) -> None:
        super().__init__()
        self.turn = turn
        self.error = error


class ComparisonReady(Message):
    """ctrl+d's answer from a zeroed state, to show beside the answer the memory gave."""

    def __init__(self, question: str, carried: str, carried_was_on: bool, zeroed: str) -> None:
        super().__init__()
        self.question = question
        self.carried = carried
        self.carried_was_on = carried_was_on
        self.zeroed = zeroed
