"""`contextbot eval`: how often the bot knows who "he" and "she" mean, by kind of conversation.

Fresh conversations are generated from facts.json with a seed that training never uses, talked
through `ChatSession` turn by turn, and each scored reply is right when it contains the expected
fact and none of the facts of the other people in play. The *stateless* category asks the same
pronoun questions with the state zeroed just before the question: it must fall to chance, which
is the proof that the right answers come from the carried state.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..text.dialogue import HELD_OUT_QUESTIONS, INTRO_FORMS, Talk, Turn, phrasing
from ..text.referents import PRONOUNS
from ..text.facts import ATTRIBUTES, Entity
from ..chat import BatchSession, ChatSession
from .readout import Readout

# (key, label). The order is the table's order.
CATEGORIES = [
    ("intro", "introductions"),
    ("near", "pronoun, 0-3 turns after the introduction"),
    ("far", "pronoun, 4-8 turns after (beyond training)"),
    ("switch", "switch to a new person of the same gender"),
    ("two", "a man and a woman in play"),
    ("compound", "compound turns"),
    ("unknown", "unknown person, and a pronoun about them"),
    ("nobody", "pronoun with nobody in context"),
    ("noise", "case and punctuation noise"),
    ("unseen", "unseen phrasings (generalisation)"),
    ("stateless", "stateless: state zeroed before the question"),
]
TARGETS = {"far": 0.95, "unseen": 0.80}  # every other category: 0.99; stateless: at most 0.05
DEFAULT_TARGET = 0.99
STATELESS_MAX = 0.05
#: The shipped LSTM's target: every category but the unseen phrasings (the stateless one at most STATELESS_MAX).
LSTM_TARGET = 0.95
SEED_DIALOGUE = [
    ("Who is Tom cruise. Where he lives?", ("American actor", "Beverly Hills")),
    ("Who is Megan Fox, and where she lives?", ("American actress", "Los Angeles")),
    ("Where she lives?", ("Los Angeles",)),
    ("What is her profession?", ("actress",)),
    ("Whom she Married?", ("Brian Austin Green",)),
]
EVAL_SEED = 1_000_003  # corpus build uses small seeds; this one is never used for training


@dataclass
class Item:
    """One generated conversation; `scored` marks the turns that count, `zero_before` the turns
    asked from a zeroed state."""

    category: str
    turns: list[Turn]
    scored: set[int] = field(default_factory=set)
    zero_before: set[int] = field(default_factory=set)
    distance: int | None = None
    #: For each scored pronoun question whose right answer is about a known person: that person,
    #: and everyone in play at that turn (for `agreement`).
    about: dict[int, tuple[Entity, tuple[Entity, ...]]] = field(default_factory=dict)


def is_right(reply: str, turn: Turn) -> bool:
    """Right when every expected fact is in the reply and no other person's fact is."""
    r = reply.lower()
    return all(x.lower() in r for x in turn.expected) and not any(x.lower() in r for x in turn.forbidden)


def _pick(rng: random.Random, entities: list[Entity], pronoun: str | None = None,
          exclude: tuple = ()) -> Entity:
    pool = [e for e in entities if (pronoun is None or e.pronoun == pronoun) and e not in exclude]
    return rng.choice(pool)


def _filler(talk: Talk, n: int) -> None:
    for _ in range(n):
        talk.small_talk()


