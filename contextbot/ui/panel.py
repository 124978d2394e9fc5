"""The right side: the state panel, redrawn with every generated character.

What each part shows (the help screen, F1, says the same to the user):

- `MemoryView` (at the top, for a checkpoint trained with the referent head): who "he" and "she"
  mean, as the head (a linear probe beside the model, which the replies never read) reads the
  state after the newest character of the question or the reply, and a short entry per turn: who
  they meant at its end. After ctrl+r, and with the memory off, the zero state's reading. Hidden
  for a checkpoint without the head.
- `NormChart`: per layer, ‖h‖ after each reply character as a sparkline over the last few
  hundred characters (‖c‖ too for an LSTM). A column `│` marks where a turn began: yellow when the
  memory was carried in, magenta when the turn started from zero (memory off), red after ctrl+r.
- `GateBars`: the gates for the newest character, averaged over the layer's units. GRU: update z
  (near 1 = keep the old h) and reset r (how much old h shapes the proposal). LSTM: input, forget,
  output. Recomputed by hand from the layer's weights (`contextbot.model.recurrence.reference`).
- `CarryoverTable`: at each turn start, the ‖h‖ carried in (0 when the memory is off or was just
  zeroed), and the cosine between the state that ended the previous turn and the one that ends
  this turn: near 1, the turn barely moved the memory; lower, it rewrote it.
- `UnitHeatmap`: the hidden units that change the most over the visible characters, one row
  each (the unit's index on the left), red for positive, blue for negative, time left to right.
- `ModelInfo`: what is loaded, and how many characters of context the state has absorbed.

Every widget here draws from data the app hands it; none of them touches the model.
"""

from __future__ import annotations

import math

from rich.cells import cell_len
from rich.text import Text
from textual.containers import Vertical, VerticalScroll
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Static

from ..model.recurrence.reference import GATE_NAMES
from ..chat import ChatSession
from ..text.terminal import visible
from ..analysis.readout import NOBODY_LABEL, UNKNOWN_LABEL
from .streaming import Memory, Tick, TurnResult, cell_norms
from .timeline import Boundary, Timeline, columns, top_units

BARS = "▁▂▃▄▅▆▇█"
BOUNDARY_STYLE = {"turn": "yellow", "off": "magenta", "reset": "bold red"}


def sparkline(cols: list, lo: float, hi: float, style: str = "cyan") -> Text:
    """One row of bars between lo and hi; a Boundary column is drawn as a coloured │."""
    out = Text()
    span = hi - lo
    for c in cols:
        if isinstance(c, Boundary):
            out.append("│", style=BOUNDARY_STYLE[c.kind])
        else:
            level = 0 if span <= 1e-9 else round((c - lo) / span * (len(BARS) - 1))
            out.append(BARS[max(0, min(len(BARS) - 1, level))], style=style)
    return out


def range_label(lo: float, hi: float) -> str:
    """A norm chart's range at one decimal, rounded outwards (down at the bottom, up at the
    top), so that no value inside [lo, hi], the current one printed beside it included, reads
    as outside the range printed."""
    return f"{math.floor(lo * 10 + 1e-9) / 10:.1f}–{math.ceil(hi * 10 - 1e-9) / 10:.1f}"


def bar(value: float, width: int) -> Text:
    """A horizontal bar for a value in [0, 1]."""
    filled = max(0, min(width, round(value * width)))
    return Text.assemble(("█" * filled, "green"), ("░" * (width - filled), "grey35"))


def heat_colour(v: float) -> str:
    """−1 → blue, 0 → black, +1 → red (tanh keeps every unit of h inside (−1, 1))."""
    v = max(-1.0, min(1.0, v))
    a = abs(v) ** 0.7  # lift small values a little so they stay visible
    if v >= 0:
        r, g, b = 255 * a, 80 * a, 40 * a
    else:
        r, g, b = 50 * a, 130 * a, 255 * a
    return f"rgb({int(r)},{int(g)},{int(b)})"


class SectionTitle(Static):
    DEFAULT_CSS = """
    SectionTitle { color: $text-accent; text-style: bold; margin: 1 0 0 0; }
    SectionTitle.-first { margin: 0; }
    """


