"""`contextbot inspect`: how the hidden state carries a conversation from one turn to the next.

A recurrent chat bot has no memory but its state: a few hundred numbers per layer that it carries
from character to character and, in contextbot, from turn to turn. When it answers "Where does
she live?" correctly, the name it needs was read several lines earlier and survives only in those
numbers. This module makes that visible. It runs a conversation one character at a time through
`reference.step` (contextbot/model/recurrence/reference.py, which recomputes each step from the
layer's weights, so the gates can be seen) and records, for every character:

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
lives in `contextbot.analysis.probe`, the figures in `contextbot.analysis.plots`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..chat import MAX_REPLY, ChatSession, clean_question
from ..errors import ContextbotError
from ..model.checkpoint import Checkpoint
from ..model.network import RecurrentLM, State, hidden_of
from ..model.recurrence import reference as gates
from ..text.tokenizer import Tokenizer
from ..text.turns import END, END_PART, PROMPT_PART, REPLY_PART, drive
from .evaluate import SEED_DIALOGUE
from .readout import Readout

TOP_K = 5  # next characters kept per step


def seed_questions() -> list[str]:
    """The questions of the seed dialogue (Tom Cruise, then Megan Fox), as `contextbot eval` asks them."""
    return [q for q, _ in SEED_DIALOGUE]


# -- the trace ----------------------------------------------------------------------------------
@dataclass
class CharStep:
    """One token through the network; with the character tokenizer, one character.

    `part` says where the token came from, as `turns.drive` names it: "question" for the fed
    prompt `Q: ...\\nA: `, "reply" for a generated token, "end" for the newline fed after the
    reply (as `ChatSession` does).
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
    """One turn by the session's protocol (`turns.drive`), one token at a time through the
    reference recurrence (`reference.step`), keeping every token's gates.

    Feed `Q: {question}\\nA: `, generate greedily until the newline token, feed the newline. The
    reply equals `ChatSession.ask`'s at temperature 0 (the tests check it); `question` must
    already be cleaned with `clean_question`.
    """
    state_in = state
    steps: list[CharStep] = []
    prompt_text = tok.decoder()  # what each of the prompt's tokens spells

    def feed(tokens: list[int], part: str) -> torch.Tensor:
        nonlocal state
        for token in tokens:
            t = gates.step(model, token, state)
            state = t.state
            p, i = t.logits.softmax(-1).topk(min(TOP_K, t.logits.numel()))
            # A reply token's text comes from the driver, once it has been fed (below).
            text = prompt_text.push(token) if part == PROMPT_PART else END if part == END_PART else ""
            steps.append(CharStep(
                text=text, part=part,
                norms=[float(h.norm()) for h in t.hidden],
                gates=gates.gate_means(t), saturated=gates.saturation(t),
                top=[(piece_label(tok, int(j)), float(q)) for q, j in zip(p, i)],
                hidden=torch.cat(t.hidden)))
        if part == PROMPT_PART:
            steps[-1].text += prompt_text.flush()
        return t.logits

    def greedy(logits: torch.Tensor) -> int:
        return int(logits.argmax())  # as ChatSession at temperature 0

    for _, text in drive(tok, question, feed, greedy, MAX_REPLY):
        steps[-1].text += text  # the reply token just fed, or the rest of its character
    reply = "".join(s.text for s in steps if s.part == REPLY_PART)
    return TurnTrace(question, reply, steps, state_in, state)


def trace_conversation(ckpt: Checkpoint, questions: list[str], zeroed: bool = True,
                       carry: bool = True) -> list[TurnTrace]:
    """Trace every turn of a conversation from the all-zero state, carrying the state between
    turns; with `zeroed`, also ask each question from a zeroed state for comparison. With
    `carry=False`, every turn is itself traced from the zero state (the stateless run, character
    by character; its replies are the zeroed replies)."""
    model, tok = ckpt.model.eval(), ckpt.tokenizer
    stateless = ChatSession(ckpt, carry=False) if zeroed and carry else None
    zero = model.zero_state(1, model.embedding.weight.device)
    state = zero
    turns = []
    for n, raw in enumerate(questions, 1):
        try:
            question = clean_question(raw)
        except ValueError as exc:
            raise ContextbotError(f"question {n}: {exc}") from None
        turn = trace_turn(model, tok, question, state if carry else zero)
        if stateless is not None:
            turn.reply_zeroed = stateless.ask(question)
        elif not carry:
            turn.reply_zeroed = turn.reply
        turns.append(turn)
        state = turn.state_out
    return turns


def readout_probabilities(readout: Readout, turn: TurnTrace, hidden: int) -> torch.Tensor:
    """The readout after every character of a turn, (steps, 2, classes): the head on the top
    layer's h (the last `hidden` entries of each step's `hidden`)."""
    return readout.probabilities(torch.stack([s.hidden[-hidden:] for s in turn.steps]))


def _readings_json(readout: Readout, probs: torch.Tensor) -> dict:
    return {r.pronoun: [r.label, round(r.probability, 5)] for r in readout.readings(probs)}


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


def trace_json(ckpt: Checkpoint, turns: list[TurnTrace], stateless: list[TurnTrace] | None = None) -> dict:
    """Everything `inspect --json` prints: the checkpoint, and per turn the summary and every
    character (one entry per token; with the character tokenizer, one per character).

    For a checkpoint with a referent head (analysis/readout.py), every character also has
    "readout": {"he": [label, p], "she": [label, p]}, the head's likeliest class after it and
    its probability, and the top level "readout_labels" lists the classes. With `stateless`
    (`inspect --readout`: each turn traced from a zeroed state), "stateless" has those turns:
    question, reply and the readout per character."""
    readout = Readout.of(ckpt)
    hidden = ckpt.config.hidden

    def characters(turn: TurnTrace, full: bool) -> list[dict]:
        probs = readout_probabilities(readout, turn, hidden) if readout is not None else None
        out = []
        for k, s in enumerate(turn.steps):
            entry = ({"char": s.text, "part": s.part, "norms": _r(s.norms), "gates": _r(s.gates),
                      "saturated": _r(s.saturated), "top5": [[c, round(p, 5)] for c, p in s.top]}
                     if full else {"char": s.text, "part": s.part})
            if probs is not None:
                entry["readout"] = _readings_json(readout, probs[k])
            out.append(entry)
        return out

    out_turns = []
    for turn in turns:
        entry = _r(turn_summary(turn))
        entry["characters"] = characters(turn, True)
        out_turns.append(entry)
    out = {"checkpoint": str(ckpt.path), "sha256": ckpt.sha256, "config": ckpt.config.to_dict(),
           "step": ckpt.step, "turns": out_turns}
    if readout is not None:
        out["readout_labels"] = list(readout.labels)
    if stateless is not None:
        out["stateless"] = [{"question": t.question, "reply": t.reply, "characters": characters(t, False)}
                            for t in stateless]
    return out