def make_item(category: str, rng: random.Random, entities: list[Entity]) -> Item:
    """Build one conversation of a category, with its scored turns."""
    questions = HELD_OUT_QUESTIONS if category == "unseen" else None
    talk = Talk(rng, entities, noise=1.0 if category == "noise" else 0.0)
    if questions:
        talk.questions = questions
    item = Item(category, talk.turns)

    def score(turn_index: int | None = None) -> None:
        i = len(talk.turns) - 1 if turn_index is None else turn_index
        item.scored.add(i)
        turn = talk.turns[i]
        who = talk.slots.get(turn.pronoun) if turn.pronoun else None
        if turn.kind in ("fact", "compound") and isinstance(who, Entity):
            item.about[i] = (who, tuple(talk.in_play))

    if category == "intro":
        if rng.random() < 0.5:
            talk.intro(_pick(rng, entities))
        talk.intro(_pick(rng, entities), form=rng.choice(INTRO_FORMS[:2]))
        score()
    elif category in ("near", "far", "stateless", "unseen", "noise"):
        e = _pick(rng, entities)
        talk.intro(e)
        k = rng.randint(4, 8) if category == "far" else rng.randint(0, 3)
        _filler(talk, k)
        talk.ask(e.pronoun)
        score()
        item.distance = k
        if category == "stateless":
            item.zero_before.add(len(talk.turns) - 1)
    elif category == "switch":
        a = rng.choice(_switchable(entities))
        b = _pick(rng, entities, a.pronoun, exclude=(a,))
        talk.intro(a)
        talk.ask(a.pronoun)
        _filler(talk, rng.randint(0, 2))
        talk.intro(b)
        _filler(talk, rng.randint(0, 2))
        talk.ask(b.pronoun)
        score()
    elif category == "two":
        m, w = _pick(rng, entities, "he"), _pick(rng, entities, "she")
        for e in rng.sample([m, w], 2):
            talk.intro(e)
            _filler(talk, rng.randint(0, 1))
        for p in rng.sample(["he", "she"], 2):
            talk.ask(p)
            score()
    elif category == "compound":
        talk.compound(_pick(rng, entities), rng.choice(ATTRIBUTES))
        score()
    elif category == "unknown":
        if rng.random() < 0.5:
            talk.intro(_pick(rng, entities))
        talk.unknown()
        score()
        _filler(talk, rng.randint(0, 2))
        talk.ask(rng.choice(["he", "she"]))
        score()
    elif category == "nobody":
        if rng.random() < 0.5:
            _filler(talk, rng.randint(0, 1))
            talk.ask(rng.choice(["he", "she"]))
        else:
            e = _pick(rng, entities)
            talk.intro(e)
            talk.ask("she" if e.pronoun == "he" else "he")
        score()
    else:
        raise ValueError(category)
    return item


def _switchable(entities: list[Entity]) -> list[Entity]:
    """The people who have another person of their gender to switch to."""
    count = Counter(e.pronoun for e in entities)
    return [e for e in entities if count[e.pronoun] >= 2]


def not_applicable(category: str, entities: list[Entity]) -> str | None:
    """Why a category cannot be built from these people (a note for the report), or None.
    A facts file needs one man and one woman; only the switch needs two people of one gender."""
    if category == "switch" and not _switchable(entities):
        return "needs two people of one gender in the facts file"
    return None


def generate(entities: list[Entity], seed: int = EVAL_SEED, per_category: int = 200) -> list[Item]:
    """`per_category` conversations of every category that these people allow (not_applicable)."""
    items = []
    for key, _ in CATEGORIES:
        if not_applicable(key, entities):
            continue
        rng = random.Random(f"contextbot-eval-{seed}-{key}")
        items += [make_item(key, rng, entities) for _ in range(per_category)]
    return items


@dataclass
class Result:
    right: int = 0
    total: int = 0
    examples: list = field(default_factory=list)  # a few wrong replies, for the curious

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 0.0


AGREEMENT_LABEL = "readout agrees with the reply"


@dataclass
class Agreement(Result):
    """How often the referent head's reading (analysis/readout.py) names the person the bot's
    reply is about (`agreement`); `left_out` counts the questions it could not judge: those
    whose fact another person in play shares, and those whose reply is about no one in play."""

    left_out: int = 0


class Scores(NamedTuple):
    """What `run` measured: by category; the pronoun categories by small-talk turns since the
    introduction; the unseen phrasings one by one, to show which ones the model generalises to;
    and how often the readout agrees with the replies (None for a checkpoint without the head)."""

    by_category: dict[str, Result]
    by_distance: dict[int, Result]
    by_phrasing: dict[str, Result]
    agreement: Agreement | None = None


def identifies(who: Entity, attribute: str, people: tuple[Entity, ...]) -> bool:
    """Does `who`'s fact for `attribute` tell them apart from everyone else in play? Not when
    another person's fact is the same, contains it or is contained in it ("American" twice)."""
    mine = who.fact(attribute).lower()
    return all(e is who or (mine not in e.fact(attribute).lower() and e.fact(attribute).lower() not in mine)
               for e in people)


def reply_people(reply: str, attribute: str, people: tuple[Entity, ...]) -> list[Entity]:
    """The people in play whose name, or whose fact for the asked attribute, the reply contains
    (case folded): none for "Who do you mean?", several for a reply that mixes people up."""
    r = reply.lower()
    return [e for e in people if e.name.lower() in r or e.fact(attribute).lower() in r]


def reply_person(reply: str, attribute: str, people: tuple[Entity, ...]) -> Entity | None:
    """The person in play a reply is about: the one person `reply_people` finds. None when it
    finds no one, or several people."""
    hits = reply_people(reply, attribute, people)
    return hits[0] if len(hits) == 1 else None


