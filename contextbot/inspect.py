"""`contextbot inspect`: how the hidden state carries a conversation from one turn to the next.

A recurrent chat bot has no memory but its state: a few hundred numbers per layer that it carries
from character to character and, in contextbot, from turn to turn. When it answers "Where does
she live?" correctly, the name it needs was read several lines earlier and survives only in those
numbers. This module makes that visible. It runs a conversation one character at a time through
`contextbot.gates.step` (which recomputes each step from the layer's weights, so the gates can be
seen) and records, for every character:

- ‖h‖ per layer: how large the state is;
- the mean of each gate over the units of its layer (GRU update/reset, LSTM input/forget/output)
  and the fraction of units whose gate is *saturated*, below 0.1 or above 0.9. A saturated gate
  is a switch rather than a dial: a GRU update gate near 1 copies its unit unchanged to the next
  step, and that is how a name can survive a dozen lines of small talk;
- the five likeliest next characters.

Every question is also asked from a zeroed state (a `ChatSession` with `carry=False`). Where the
two replies differ, the answer came from what the state carried, not from the question: "Where
she lives?" on its own can only be answered "Who do you mean?".

Per turn we compare the state that ended the previous turn with the one that ends this turn
(cosine similarity and Euclidean distance, per layer): a small step means the turn changed
little of what is remembered, as small talk should.

`--units TEXT` looks, in the spirit of LSTMVis (Strobelt et al., 2017), for the hidden units that
are on over a phrase, and shows where in the conversation the same units fire again. `--probe`
lives in `contextbot.probe`, the figures in `contextbot.plots`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import gates
from .checkpoint import Checkpoint
from .checkpoint import load as load_checkpoint
from .errors import ContextbotError, read_text
from .evaluate import SEED_DIALOGUE
from .model import RecurrentLM, State, hidden_of
from .session import MAX_REPLY, ChatSession, clean_question, default_checkpoint, prompt, visible
from .tokenizer import Tokenizer

TOP_K = 5  # next characters kept per step
UNITS_SHOWN = 8  # units that --units selects
ECHOES_SHOWN = 6  # words listed where the selected units fire again


def seed_questions() -> list[str]:
    """The questions of the seed article's dialogue (Tom Cruise, then Megan Fox)."""
    return [q for q, _ in SEED_DIALOGUE]


# -- the trace ----------------------------------------------------------------------------------
@dataclass
class CharStep:
    """One token through the network; with the character tokenizer, one character.

    `part` says where the token came from: "question" for the fed prompt `Q: ...\\nA: `, "reply"
    for a generated token, "end" for the newline fed after the reply (as `ChatSession` does).
    `top` is what the model expects *next*, after this token.
    """

    text: str  # what the token spells ("" while a multi-byte character is incomplete)
    part: str
    norms: list[float]  # ‖h‖ per layer after this token
    gates: list[dict[str, float]]  # per layer: gate name -> mean over the units
    saturated: list[dict[str, float]]  # per layer: gate name -> fraction below 0.1 or above 0.9
    top: list[tuple[str, float]]  # the TOP_K likeliest next pieces, with probabilities
    hidden: torch.Tensor  # (layers * hidden,) h of every layer after this token


@dataclass
class TurnTrace:
    """One turn, character by character, with the states it started and ended with."""

    question: str
    reply: str
    steps: list[CharStep]
    state_in: State  # the carried state the turn started from
    state_out: State  # the state after the reply's newline: what the next turn carries
    reply_zeroed: str = ""  # the reply to the same question from a zeroed state

    @property
    def changed(self) -> bool:
        """Did the carried state change the answer?"""
        return self.reply != self.reply_zeroed


def unit_label(index: int, hidden: int, layers: int) -> str:
    """A hidden unit's name: its index, or `L2:37` (layer 2, unit 37) with several layers."""
    return f"L{index // hidden + 1}:{index % hidden}" if layers > 1 else str(index)


def piece_label(tok: Tokenizer, token: int) -> str:
    """What a token spells, for tables: its text, or `<0xE2>` for a byte piece."""
    text = tok.piece_text[token]
    return tok.sp.id_to_piece(token) if text is None else text