class NormChart(Widget):
    """‖h‖ (and ‖c‖) per layer over the recent characters."""

    DEFAULT_CSS = "NormChart { height: auto; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.items: list = []
        self.n_layers = 1
        self.is_lstm = False
        self.current: tuple[float, ...] = ()
        self.current_c: tuple[float, ...] = ()

    def show(self, items: list, current: tuple[float, ...], current_c: tuple[float, ...]) -> None:
        self.items, self.current, self.current_c = items, current, current_c
        self.refresh(layout=True)

    def render(self) -> Text:
        width = max(8, self.size.width)
        rows = []
        series = [("h", layer, self.current) for layer in range(self.n_layers)]
        if self.is_lstm:
            series += [("c", layer, self.current_c) for layer in range(self.n_layers)]
        for kind, layer, now in series:
            value = (lambda t, i=layer: t.norms[i]) if kind == "h" else \
                    (lambda t, i=layer: t.cell_norms[i])
            cols = columns(self.items, width, value)
            nums = [c for c in cols if not isinstance(c, Boundary)]
            head = Text.assemble((f"‖{kind}‖ L{layer + 1} ", "bold"),
                                 (f"{now[layer]:.2f}" if layer < len(now) else "–", "bold cyan"))
            if nums:
                # The sparkline spans its columns and the current value: between replies that is
                # the state after the reply's newline, which no column holds.
                lo, hi = min(nums), max(nums)
                if layer < len(now):
                    lo, hi = min(lo, now[layer]), max(hi, now[layer])
                head.append(f" · range {range_label(lo, hi)}", style="dim")  # of the sparkline
                rows.append(head)
                rows.append(sparkline(cols, lo, hi, "cyan" if kind == "h" else "magenta"))
            else:
                rows.append(head)
                rows.append(Text("no reply characters yet", style="dim"))
        out = Text("\n").join(rows)
        out.no_wrap, out.overflow = True, "ellipsis"  # a narrow panel cuts the labels short
        return out


class GateBars(Widget):
    """The newest character's gates, averaged over each layer's units."""

    DEFAULT_CSS = "GateBars { height: auto; }"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.names: tuple[str, ...] = ()
        self.n_layers = 1
        self.values: tuple[dict[str, float], ...] = ()

    def show(self, values: tuple[dict[str, float], ...]) -> None:
        self.values = values
        self.refresh()

    def render(self) -> Text:
        if not self.names:
            return Text("a plain RNN has no gates: h' = tanh(Wx + Uh + b)", style="dim")
        width = max(4, self.size.width - 17)
        rows = []
        for layer in range(self.n_layers):
            for j, name in enumerate(self.names):
                label = f"L{layer + 1} " if j == 0 else "   "
                row = Text(f"{label}{name:<7} ")
                if layer < len(self.values) and name in self.values[layer]:
                    v = self.values[layer][name]
                    row.append_text(bar(v, width))
                    row.append(f" {v:.2f}", style="bold")
                else:
                    row.append("–", style="dim")
                rows.append(row)
        return Text("\n").join(rows)


class CarryoverTable(Widget):
    """For the last few turns: ‖h‖ carried in, and how much the turn moved the state."""

    DEFAULT_CSS = "CarryoverTable { height: auto; }"
    SHOWN = 4

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.turns: list[tuple[int, TurnResult, bool]] = []  # (number, result, zeroed before)

    def add(self, number: int, result: TurnResult, zeroed_before: bool) -> None:
        self.turns.append((number, result, zeroed_before))
        self.refresh(layout=True)

    def render(self) -> Text:
        if not self.turns:
            return Text("no turns yet", style="dim")
        rows = [Text("turn  ‖h‖ in   cos(prev end, end)", style="dim")]
        for number, r, zeroed in self.turns[-self.SHOWN:]:
            carried = math.sqrt(sum(n * n for n in r.norms_in))
            cos = "   –  " if r.cosine is None else f"{r.cosine:6.3f}"
            note = ", ".join(n for n, on in (("zeroed", zeroed), ("memory off", not r.carry),
                                              ("stopped", r.stopped)) if on)
            rows.append(Text.assemble(f"{number:>4}  ", (f"{carried:6.2f}", "bold cyan"),
                                      "   ", (cos, "bold"), (f"  {note}" if note else "", "dim")))
        return Text("\n").join(rows)


class UnitHeatmap(Widget):
    """The most changing units over the visible characters, one row each, time left to right."""

    DEFAULT_CSS = "UnitHeatmap { height: 6; }"
    LABEL = 5

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.items: list = []

    def show(self, items: list) -> None:
        self.items = items
        self.refresh()

    def render(self) -> Text:
        width = max(1, self.size.width - self.LABEL)
        rows = max(1, self.size.height)
        shown = self.items[-width:]  # the newest characters that fit, one column each
        ticks = [t for t in shown if isinstance(t, Tick)]
        if not ticks:
            return Text("no reply characters yet", style="dim")
        units = top_units(ticks, rows)
        lines = []
        for u in units:
            line = Text(f"{u:>4} ", style="dim")
            for item in shown:
                if isinstance(item, Boundary):
                    line.append("│", style=BOUNDARY_STYLE[item.kind])
                else:
                    line.append("█", style=heat_colour(float(item.units[u])))
            lines.append(line)
        return Text("\n").join(lines)


