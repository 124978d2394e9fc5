"""The recent history the state panel draws: generated characters and the boundaries between turns.

Plain data and small pure functions (no widgets), so the drawing rules can be tested alone:

- `Timeline` keeps the last few hundred `Tick`s, with a `Boundary` wherever a turn started
  (a "reset" boundary where the memory was zeroed, an "off" one where the turn started from zero
  because carrying was switched off);
- `columns` squeezes that history into a given number of screen columns for a sparkline;
- `top_units` picks the most active (most changing) hidden units for the heatmap.

Only the *reply* characters have ticks: `ChatSession.stream` yields nothing while it reads the
question, so the panel sees the state after the question only through the first reply character.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch

from .streaming import Tick

HISTORY = 400  # characters the panel remembers: "the last few hundred"


@dataclass(frozen=True)
class Boundary:
    """Where a new turn begins. kind: "turn" (memory carried), "off" (started from zero) or
    "reset" (the user zeroed the memory with ctrl+r)."""

    kind: str = "turn"


Item = Union[Tick, Boundary]


class Timeline:
    """Committed ticks of finished turns, plus the live ticks of the reply being generated."""

    def __init__(self, limit: int = HISTORY):
        self.limit = limit
        self.items: list[Item] = []
        self.live: tuple[Tick, ...] = ()

    def begin_turn(self, carried: bool) -> None:
        """A turn starts: mark the boundary (unless one is already there, as after a reset)."""
        self.commit()
        if self.items and isinstance(self.items[-1], Boundary):
            return
        if self.items or not carried:
            self.items.append(Boundary("turn" if carried else "off"))

    def set_live(self, ticks: tuple[Tick, ...]) -> None:
        """The reply so far (a complete snapshot: a dropped progress message loses nothing)."""
        self.live = ticks

    def commit(self) -> None:
        """The live reply becomes history."""
        if self.live:
            self.items.extend(self.live)
            self.live = ()
        self._trim()

    def mark_reset(self) -> None:
        self.commit()
        if self.items and isinstance(self.items[-1], Boundary):
            self.items[-1] = Boundary("reset")
        elif self.items:
            self.items.append(Boundary("reset"))

    def recent(self) -> list[Item]:
        return self.items + list(self.live)

    def latest(self) -> Tick | None:
        """The newest tick, live or committed."""
        if self.live:
            return self.live[-1]
        for item in reversed(self.items):
            if isinstance(item, Tick):
                return item
        return None

    def ticks(self) -> list[Tick]:
        return [t for t in self.recent() if isinstance(t, Tick)]

    def _trim(self) -> None:
        n = sum(isinstance(t, Tick) for t in self.items)
        drop = 0
        while n > self.limit and drop < len(self.items):
            if isinstance(self.items[drop], Tick):
                n -= 1
            drop += 1
        if drop:
            del self.items[:drop]
        while self.items and isinstance(self.items[0], Boundary) and len(self.items) > 1 \
                and isinstance(self.items[1], Boundary):
            del self.items[0]


Column = Union[float, Boundary]


def columns(items: list[Item], width: int, value) -> list[Column]:
    """Fit the history into `width` columns: each column averages `value(tick)` over k consecutive
    characters of one turn (k grows as the history grows), and each boundary keeps a column of
    its own, so turn boundaries stay visible however much is squeezed. The newest is rightmost."""
    if width <= 0:
        return []
    segments: list[tuple[Boundary | None, list[float]]] = [(None, [])]
    for item in items:
        if isinstance(item, Boundary):
            segments.append((item, []))
        else:
            segments[-1][1].append(float(value(item)))
    n_ticks = sum(len(s[1]) for s in segments)
    n_bounds = sum(s[0] is not None for s in segments)
    room = max(1, width - n_bounds)
    k = max(1, math.ceil(n_ticks / room))
    out: list[Column] = []
    for boundary, values in segments:
        if boundary is not None:
            out.append(boundary)
        for i in range(0, len(values), k):
            chunk = values[i:i + k]
            out.append(sum(chunk) / len(chunk))
    return out[-width:]


def top_units(ticks: list[Tick], count: int) -> list[int]:
    """The `count` most active hidden units over `ticks`, most active first.

    "Active" means *changing*: the largest standard deviation over the characters. A unit
    saturated at ±1 the whole time holds something, but a strip of one flat colour shows nothing;
    the units that swing are the ones reacting to the text. (With a single tick: largest |h|.)
    """
    if not ticks or count <= 0:
        return []
    h = torch.stack([t.units for t in ticks])  # (characters, hidden)
    activity = h.std(dim=0) if len(ticks) > 1 else h[0].abs()
    return activity.topk(min(count, activity.numel())).indices.tolist()