@torch.no_grad()
def trace_turn(model: RecurrentLM, tok: Tokenizer, question: str, state: State) -> TurnTrace:
    """One turn by the session's protocol, but one token at a time through `gates.step`.

    Feed `Q: {question}\\nA: `, generate greedily until the newline token, feed the newline. The
    reply equals `ChatSession.ask`'s at temperature 0 (the tests check it); `question` must
    already be cleaned with `clean_question`.
    """
    state_in = state
    steps: list[CharStep] = []

    def feed(token: int, part: str, text: str) -> torch.Tensor:
        nonlocal state
        t = gates.step(model, token, state)
        state = t.state
        p, i = t.logits.softmax(-1).topk(min(TOP_K, t.logits.numel()))
        steps.append(CharStep(
            text=text, part=part,
            norms=[float(h.norm()) for h in t.hidden],
            gates=gates.gate_means(t), saturated=gates.saturation(t),
            top=[(piece_label(tok, int(j)), float(q)) for q, j in zip(p, i)],
            hidden=torch.cat(t.hidden)))
        return t.logits

    decoder = tok.decoder()
    for token in tok.encode(prompt(question)):
        logits = feed(token, "question", decoder.push(token))
    steps[-1].text += decoder.flush()
    reply_start = len(steps)
    for _ in range(MAX_REPLY):
        nxt = int(logits.argmax())  # greedy, as ChatSession at temperature 0
        if nxt in tok.line_end_ids:
            break
        logits = feed(nxt, "reply", decoder.push(nxt))
    if len(steps) > reply_start:
        steps[-1].text += decoder.flush()
    reply = "".join(s.text for s in steps[reply_start:])
    feed(tok.newline_id, "end", "\n")  # the reply's newline is part of what is remembered
    return TurnTrace(question, reply, steps, state_in, state)


def trace_conversation(ckpt: Checkpoint, questions: list[str], zeroed: bool = True) -> list[TurnTrace]:
    """Trace every turn of a conversation from the all-zero state, carrying the state between
    turns; with `zeroed`, also ask each question from a zeroed state for comparison."""
    model, tok = ckpt.model.eval(), ckpt.tokenizer
    stateless = ChatSession(ckpt, carry=False) if zeroed else None
    state = model.zero_state(1, model.embedding.weight.device)
    turns = []
    for n, raw in enumerate(questions, 1):
        try:
            question = clean_question(raw)
        except ValueError as exc:
            raise ContextbotError(f"question {n}: {exc}") from None
        turn = trace_turn(model, tok, question, state)
        if stateless is not None:
            turn.reply_zeroed = stateless.ask(question)
        turns.append(turn)
        state = turn.state_out
    return turns


# -- per-turn summary ---------------------------------------------------------------------------
def _mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]} if dicts else {}


def turn_summary(turn: TurnTrace) -> dict:
    """The row of the table (and of the JSON) for one turn.

    The cosine similarity and distance compare, per layer, the h that ended the previous turn
    (the state this turn was carried in with) with the h that ends this turn (for an LSTM, h
    only: the cell c is not compared). The first turn starts from zeros, so its cosine is
    undefined (None).
    """
    h_in = hidden_of(turn.state_in)[:, 0]  # (layers, hidden)
    h_out = hidden_of(turn.state_out)[:, 0]
    cosine, distance = [], []
    for a, b in zip(h_in, h_out):
        na, nb = float(a.norm()), float(b.norm())
        cosine.append(float(a @ b) / (na * nb) if na > 0 and nb > 0 else None)
        distance.append(float((b - a).norm()))
    layers = len(h_in)
    return {
        "question": turn.question,
        "reply": turn.reply,
        "reply_zeroed": turn.reply_zeroed,
        "carry_changed_answer": turn.changed,
        "norm_in": [float(x.norm()) for x in h_in],
        "norm_out": [float(x.norm()) for x in h_out],
        "cosine_to_previous": cosine,
        "distance_to_previous": distance,
        "gate_means": [_mean_dicts([s.gates[i] for s in turn.steps]) for i in range(layers)],
        "saturated": [_mean_dicts([s.saturated[i] for s in turn.steps]) for i in range(layers)],
    }