#: The line under the Memory section that says what it shows.
MEMORY_NOTE = "a linear probe trained beside the model; the bot's reply does not read it"
#: How a history entry writes the two classes that are not people.
SHORT = {NOBODY_LABEL: "–", UNKNOWN_LABEL: "?"}


def abbreviations(labels: list[str]) -> dict[str, str]:
    """Short names for the history: the first name where that tells the people apart, else the
    first name and the initial of the last ("Tom C"), else the whole name; "–" for nobody and
    "?" for a stranger."""
    people = [label for label in labels if label not in SHORT]
    for rule in (lambda w: w[0], lambda w: f"{w[0]} {w[-1][0]}" if len(w) > 1 else w[0]):
        short = [rule(name.split() or [name]) for name in people]
        if len(set(short)) == len(short):
            return {**SHORT, **dict(zip(people, short))}
    return {**SHORT, **{name: name for name in people}}


def _tail(text: str, width: int) -> str:
    """The end of `text` that fits `width` cells, led by "…" when it was cut."""
    if cell_len(text) <= width:
        return text
    out = ""
    for ch in reversed(text):
        if cell_len(out) + cell_len(ch) + 1 > width:
            break
        out = ch + out
    return "…" + out


class MemoryView(Widget):
    """Who "he" and "she" mean in the state, live, and at the end of each recent turn."""

    # One row per line, as get_content_height counts them: a line too long ends in "…".
    DEFAULT_CSS = "MemoryView { height: auto; text-wrap: nowrap; text-overflow: ellipsis; }"
    HISTORY_LINES = 2  # lines of per-turn entries, the newest that fit

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.memory: Memory | None = None  # the reading drawn now
        self.where = ""  # what that reading is of: "reading the question", "after turn 3", ...
        self.fed = ""  # the text just fed (the question or reply so far), shown by its end
        self.history: list[tuple[int, str, Memory]] = []  # (turn, boundary kind, memory at its end)
        self.short: dict[str, str] = dict(SHORT)

    def setup(self, labels: list[str]) -> None:
        self.short = abbreviations(labels)

    def show(self, memory: Memory | None, where: str, fed: str = "") -> None:
        """Draw `memory`, the reading after `fed` (the newest text, if any) or of `where`."""
        self.memory, self.where, self.fed = memory, where, fed
        self.refresh(layout=True)

    def add_turn(self, number: int, kind: str, memory: Memory) -> None:
        """A finished turn: `kind` as the timeline's boundaries ("turn", "off", "reset")."""
        self.history.append((number, kind, memory))
        del self.history[:-50]  # more never fits
        self.refresh(layout=True)

    def text(self) -> str:
        """What the view draws, as plain text (at its current width)."""
        return self.render().plain

    def render(self) -> Text:
        return Text("\n").join(self.lines(self.size.width))

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self.lines(width))  # the line count depends on the width: no cache

    def lines(self, width: int) -> list[Text]:
        width = max(12, width)
        if self.memory is None:
            return [Text("–", style="dim")]
        parts = [self._reading(r) for r in self.memory]
        one = Text(" · ").join(parts)
        rows = [one] if one.cell_len <= width else parts
        where = Text(self.where, style="dim")
        if self.fed:
            fed = visible(self.fed.replace("\n", "⏎"))
            where.append_text(Text(": ", style="dim"))
            where.append(_tail(fed, max(4, width - where.cell_len)), style="italic")
        rows.append(where)
        rows.extend(self._history(width))
        return rows

    def _reading(self, r) -> Text:
        style = "bold green" if r.is_person else ("yellow" if r.label == UNKNOWN_LABEL else "")
        return Text.assemble(f"{r.pronoun} → ", (visible(r.label), style or "dim"),
                             (f" {r.probability:.2f}", "bold"))

    def _history(self, width: int) -> list[Text]:
        """The newest turns' entries that fit in HISTORY_LINES lines, oldest first: the turn's
        number (coloured like the norm chart's turn marks) and who he/she meant at its end."""
        if not self.history:
            return []
        entries = []
        for number, kind, (he, she) in self.history:
            entry = Text.assemble((str(number), BOUNDARY_STYLE.get(kind, "")), " ")
            for i, r in enumerate((he, she)):
                entry.append(visible(self.short.get(r.label, r.label)),
                             "bold" if r.is_person and r.probability >= 0.5 else "dim")
                if i == 0:
                    entry.append("/", style="dim")
            entries.append(entry)
        label = Text("by turn ", style="dim")
        room = max(1, width - label.cell_len)  # every line is indented as far as the label
        for first in range(len(entries)):  # drop the oldest until the rest fit
            rows = _pack(entries[first:], room)
            if len(rows) <= self.HISTORY_LINES:
                break
        else:
            return []
        indent = Text(" " * label.cell_len)
        return [Text.assemble(label if i == 0 else indent, Text("  ").join(row))
                for i, row in enumerate(rows)]


