"""Units that are on over a phrase, in the spirit of LSTMVis (Strobelt et al., 2017).

`contextbot inspect --units 'Megan Fox'` traces a conversation (trace.py), picks the hidden units
whose activation stands out most over the first occurrence of the phrase, and shows where in the
later turns the same units are on again: a unit that carries "Megan Fox" through small talk lights
up again where the bot answers about her.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import ContextbotError
from ..model.checkpoint import Checkpoint
from .trace import TurnTrace, _r, unit_label

UNITS_SHOWN = 8  # units that --units selects
ECHOES_SHOWN = 6  # words listed where the selected units fire again


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