def _r(x, digits: int = 5):
    """Round floats (inside lists and dicts) for a compact JSON."""
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, dict):
        return {k: _r(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_r(v, digits) for v in x]
    return x


def trace_json(ckpt: Checkpoint, turns: list[TurnTrace]) -> dict:
    """Everything `inspect --json` prints: the checkpoint, and per turn the summary and every
    character (one entry per token; with the character tokenizer, one per character)."""
    out_turns = []
    for turn in turns:
        entry = _r(turn_summary(turn))
        entry["characters"] = [
            {"char": s.text, "part": s.part, "norms": _r(s.norms), "gates": _r(s.gates),
             "saturated": _r(s.saturated),
             "top5": [[c, round(p, 5)] for c, p in s.top]}
            for s in turn.steps]
        out_turns.append(entry)
    return {"checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "config": ckpt.config.to_dict(),
            "step": ckpt.step, "turns": out_turns}


# -- units that are on over a phrase (LSTMVis) --------------------------------------------------
@dataclass
class Units:
    """The units that are on over a phrase, and where they are on again.

    Each unit's activation is turned into a z-score over the whole conversation (how many
    standard deviations from its usual value). A unit is *on* over the phrase when its mean
    z-score there is far from 0; units that go strongly negative count too, and are flipped
    (`signs`) so that "on" always reads as positive.
    """

    phrase: str
    text: str  # the whole conversation, as fed and generated
    char_step: list[int]  # for each character of `text`, the step that produced it
    step_turn: list[int]  # for each step, its turn (0-based)
    span: tuple[int, int]  # the phrase's characters in `text`: [start, end)
    labels: list[str]  # the selected units' names ("37", or "L2:37" with several layers)
    signs: list[int]
    z: torch.Tensor  # (units, steps) oriented z-scores of the selected units
    score: torch.Tensor  # (steps,) their mean: how strongly the set is on at each step
    echoes: list[dict]  # the words after the phrase where the set is most on again


def find_units(turns: list[TurnTrace], phrase: str, hidden_size: int, k: int = UNITS_SHOWN) -> Units:
    """Select the `k` units most on over the first occurrence of `phrase` (case-insensitive)."""
    if not phrase.strip():
        raise ContextbotError("--units needs a phrase, e.g. --units 'Megan Fox'")
    steps = [s for t in turns for s in t.steps]
    step_turn = [i for i, t in enumerate(turns) for _ in t.steps]
    text = "".join(s.text for s in steps)
    char_step = [i for i, s in enumerate(steps) for _ in s.text]
    # The first occurrence as a whole word or words: "she" does not match inside "finished".
    found = re.search(r"(?<!\w)" + re.escape(phrase.strip()) + r"(?!\w)", text, re.IGNORECASE)
    if found is None:
        raise ContextbotError(f"{phrase!r} does not occur in the conversation (its questions and replies)")
    start, end = found.span()
    span_steps = sorted(set(char_step[start:end]))
    h = torch.stack([s.hidden for s in steps])  # (steps, layers * hidden)
    z = (h - h.mean(0)) / (h.std(0) + 1e-6)
    on = z[span_steps].mean(0)  # (units,)
    k = min(k, on.numel())
    idx = on.abs().topk(k).indices
    signs = torch.where(on[idx] >= 0, 1.0, -1.0)
    zk = (z[:, idx] * signs).T  # (k, steps)
    score = zk.mean(0)
    labels = [unit_label(int(i), hidden_size, h.shape[1] // hidden_size) for i in idx]
    echoes = []
    for m in re.finditer(r"\w{2,}", text[end:]):  # later words of two letters or more (not Q, A)
        ws = sorted(set(char_step[end + m.start():end + m.end()]))
        echoes.append({"word": m.group(), "at": end + m.start(), "turn": step_turn[ws[0]] + 1,
                       "part": steps[ws[0]].part,
                       "score": float(score[ws].mean())})
    echoes.sort(key=lambda e: -e["score"])
    return Units(phrase, text, char_step, step_turn, (start, end), labels,
                 [int(s) for s in signs], zk, score, echoes[:ECHOES_SHOWN])


def units_json(ckpt: Checkpoint, units: Units) -> dict:
    """Everything `inspect --units TEXT --json` prints."""
    first, last = units.char_step[units.span[0]], units.char_step[units.span[1] - 1]
    return {"checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "config": ckpt.config.to_dict(),
            "phrase": units.phrase, "span": list(units.span),
            "units": [{"unit": lab, "sign": s, "z_over_phrase": round(float(row[first:last + 1].mean()), 4)}
                      for lab, s, row in zip(units.labels, units.signs, units.z)],
            "echoes": _r(units.echoes, 4),
            "text": units.text,
            "score_per_character": [round(float(units.score[i]), 4) for i in units.char_step]}


# -- terminal output ----------------------------------------------------------------------------
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
    table = Table(title=header(ckpt), caption=f"gates: {legend}; saturated: below 0.1 or above 0.9",
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
    console.print(header(ckpt), highlight=False)
    console.print(f"The {len(units.labels)} units most on over {units.phrase!r}: "
                  f"{', '.join(('-' if s < 0 else '') + lab for lab, s in zip(units.labels, units.signs))}"
                  "  (-: on means strongly negative)", highlight=False)
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
        console.print(f"After the phrase they are most on again at: {words}", highlight=False)


# -- the command --------------------------------------------------------------------------------
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
    from . import probe
    with probe.one_thread():  # thousands of small steps: see `probe.one_thread`
        return _run(args, probe)


def _run(args, probe) -> int:
    paths = args.checkpoint or [None]
    if args.conversations is not None and not args.probe:
        raise ContextbotError("--conversations is for --probe")
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
    turns = trace_conversation(ckpt, questions, zeroed=args.units is None)
    console = Console(stderr=args.json)  # with --json, stdout carries only the JSON
    if args.units is not None:
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
        console.print(f"wrote {plot_path}", highlight=False)
    return 0
