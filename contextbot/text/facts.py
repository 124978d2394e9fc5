"""`corpus/facts.json`: the people the bot can know, and the sentences that state their facts.

Each entity is `{"name", "pronoun": "he"|"she", "profession", "nationality", "city",
"spouse": string or null, "born": year}`. The answer sentences are built here, in one place,
so that the corpus generator and the evaluation agree on what a right answer says.

Two things every command that reads facts shares are here too: `name_key`, the one rule by which
names are compared (the referent labels, duplicate names, made-up unknown names), and
`load_facts`, the one validation of a facts file.
"""

from __future__ import annotations

import difflib
import json
import unicodedata
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


# -- one rule for comparing names -----------------------------------------------------------------

def name_key(text: str) -> str:
    """The form in which names are compared, everywhere: a name and every way the corpus writes it
    (lower(), upper(), capitalize() or title() of the whole question or of one word) fold to the
    same key, in every script.

    Capitals first, then case folding, with compatibility decomposition around both and
    composition last: `NFKC(casefold(NFKD(upper(NFKD(text)))))`, runs of white space made one
    space. upper() first joins what lower() and casefold() keep apart (Turkish ı and i both
    become I; σ and final ς become Σ; µ becomes Μ; ſ becomes S); NFKD takes ligatures (ﬁ),
    the Kelvin sign and full-width letters to plain letters, and lets the Greek iota subscript
    fold the same however it was capitalised. So "Yusuf Yılmaz", "YUSUF YILMAZ" and "yusuf
    yılmaz" share one key, and so do "Straße"/"STRASSE" and "Ὀδυσσεύς"/"ὈΔΥΣΣΕΎΣ". Two names
    with one key are one person to contextbot (a facts file may not have both). Accents on letters
    with case do not count (`_without_case_marks`).
    """
    t = unicodedata.normalize("NFKD", text).upper()
    t = unicodedata.normalize("NFKD", t).casefold()
    return " ".join(unicodedata.normalize("NFKC", _without_case_marks(t)).split())


def _without_case_marks(text: str) -> str:
    """`text` (decomposed) without the combining marks that sit on a letter with case.

    upper() can turn one letter into two (Greek ᾂ becomes ἊΙ: the iota subscript is a capital
    iota), and a combining mark that followed the letter then follows the second one: "ᾂ̀" and
    its capitals would not fold to one key. So accents on cased letters do not count in a key
    ("José" and "JOSE" are one name, as they are when people type them); the marks of scripts
    without case (the vowel signs of Devanagari, say) are letters of the name and stay."""
    out, cased = [], False
    for ch in text:
        if unicodedata.combining(ch) or unicodedata.category(ch) == "Mn":
            if cased:
                continue
        else:
            cased = ch.lower() != ch.upper()
        out.append(ch)
    return "".join(out)


# -- reading and validating a facts file ---------------------------------------------------------

