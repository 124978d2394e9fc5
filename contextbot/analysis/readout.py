"""What the memory holds: who "he" and "she" mean, read off the carried state.

Every checkpoint trained with the referent signal (text/referents.py) carries a small linear
layer beside the language model, `RecurrentLM.referent_head`, trained to say after every
character who "he" and who "she" mean: nobody yet, a stranger (someone the facts file does not
name), or one of the people of the facts file. It is a *probe*: a weak classifier on the hidden
state, trained beside the model. The bot's replies never read it; they come from the language
model alone. So what it shows is what the state holds in a form one linear layer can read, and
`contextbot eval`'s agreement row says how often that readable memory and the memory the replies
use agree.

`Readout.of(checkpoint)` gives the reader for a checkpoint (None for one trained without the
head); `readout.read(state)` the two readings for a state, `readout.probabilities(states)` the
class probabilities for many states at once.

The head's classes are `NOBODY`, `UNKNOWN` and then the people of the facts file it was trained
with, in that file's order. New checkpoints store those names in their metadata
(`referent_names`); for older ones the names are found by matching the checkpoint's fingerprint of
its people (`Referents.key()`) against the shipped facts file and the one beside the training
corpus, and are otherwise shown as "person 1", "person 2", ...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ContextbotError
from ..model.checkpoint import Checkpoint
from ..model.network import RecurrentLM, State, hidden_of
from ..paths import DEFAULT_FACTS
from ..text.facts import load_facts
from ..text.referents import PRONOUNS, Referents

#: How the readout names its two classes that are not people.
NOBODY_LABEL = "nobody"
UNKNOWN_LABEL = "a stranger"


@dataclass(frozen=True)
class Reading:
    """Who one pronoun means, as the readout reads the state: the likeliest class and its
    probability."""

    pronoun: str  # "he" or "she"
    label: str  # a person's name, NOBODY_LABEL or UNKNOWN_LABEL
    index: int  # the class: NOBODY, UNKNOWN, or 2 + the person's index in the facts file
    probability: float

    @property
    def is_person(self) -> bool:
        return self.index >= 2

    def __str__(self) -> str:
        return f"{self.pronoun} → {self.label} {self.probability:.2f}"


def referent_labels(ckpt: Checkpoint) -> list[str]:
    """The labels of the head's classes: nobody, a stranger, then the people, by name where the
    checkpoint says (or a facts file with its fingerprint does), else "person 1", ..."""
    classes = ckpt.config.referents
    people = classes - 2
    options = ckpt.train_options
    names = options.get("referent_names")
    if not (isinstance(names, list) and len(names) == people and all(isinstance(n, str) for n in names)):
        names = _names_by_key(options, people)
    return [NOBODY_LABEL, UNKNOWN_LABEL, *names]


def _names_by_key(options: dict, people: int) -> list[str]:
    key = options.get("referents")
    candidates = [DEFAULT_FACTS]
    corpus = options.get("corpus")
    if isinstance(corpus, str) and corpus:
        candidates.append(Path(corpus).with_name("facts.json"))
    if isinstance(key, str) and key:
        for path in candidates:
            try:
                entities = load_facts(path)
            except ContextbotError:
                continue
            if len(entities) == people and Referents(entities).key() == key:
                return [e.name for e in entities]
    return [f"person {i + 1}" for i in range(people)]


class Readout:
    """The referent head of one model, and the names of its classes."""

    def __init__(self, model: RecurrentLM, labels: list[str]):
        if model.referent_head is None:
            raise ValueError("this model has no referent head")
        if len(labels) != model.config.referents:
            raise ValueError(f"{len(labels)} labels for {model.config.referents} classes")
        self.model, self.labels = model, list(labels)

    @classmethod
    def of(cls, ckpt: Checkpoint) -> "Readout | None":
        """The readout of a checkpoint; None when it was trained without the referent signal."""
        if ckpt.model.referent_head is None or ckpt.config.referents < 3:
            return None
        return cls(ckpt.model, referent_labels(ckpt))

    @torch.no_grad()
    def probabilities(self, hidden: torch.Tensor) -> torch.Tensor:
        """Class probabilities for top-layer hidden vectors: (..., hidden) -> (..., 2, classes);
        row 0 is "he", row 1 "she" (PRONOUNS)."""
        head = self.model.referent_head
        logits = head(hidden.to(head.weight)).unflatten(-1, (len(PRONOUNS), len(self.labels)))  # on the head's device
        return logits.softmax(-1)

    def read(self, state: State) -> tuple[Reading, Reading]:
        """Who "he" and "she" mean in a carried state (the first conversation of its batch)."""
        top = hidden_of(state)[-1, 0]  # (hidden,): the top layer's h, what the head reads in training
        return self.readings(self.probabilities(top))

    def readings(self, probs: torch.Tensor) -> tuple[Reading, Reading]:
        """(2, classes) probabilities -> a Reading per pronoun."""
        out = []
        for row, pronoun in zip(probs, PRONOUNS):
            p, i = row.max(-1)
            out.append(Reading(pronoun, self.labels[int(i)], int(i), float(p)))
        return out[0], out[1]


__all__ = ["NOBODY_LABEL", "UNKNOWN_LABEL", "Reading", "Readout", "referent_labels"]