def agreement(readings: list[str], turns: list[Turn], replies: list[str],
              about: list[tuple[Entity, tuple[Entity, ...]]], result: Agreement) -> None:
    """Count into `result` whether the readout names the person each reply is about.

    Judged: every scored pronoun question whose right answer is about a known person
    (`Item.about`: the "fact" and "compound" turns), asked with the carried state (the stateless
    category's zeroed questions are not), and whose right fact tells that person apart from the
    others in play (`identifies`), and whose reply is about someone in play; the rest are
    `left_out` (a reply about no one, "Who do you mean?", says nothing about whom it means).
    `readings[i]` is the label of the readout's likeliest class for the question's pronoun at the
    end of the prompt (after `Q: ...\\nA: `, the state the reply is generated from). It agrees
    when that label is the name of the person the reply is about (`reply_person`); a reply about
    another person, or about several people, disagrees.
    """
    for label, turn, reply, (who, people) in zip(readings, turns, replies, about):
        hits = reply_people(reply, turn.attribute, people)
        if not identifies(who, turn.attribute, people) or not hits:
            result.left_out += 1
            continue
        ok = len(hits) == 1 and hits[0].name == label
        result.total += 1
        result.right += ok
        if not ok and len(result.examples) < 3:
            result.examples.append((turn.question, reply, f"{turn.pronoun} → {label}"))


def run(session: ChatSession, items: list[Item], batch: int = 512) -> Scores:
    """Talk every item through the model (many conversations at once, with `BatchSession`, which
    follows ChatSession's protocol exactly), and score every scored turn. For a checkpoint with
    a referent head, the same pass keeps the states at the end of each prompt, and `agreement`
    compares what the head reads there with the reply."""
    by_cat = {k: Result() for k, _ in CATEGORIES}
    by_dist: dict[int, Result] = {}
    by_phrasing = {phrasing(t): Result() for ts in HELD_OUT_QUESTIONS.values() for t in ts}
    readout = Readout.of(session.checkpoint)
    agreed = Agreement() if readout is not None else None
    talker = BatchSession(session)
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        questions = [[t.question for t in it.turns] for it in chunk]
        zero_before = [it.zero_before for it in chunk]
        if readout is None:
            replies = talker.run(questions, zero_before)
        else:
            replies, tops = talker.run_with_prompt_states(questions, zero_before)
            judged = [(item, n, i) for n, item in enumerate(chunk) for i in sorted(item.about)
                      if i not in item.zero_before]
            if judged:
                probs = readout.probabilities(torch.stack([tops[n][i] for _, n, i in judged]))
                rows = torch.tensor([PRONOUNS.index(item.turns[i].pronoun) for item, _, i in judged])
                best = probs[torch.arange(len(judged)), rows].argmax(-1).tolist()
                agreement([readout.labels[k] for k in best], [item.turns[i] for item, _, i in judged],
                          [replies[n][i] for _, n, i in judged], [item.about[i] for item, _, i in judged],
                          agreed)
        for item, item_replies in zip(chunk, replies):
            for i in sorted(item.scored):
                turn, reply = item.turns[i], item_replies[i]
                ok = is_right(reply, turn)
                res = by_cat[item.category]
                res.total += 1
                res.right += ok
                if not ok and len(res.examples) < 3:
                    res.examples.append((turn.question, reply, turn.answer))
                if item.distance is not None and item.category in ("near", "far"):
                    d = by_dist.setdefault(item.distance, Result())
                    d.total += 1
                    d.right += ok
                if item.category == "unseen":  # every scored turn there is a pronoun question
                    p = by_phrasing[phrasing(turn.template)]
                    p.total += 1
                    p.right += ok
    return Scores(by_cat, dict(sorted(by_dist.items())),
                  {k: v for k, v in by_phrasing.items() if v.total}, agreed)


def seed_dialogue(session: ChatSession) -> list[dict]:
    """The seed dialogue (Tom Cruise, then Megan Fox, in the words people type), from a fresh state."""
    session.reset()
    out = []
    for q, expected in SEED_DIALOGUE:
        reply = session.ask(q)
        out.append({"question": q, "reply": reply,
                    "right": all(x.lower() in reply.lower() for x in expected)})
    session.reset()
    return out


def target_for(category: str) -> tuple[str, float]:
    if category == "stateless":
        return "<=", STATELESS_MAX
    return ">=", TARGETS.get(category, DEFAULT_TARGET)


def meets(category: str, accuracy: float) -> bool:
    op, t = target_for(category)
    return accuracy <= t if op == "<=" else accuracy >= t
