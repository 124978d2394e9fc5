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

from ..text.dialogue import HELD_OUT_QUESTIONS, INTRO_FORMS, Talk, Turn, phrasing
from ..text.facts import ATTRIBUTES, Entity
from ..chat import BatchSession, ChatSession

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
        item.scored.add(len(talk.turns) - 1 if turn_index is None else turn_index)

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


class Scores(NamedTuple):
    """What `run` measured: by category; the pronoun categories by small-talk turns since the
    introduction; and the unseen phrasings one by one, to show which ones the model generalises to."""

    by_category: dict[str, Result]
    by_distance: dict[int, Result]
    by_phrasing: dict[str, Result]


def run(session: ChatSession, items: list[Item], batch: int = 512) -> Scores:
    """Talk every item through the model (many conversations at once, with `BatchSession`, which
    follows ChatSession's protocol exactly), and score every scored turn."""
    by_cat = {k: Result() for k, _ in CATEGORIES}
    by_dist: dict[int, Result] = {}
    by_phrasing = {phrasing(t): Result() for ts in HELD_OUT_QUESTIONS.values() for t in ts}
    talker = BatchSession(session)
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        replies = talker.run([[t.question for t in it.turns] for it in chunk],
                             [it.zero_before for it in chunk])
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
                  {k: v for k, v in by_phrasing.items() if v.total})


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
