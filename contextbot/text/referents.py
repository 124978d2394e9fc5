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

import hashlib
import json
import re

from .corpus import Conversation
from .dialogue import UNKNOWN_PERSON
from .facts import Entity

NOBODY, UNKNOWN = 0, 1  # classes; person i of facts.json is class 2 + i
PRONOUNS = ("he", "she")


class Referents:
    """Labels conversations with the referents of "he" and "she", for the people of a facts file."""

    def __init__(self, entities: list[Entity]):
        self.entities = list(entities)
        self.classes = len(self.entities) + 2
        names = sorted(self.entities, key=lambda e: -len(e.name))  # longest first: no prefix wins
        self._pattern = re.compile("|".join(r"(?<!\w)" + re.escape(e.name) + r"(?!\w)" for e in names),
                                   re.IGNORECASE) if names else None
        self._by_name = {e.name.lower(): i for i, e in enumerate(self.entities)}

    def turns(self, conv: Conversation) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Per turn: ((he, she) while its question is read, (he, she) from its answer on)."""
        slots = {"he": NOBODY, "she": NOBODY}
        out = []
        for question, answer in conv.turns:
            before = (slots["he"], slots["she"])
            if answer == UNKNOWN_PERSON:
                slots = {"he": UNKNOWN, "she": UNKNOWN}
            elif self._pattern is not None:
                for m in self._pattern.finditer(question):
                    i = self._by_name[m.group(0).lower()]
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
            self._pattern.search(q) for c in convs for q, _ in c.turns)