def _pack(entries: list[Text], width: int) -> list[list[Text]]:
    """Entries into lines of at most `width` cells, two spaces apart, in order."""
    rows: list[list[Text]] = [[]]
    used = 0
    for entry in entries:
        need = entry.cell_len + (2 if rows[-1] else 0)
        if rows[-1] and used + need > width:
            rows.append([])
            used, need = 0, entry.cell_len
        rows[-1].append(entry)
        used += need
    return rows


class MemorySection(Vertical):
    """The Memory section: its title, the view, and the line that says what it is."""

    DEFAULT_CSS = """
    MemorySection { height: auto; }
    MemorySection > .memory-note { color: $text-muted; text-style: italic;
                                   text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def compose(self):
        yield SectionTitle("Memory: who he and she mean", classes="-first")
        yield MemoryView(id="memory")
        yield Static(MEMORY_NOTE, classes="memory-note")


class ModelInfo(Static):
    """Cell, size, checkpoint, and the characters of context fed since the last reset."""

    DEFAULT_CSS = "ModelInfo { height: auto; }"

    def show(self, session: ChatSession) -> None:
        ck = session.checkpoint
        c = ck.config
        name = visible(ck.path.name) if ck.path else "(in memory)"  # any file name may be odd
        self.update(Text.assemble(
            (f"{c.cell.upper()} {c.layers}×{c.hidden}", "bold"), " · ",
            f"{ck.model.num_parameters():,} parameters\n",
            (name, "bold"), f" · step {ck.step} · {ck.sha256[:8]}\n",
            "context: ", (f"{session.chars_seen:,}", "bold cyan"), " chars since reset"))


class StatePanel(VerticalScroll):
    """What the memory is doing, section by section."""

    DEFAULT_CSS = """
    StatePanel { padding: 0 1; scrollbar-size-vertical: 1; }
    """

    def compose(self):
        yield MemorySection(id="memory-section")
        yield SectionTitle("Hidden-state norm", id="norms-title")
        yield NormChart(id="norms")
        yield SectionTitle("Gates (unit mean, newest char)")
        yield GateBars(id="gates")
        yield SectionTitle("Carryover into each turn")
        yield CarryoverTable(id="carryover")
        yield SectionTitle("Most active units")
        yield UnitHeatmap(id="heatmap")
        yield SectionTitle("Model")
        yield ModelInfo(id="model-info")

    def setup(self, session: ChatSession, labels: list[str] | None = None) -> None:
        """Called once the model has loaded. `labels`: the referent head's classes
        (analysis/readout.py); None hides the Memory section (a checkpoint without the head)."""
        self.query_one(MemorySection).display = labels is not None
        self.query_one("#norms-title").set_class(labels is None, "-first")
        if labels is not None:
            self.query_one(MemoryView).setup(labels)
        c = session.checkpoint.config
        chart = self.query_one(NormChart)
        chart.n_layers, chart.is_lstm = c.layers, c.cell == "lstm"
        bars = self.query_one(GateBars)
        bars.n_layers = c.layers
        bars.names = GATE_NAMES[c.cell]
        self.refresh_state(session, Timeline())

    def refresh_state(self, session: ChatSession, timeline: Timeline,
                      live: Tick | None = None) -> None:
        """Redraw from the timeline. During a reply, `live` is the newest tick; between replies
        the numbers come from the session's actual state (after the newline, or a reset)."""
        items = timeline.recent()
        if live is not None:
            now, now_c = live.norms, live.cell_norms
        else:
            now, now_c = session.norms(), cell_norms(session.state)
        self.query_one(NormChart).show(items, now, now_c)
        # The gates of the newest character, unless a boundary (a new turn, a reset) followed it.
        latest = items[-1] if items and isinstance(items[-1], Tick) else None
        self.query_one(GateBars).show(latest.gates if latest is not None else ())
        self.query_one(UnitHeatmap).show(items)
        self.query_one(ModelInfo).show(session)

