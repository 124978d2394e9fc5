"""`corpus/facts.json`: the people the bot can know, and the sentences that state their facts.

Each entity is `{"name", "pronoun": "he"|"she", "profession", "nationality", "city",
"spouse": string or null, "born": year}`. The answer sentences are built here, in one place,
so that the corpus generator and the evaluation agree on what a right answer says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ContextbotError
from ..files import read_text

ATTRIBUTES = ("profession", "city", "spouse", "born", "nationality")
PRONOUN_FORMS = {
    "he": {"s": "he", "o": "him", "p": "his"},
    "she": {"s": "she", "o": "her", "p": "her"},
}


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


@dataclass(frozen=True)
class Entity:
    name: str
    pronoun: str
    profession: str
    nationality: str
    city: str
    spouse: str | None
    born: int

    @property
    def subject(self) -> str:
        """'He' or 'She', as an answer begins."""
        return self.pronoun.capitalize()

    def intro(self) -> str:
        """'He is an American actor.'"""
        return f"{self.subject} is {article(self.nationality)} {self.nationality} {self.profession}."

    def fact(self, attribute: str) -> str:
        """The value that a right answer about `attribute` must contain."""
        if attribute == "spouse":
            return self.spouse if self.spouse else "not married"
        if attribute == "born":
            return str(self.born)
        return getattr(self, attribute)

    def answer(self, attribute: str) -> str:
        """The sentence that answers a question about `attribute`: 'He lives in Beverly Hills.'"""
        s = self.subject
        if attribute == "profession":
            return f"{s} is {article(self.profession)} {self.profession}."
        if attribute == "city":
            return f"{s} lives in {self.city}."
        if attribute == "spouse":
            return f"{s} married {self.spouse}." if self.spouse else f"{s} is not married."
        if attribute == "born":
            return f"{s} was born in {self.born}."
        if attribute == "nationality":
            return f"{s} is {self.nationality}."
        raise ValueError(attribute)

    def compound_answer(self, attribute: str) -> str:
        """'He is an American actor and lives in Beverly Hills.' (the intro already covers
        profession and nationality)."""
        tail = {
            "city": f"lives in {self.city}",
            "spouse": f"married {self.spouse}" if self.spouse else "is not married",
            "born": f"was born in {self.born}",
        }.get(attribute)
        return self.intro() if tail is None else self.intro()[:-1] + f" and {tail}."


def load_facts(path: str | Path) -> list[Entity]:
    """Read and validate a facts file; every problem is a one-line ContextbotError."""
    path = Path(path)
    try:
        raw = json.loads(read_text(path, "facts"))
    except json.JSONDecodeError as exc:
        raise ContextbotError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("entities"), list):
        raise ContextbotError(f'{path}: expected {{"entities": [...]}}')
    entities, names = [], set()
    for i, e in enumerate(raw["entities"]):
        where = f"{path}: entity {i + 1}"
        if not isinstance(e, dict):
            raise ContextbotError(f"{where}: not an object")
        for key in ("name", "pronoun", "profession", "nationality", "city"):
            if not isinstance(e.get(key), str) or not e[key].strip():
                raise ContextbotError(f"{where}: '{key}' must be a non-empty string")
        if e["pronoun"] not in PRONOUN_FORMS:
            raise ContextbotError(f"{where}: 'pronoun' must be 'he' or 'she'")
        if e.get("spouse") is not None and (not isinstance(e["spouse"], str) or not e["spouse"].strip()):
            raise ContextbotError(f"{where}: 'spouse' must be a name or null")
        if not isinstance(e.get("born"), int) or isinstance(e.get("born"), bool):
            raise ContextbotError(f"{where}: 'born' must be a year (an integer)")
        if e["name"].lower() in names:
            raise ContextbotError(f"{where}: duplicate name {e['name']!r}")
        names.add(e["name"].lower())
        entities.append(Entity(e["name"].strip(), e["pronoun"], e["profession"].strip(),
                               e["nationality"].strip(), e["city"].strip(),
                               e["spouse"].strip() if e.get("spouse") else None, e["born"]))
    for pronoun in PRONOUN_FORMS:
        if not any(x.pronoun == pronoun for x in entities):
            raise ContextbotError(f"{path}: needs at least one entity with pronoun '{pronoun}'")
    return entities
