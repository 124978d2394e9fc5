"""`contextbot inspect`: the command. It checks every input first, then traces, prints and plots.

The work is done elsewhere: trace.py runs the conversation character by character, units.py
finds the units that are on over a phrase, probe.py fits linear probes, plots.py draws. This
module reads the flags, prints rich tables for people (or JSON for machines) and writes figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..text.terminal import console_for, visible
from ..errors import ContextbotError
from ..files import read_text
from ..model.checkpoint import Checkpoint
from ..model.checkpoint import load as load_checkpoint
from ..model.recurrence import reference as gates
from ..paths import default_checkpoint
from . import probe
from .readout import Readout, Reading
from .trace import (TurnTrace, readout_probabilities, seed_questions, trace_conversation, trace_json,
                    turn_summary)
from .units import Units, find_units, units_json


def _layers(values: list, fmt) -> str:
    """One line per layer ("L1 ...") when there are several layers, else the bare value."""
    if len(values) == 1:
        return fmt(values[0])
    return "\n".join(f"L{i + 1} {fmt(v)}" for i, v in enumerate(values))


def _gates_line(d: dict[str, float], percent: bool = False) -> str:
    if not d:
        return "—"
    return " ".join(f"{k[0]} {v:.0%}" if percent else f"{k[0]} {v:.2f}" for k, v in d.items())


def header(ckpt: Checkpoint) -> str:
    c = ckpt.config
    return (f"{ckpt.path}  ({c.cell}, {c.layers}x{c.hidden}, step {ckpt.step}, "
            f"sha256 {ckpt.sha256[:12]})")


def print_table(ckpt: Checkpoint, turns: list[TurnTrace], console: Console) -> None:
    """The rich table: a row per turn."""
    names = gates.GATE_NAMES[ckpt.config.cell]
    legend = ", ".join(f"{n[0]} = {n}" for n in names) if names else "a vanilla RNN has no gates"
    table = Table(title=Text(visible(header(ckpt))), caption=f"gates: {legend}; saturated: below 0.1 or above 0.9",
                  show_lines=True)
    for col, just in (("#", "right"), ("question", "left"), ("reply (carried state)", "left"),
                      ("reply (zeroed state)", "left"), ("carry changed it", "center"),
                      ("‖h‖ in → out", "right"), ("cos / dist to prev.", "right"),
                      ("mean gates", "left"), ("saturated", "left")):
        table.add_column(col, justify=just)
    for n, turn in enumerate(turns, 1):
        s = turn_summary(turn)
        changed = Text("yes", style="bold green") if s["carry_changed_answer"] else Text("no", style="dim")
        norms = [f"{a:.2f} → {b:.2f}" for a, b in zip(s["norm_in"], s["norm_out"])]
        cos = [("—" if c is None else f"{c:.2f}") + f" / {d:.2f}"
               for c, d in zip(s["cosine_to_previous"], s["distance_to_previous"])]
        table.add_row(str(n), Text(visible(turn.question)), Text(visible(turn.reply)),
                      Text(visible(turn.reply_zeroed)), changed,
                      _layers(norms, str), _layers(cos, str),
                      _layers(s["gate_means"], _gates_line),
                      _layers(s["saturated"], lambda d: _gates_line(d, percent=True)))
    console.print(table)


def _shade(t: float) -> str | None:
    """A background from pale yellow to orange for t in [0, 1]; None below a faint threshold."""
    if t < 0.15:
        return None
    return f"black on rgb(255,{int(250 - 120 * t)},{int(235 - 235 * t)})"


def print_units(ckpt: Checkpoint, units: Units, turns: list[TurnTrace], console: Console) -> None:
    """The conversation with every character shaded by how strongly the selected units are on,
    then a units x turns grid of the mean z-score."""
    # Paths and phrases are the user's: printed as text, never read as rich markup ("[/x]").
    console.print(visible(header(ckpt)), highlight=False, markup=False)
    console.print(f"The {len(units.labels)} units most on over {units.phrase!r}: "
                  f"{', '.join(('-' if s < 0 else '') + lab for lab, s in zip(units.labels, units.signs))}"
                  "  (-: on means strongly negative)", highlight=False, markup=False)
    top = max(float(units.score.max()), 1e-6)
    line = Text()
    for i, ch in enumerate(units.text):
        if ch == "\n":
            console.print(line)
            line = Text()
            continue
        style = _shade(max(0.0, float(units.score[units.char_step[i]])) / top)
        if units.span[0] <= i < units.span[1]:
            style = (style or "") + " underline"
        line.append(visible(ch), style=style)  # the model's text: no escape sequences
    if line:
        console.print(line)
    grid = Table(title="mean z-score of each unit per turn (oriented: on is positive)")
    grid.add_column("unit", justify="right")
    for n in range(len(turns)):
        grid.add_column(f"turn {n + 1}", justify="right")
    turn_of = torch.tensor(units.step_turn)
    zmax = max(float(units.z.abs().max()), 1e-6)
    for lab, sign, row in zip(units.labels, units.signs, units.z):
        cells = []
        for n in range(len(turns)):
            v = float(row[turn_of == n].mean())
            cells.append(Text(f"{v:+.2f}", style=_shade(max(0.0, v) / zmax) or ""))
        grid.add_row(("-" if sign < 0 else "") + lab, *cells)
    console.print(grid)
    if units.echoes:
        words = ", ".join(f"{e['word']!r} (turn {e['turn']} {e['part']}, {e['score']:+.2f})"
                          for e in units.echoes)
        console.print(f"After the phrase they are most on again at: {words}", highlight=False,
                      markup=False)


def _reading_cell(readings: tuple[Reading, Reading]) -> Text:
    """ "he → Tom Cruise 0.98" and "she → nobody 0.91", a line each; people in bold."""
    out = Text()
    for k, r in enumerate(readings):
        if k:
            out.append("\n")
        out.append(f"{r.pronoun} → ")
        out.append(visible(r.label), style="bold" if r.is_person else "dim")
        out.append(f" {r.probability:.2f}")
    return out


def print_readout(ckpt: Checkpoint, readout: Readout, turns: list[TurnTrace], stateless: list[TurnTrace],
                  console: Console) -> None:
    """The rich table of `--readout`: a row per turn, who "he" and "she" mean at the turn's end
    (after the reply's newline), with the carried state and from a zeroed state."""
    hidden = ckpt.config.hidden
    table = Table(title=Text(visible(header(ckpt))), show_lines=True,
                  caption="the referent head's likeliest class for each pronoun at the end of the turn, "
                          "with its probability")
    for col, just in (("#", "right"), ("question", "left"), ("reply (carried state)", "left"),
                      ("he / she (carried)", "left"), ("reply (zeroed state)", "left"),
                      ("he / she (zeroed)", "left")):
        table.add_column(col, justify=just)
    for n, (turn, zero) in enumerate(zip(turns, stateless), 1):
        carried = readout.readings(readout_probabilities(readout, turn, hidden)[-1])
        zeroed = readout.readings(readout_probabilities(readout, zero, hidden)[-1])
        table.add_row(str(n), Text(visible(turn.question)), Text(visible(turn.reply)), _reading_cell(carried),
                      Text(visible(zero.reply)), _reading_cell(zeroed))
    console.print(table)


# -- the command --------------------------------------------------------------------------------
MAX_CONVERSATIONS = 10_000  # --probe --conversations: far above the default (600), below a hang
def read_script(path: str | Path) -> list[str]:
    """A file of questions, one per line; blank lines are skipped."""
    path = Path(path)
    text = read_text(path, "script")
    questions = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not questions:
        raise ContextbotError(f"{path}: no questions in the script (one per line)")
    return questions


def run(args) -> int:
    """`contextbot inspect`: check every input first, then trace, print and plot."""
    with probe.one_thread():  # thousands of small steps: see `probe.one_thread`
        return _run(args)


def _run(args) -> int:
    paths = args.checkpoint or [None]
    if args.conversations is not None and not args.probe:
        raise ContextbotError("--conversations is for --probe")
    if args.conversations is not None and not 3 <= args.conversations <= MAX_CONVERSATIONS:
        raise ContextbotError(f"--conversations must be from 3 to {MAX_CONVERSATIONS}, not "
                              + (str(args.conversations) if abs(args.conversations) < 10**12
                                 else f"a number of {len(str(abs(args.conversations)))} digits"))
    plot_path = None
    if args.plot:
        from . import plots
        plot_path = plots.check_path(args.plot)
    if args.probe:
        if args.questions or args.script:
            raise ContextbotError("--probe generates its own conversations; give no questions or --script")
        return probe.run([p or default_checkpoint() for p in paths], plot_path, args.json,
                         args.conversations or probe.CONVERSATIONS)
    if len(paths) > 1:
        raise ContextbotError("several --checkpoint are for --probe only")
    if args.questions and args.script:
        raise ContextbotError("give questions or --script, not both")
    questions = read_script(args.script) if args.script else (args.questions or seed_questions())
    ckpt = load_checkpoint(paths[0] or default_checkpoint())
    wants_readout = args.readout
    readout = Readout.of(ckpt) if wants_readout else None
    if wants_readout and readout is None:
        raise ContextbotError(f"{ckpt.path}: trained without the referent signal: it has no referent "
                              "head for --readout to read")
    if readout is not None:  # the stateless run, traced character by character, gives the zeroed replies
        stateless = trace_conversation(ckpt, questions, carry=False)
        turns = trace_conversation(ckpt, questions, zeroed=False)
        for turn, zero in zip(turns, stateless):
            turn.reply_zeroed = zero.reply
    else:
        turns = trace_conversation(ckpt, questions, zeroed=args.units is None)
    console = console_for(stderr=args.json)  # with --json, stdout carries only the JSON
    if readout is not None:
        if args.json:
            sys.stdout.write(json.dumps(trace_json(ckpt, turns, stateless)) + "\n")
        else:
            print_readout(ckpt, readout, turns, stateless, console)
        if plot_path:
            hidden = ckpt.config.hidden
            plots.save(plots.readout_figure(
                turns, stateless, readout.labels,
                [readout_probabilities(readout, t, hidden) for t in turns],
                [readout_probabilities(readout, t, hidden) for t in stateless], header(ckpt)), plot_path)
    elif args.units is not None:
        units = find_units(turns, args.units, ckpt.config.hidden)
        if args.json:
            sys.stdout.write(json.dumps(units_json(ckpt, units)) + "\n")
        else:
            print_units(ckpt, units, turns, console)
        if plot_path:
            plots.save(plots.units_figure(turns, units, header(ckpt)), plot_path)
    else:
        if args.json:
            sys.stdout.write(json.dumps(trace_json(ckpt, turns)) + "\n")
        else:
            print_table(ckpt, turns, console)
        if plot_path:
            plots.save(plots.conversation_figure(turns, ckpt.config.cell, header(ckpt)), plot_path)
    if plot_path:
        console.print(f"wrote {plot_path}", highlight=False, markup=False)
    return 0
