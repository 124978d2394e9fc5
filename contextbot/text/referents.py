"""Who "he" and "she" mean, read off the corpus: labels for an auxiliary training signal.

The language-model loss teaches the state to remember a person only through the few characters
that need it: the answer to a pronoun question, turns after the introduction. Everywhere else
nothing asks the state to hold the name, so for a long time nothing does; the model learns
spelling first and memory late.

This module labels every position of a training conversation with the current referent of each
pronoun, and training adds a small linear *probe head* on the hidden state that must predict them
(`--referent-weight`). Then every character, small talk included, carries a gradient that says
"keep who 'she' is in the state". The head takes no part in chat: replies come from the language
model alone, and `contextbot eval`'s stateless comparison still proves that they come from the
carried state. (contextbot inspect --probe measures the same readout after training, with a probe
fitted afterwards.)

The labels follow the corpus's own rules (dialogue.py), read from its text and facts.json:
a question naming a known person makes them the referent of their pronoun; an answer "I don't
know who that is." makes both pronouns mean that unknown person; nothing else changes them. A
question's characters carry the referents from before it; from the prompt's tail on (`\\nA: `,
turns.PROMPT_TAIL), and through the answer, the ones after it: the compound turn "Who is X, and
where does he live?" must know X by the time it answers (train/batches.py places the labels).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
import unicodedata

from .corpus import Conversation
from .dialogue import UNKNOWN_PERSON
from .facts import Entity, name_key

NOBODY, UNKNOWN = 0, 1  # classes; person i of facts.json is class 2 + i
PRONOUNS = ("he", "she")


class Referents:
    """Labels conversations with the referents of "he" and "she", for the people of a facts file."""

    def __init__(self, entities: list[Entity]):
        self.entities = list(entities)
        self.classes = len(self.entities) + 2
        # Names are found in the question's name_key (facts.py), the one form that every case the
        # corpus writes a name in folds to; the pattern matches keys literally, so what it finds
        # is always a key of the table. The first of two people with one key wins (load_facts
        # refuses such files).
        self._by_key: dict[str, int] = {}
        for i, e in enumerate(self.entities):
            self._by_key.setdefault(name_key(e.name), i)
        keys = sorted(self._by_key, key=lambda k: (-len(k), k))  # longest first: no prefix wins
        inside = _word_chars()  # a name is a whole word: no letter, digit or combining mark beside it
        self._pattern = re.compile(
            f"(?<![{inside}])(?:" + "|".join(map(re.escape, keys)) + f")(?![{inside}])"
        ) if keys else None

    def people_in(self, question: str) -> list[int]:
        """The indices of the people a question names, in the order it names them."""
        if self._pattern is None:
            return []
        return [self._by_key[m.group(0)] for m in self._pattern.finditer(name_key(question))]

    def turns(self, conv: Conversation) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Per turn: ((he, she) while its question is read, (he, she) from its answer on)."""
        slots = {"he": NOBODY, "she": NOBODY}
        out = []
        for question, answer in conv.turns:
            before = (slots["he"], slots["she"])
            if answer == UNKNOWN_PERSON:
                slots = {"he": UNKNOWN, "she": UNKNOWN}
            else:
                for i in self.people_in(question):
                    slots[self.entities[i].pronoun] = 2 + i
            out.append((before, (slots["he"], slots["she"])))
        return out

    def key(self) -> str:
        """A fingerprint of the classes: the people, their pronouns and their order. Class 2 + i
        is entity i, so a facts file with the same people in another order is another labelling,
        and a checkpoint's referent head only continues training under the same key."""
        people = json.dumps([[e.name, e.pronoun] for e in self.entities], ensure_ascii=False)
        return hashlib.sha256(people.encode("utf-8")).hexdigest()

    def names_any(self, convs: list[Conversation]) -> bool:
        """Whether any conversation names a known person: without that there is nothing to learn."""
        return self._pattern is not None and any(
            self._pattern.search(name_key(q)) for c in convs for q, _ in c.turns)


@functools.cache
def _word_chars() -> str:
    """A regular-expression class body for the characters that continue a word: `\\w` and the
    combining marks, which `\\w` leaves out (the key of "ALİ" is "ali" and a combining dot: not
    the name "Ali")."""
    marks = [c for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "M"]
    ranges, start, prev = [], marks[0], marks[0]
    for c in marks[1:] + [-1]:
        if c != prev + 1:
            ranges.append(re.escape(chr(start)) + ("-" + re.escape(chr(prev)) if prev > start else ""))
            start = c
        prev = c
    return r"\w" + "".join(ranges)