#: The keys of an entity, in the order the messages list them; `spouse` may be left out (not married).
KEYS = ("name", "pronoun", "profession", "nationality", "city", "spouse", "born")
REQUIRED_TEXT = ("name", "pronoun", "profession", "nationality", "city")
MAX_TEXT = 100  # characters in a name or any other value: one corpus line stays short
MAX_FACTS_BYTES = 10_000_000  # a facts file is a list of people, not a data dump
YEARS = (-9999, 9999)


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _unknown_key(key: str, known: tuple[str, ...]) -> str:
    """"unknown key 'Spouse' (did you mean 'spouse'? ...)": the closest known key, then all of them."""
    close = difflib.get_close_matches(str(key).lower(), known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    shown = repr(key) if len(str(key)) <= 40 else repr(str(key)[:40]) + "..."
    return f"unknown key {shown} ({hint}the keys are {', '.join(known)})"


def _char_name(ch: str) -> str:
    return f"U+{ord(ch):04X}" + (f" {unicodedata.name(ch)}" if unicodedata.name(ch, "") else "")


def check_text(value, key: str, where: str, *, is_name: bool = False) -> str:
    """One value of a facts file, as every command reads it: a non-empty string of at most
    MAX_TEXT characters, one line of visible text (no control or format characters, which chat
    would drop from a question), words separated by single plain spaces. Returns the value as
    contextbot uses it: leading and trailing white space dropped, and in Unicode's composed form
    (NFC), so that an accent typed as a separate mark is the same text as the accented letter
    (and every case the corpus writes the name in folds back to its name_key)."""
    if not isinstance(value, str) or not value.strip():
        raise ContextbotError(f"{where}: {key!r} must be a non-empty string")
    text = unicodedata.normalize("NFC", value.strip())
    if len(text) > MAX_TEXT:
        raise ContextbotError(f"{where}: {key!r} is {len(text)} characters long (at most {MAX_TEXT})")
    for ch in text:
        cat = unicodedata.category(ch)
        if cat[0] == "C" or cat in ("Zl", "Zp"):
            raise ContextbotError(f"{where}: {key!r} contains the control character {_char_name(ch)}; "
                                  "a value is one line of visible text")
        if ch.isspace() and ch != " ":
            raise ContextbotError(f"{where}: {key!r} contains {_char_name(ch)}; separate words "
                                  "with single plain spaces")
    if "  " in text:
        raise ContextbotError(f"{where}: {key!r} has repeated spaces ({text!r}); separate words "
                              "with single spaces")
    if is_name:
        if not any(ch.isalpha() for ch in text):
            raise ContextbotError(f"{where}: {key!r} must contain a letter, got {text!r}")
        if unicodedata.category(text[0])[0] == "M":
            raise ContextbotError(f"{where}: {key!r} begins with the combining mark {_char_name(text[0])}")
    return text


def _read_json(path: Path):
    try:
        size = path.stat().st_size if path.is_file() else 0
    except OSError:
        size = 0  # read_text says what is wrong with it
    if size > MAX_FACTS_BYTES:
        raise ContextbotError(f"{path}: {size} bytes is too large for a facts file "
                              f"(at most {MAX_FACTS_BYTES})")
    text = read_text(path, "facts")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        raise ContextbotError(f"{path}: the key {exc.args[0]!r} appears twice in one object") from None
    except json.JSONDecodeError as exc:
        raise ContextbotError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise ContextbotError(f"{path}: not a facts file (JSON nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise ContextbotError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from None


def load_facts(path: str | Path) -> list[Entity]:
    """Read and validate a facts file; every problem is a one-line ContextbotError.

    Every command that reads facts (corpus build, train, eval, inspect --probe) comes here, so
    they all accept and refuse the same files. The rules: a JSON object `{"entities": [...]}`
    and no other key; each entity an object with only the keys of KEYS (a misspelt key is
    refused with the closest right one); each string value checked by `check_text`; `pronoun`
    "he" or "she"; `spouse` a name or null (or left out); `born` an integer year; no two names
    with the same `name_key`; at least one "he" and one "she".
    """
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, dict):
        raise ContextbotError(f'{path}: expected a JSON object {{"entities": [...]}}, '
                              f"got a JSON {_json_type(raw)}")
    for key in raw:
        if key != "entities":
            raise ContextbotError(f"{path}: {_unknown_key(key, ('entities',))}")
    if not isinstance(raw.get("entities"), list):
        raise ContextbotError(f'{path}: expected {{"entities": [...]}}, a list of people')
    entities: list[Entity] = []
    seen: dict[str, tuple[int, str]] = {}
    for i, e in enumerate(raw["entities"]):
        where = f"{path}: entity {i + 1}"
        if not isinstance(e, dict):
            raise ContextbotError(f"{where}: not an object")
        for key in e:
            if key not in KEYS:
                raise ContextbotError(f"{where}: {_unknown_key(key, KEYS)}")
        name = check_text(e.get("name"), "name", where, is_name=True)
        where = f"{path}: entity {i + 1} ({name})"  # the name is one short line now: say whose
        text = {key: check_text(e.get(key), key, where) for key in REQUIRED_TEXT if key != "name"}
        text["name"] = name
        if text["pronoun"] not in PRONOUN_FORMS:
            raise ContextbotError(f"{where}: 'pronoun' must be 'he' or 'she', got {text['pronoun']!r}")
        spouse = e.get("spouse")
        if spouse is not None:
            if not isinstance(spouse, str) or not spouse.strip():
                raise ContextbotError(f"{where}: 'spouse' must be a name or null")
            spouse = check_text(spouse, "spouse", where, is_name=True)
        born = e.get("born")
        if not isinstance(born, int) or isinstance(born, bool):
            raise ContextbotError(f"{where}: 'born' must be a year (an integer)")
        if not YEARS[0] <= born <= YEARS[1]:
            raise ContextbotError(f"{where}: 'born' must be a year from {YEARS[0]} to {YEARS[1]}, got {born}")
        key = name_key(text["name"])
        if key in seen:
            j, other = seen[key]
            raise ContextbotError(f"{where}: the same name as entity {j} ({other!r}) once case, "
                                  "spaces and Unicode forms are set aside")
        seen[key] = (i + 1, text["name"])
        entities.append(Entity(text["name"], text["pronoun"], text["profession"],
                               text["nationality"], text["city"], spouse, born))
    for pronoun in PRONOUN_FORMS:
        if not any(x.pronoun == pronoun for x in entities):
            raise ContextbotError(f"{path}: needs at least one entity with pronoun '{pronoun}'")
    return entities


def _json_type(value) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)
