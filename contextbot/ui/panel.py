"""The right side: the state panel, redrawn with every generated character.

What each part shows (the help screen, F1, says the same to the user):

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

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from ..model.recurrence.reference import GATE_NAMES
from ..chat import ChatSession
from ..text.terminal import visible
from .streaming import Tick, TurnResult, cell_norms
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
        yield SectionTitle("Hidden-state norm", classes="-first")
        yield NormChart(id="norms")
        yield SectionTitle("Gates (unit mean, newest char)")
        yield GateBars(id="gates")
        yield SectionTitle("Carryover into each turn")
        yield CarryoverTable(id="carryover")
        yield SectionTitle("Most active units")
        yield UnitHeatmap(id="heatmap")
        yield SectionTitle("Model")
        yield ModelInfo(id="model-info")

    def setup(self, session: ChatSession) -> None:
        """Called once the model has loaded."""
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

