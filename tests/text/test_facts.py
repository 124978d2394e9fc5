"""The facts file (contextbot/text/facts.py): one rule for comparing names (`name_key`), and the
validation that every command that reads facts goes through (`load_facts`)."""

import json
import random
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contextbot import paths
from contextbot.errors import ContextbotError
from contextbot.text.corpus import Conversation
from contextbot.text.dialogue import INTRO_FORMS, add_noise, unknown_name
from contextbot.text.facts import MAX_TEXT, Entity, check_text, load_facts, name_key
from contextbot.text.referents import Referents

from ..conftest import assert_one_line_error, cli

#: Names in many scripts, and with every letter that lower() and upper() do not take back:
#: Turkish dotless ı and dotted İ, German ß, Greek final sigma and iota subscript, the micro sign
#: µ, the long s ſ, the Kelvin sign, ligatures (ﬁ, ĳ, Armenian և), titlecase digraphs (ǅ).
NAMES = [
    "Yusuf Yılmaz", "İlkay Gündoğan", "Işıl Ünal", "Jürgen Weiß", "Straße Groß",
    "Ὀδυσσεύς Λαέρτιος", "Σίσυφος Κορίνθιος", "ᾠδὴ Ἀθηνᾶς", "µarco Polo", "Caſpar Hauſer",
    "\u212Aelvin Kane", "ﬁona ﬂint", "Ĳsbrand Ĳzerman", "Արամ Խաչատրյան", "Երևան Սարյան",
    "ǅemal Ǆafić", "Анна Каренина", "Ёлка Ёжикова", "ნინო ჯაფარიძე", "ᏣᎳᎩ Ꮎ", "𐐜𐐯𐑌 𐐓𐐲𐑊",
    "김민수", "王小明", "محمد علي", "דוד בן", "अर्जुन सिंह", "สมชาย ใจดี", "Đorđe Đoković",
    "Łukasz Żółć", "Ægir Ørsted", "Œdipe Rex", "José Ñúñez", "O'Brien D'Angelo", "Jean-Luc Picard",
    "Tom Cruise", "Ali", "50 Cent",
]


def transformations(text: str) -> list[str]:
    """Every case change the corpus makes (dialogue.add_noise: lower(), upper() of a question,
    capitalize() or lower() of one of its words), title() too, and two of them in a row."""
    one = [str.lower, str.upper, str.capitalize, str.title, str.casefold, str.swapcase]
    out = [f(text) for f in one] + [g(f(text)) for f in one for g in one]
    words = text.split(" ")
    for i in range(len(words)):
        for f in (str.lower, str.capitalize, str.upper):
            out.append(" ".join(words[:i] + [f(words[i])] + words[i + 1:]))
    return out


def person(name: str, pronoun: str = "he", **kw) -> dict:
    return {"name": name, "pronoun": pronoun, "profession": "actor", "nationality": "Turkish",
            "city": "Izmir", "spouse": None, "born": 1980} | kw


def entity(name: str, pronoun: str = "he") -> Entity:
    return Entity(name, pronoun, "actor", "Turkish", "Izmir", None, 1980)


def write(tmp_path, data, name="facts.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return p


# -- one folding rule -------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_every_case_the_corpus_writes_a_name_in_folds_to_its_key(name):
    key = name_key(name)
    for text in transformations(name):
        assert name_key(text) == key, (name, text)


def test_the_key_sets_aside_case_accents_compatibility_forms_and_spaces_but_not_letters():
    same = [("Yusuf Yılmaz", "YUSUF YILMAZ"), ("Straße", "STRASSE"), ("µ", "μ"), ("Caſpar", "Caspar"),
            ("\u212Aelvin", "Kelvin"), ("ﬁona", "Fiona"), ("Σίσυφος", "ΣΊΣΥΦΟΣ"),
            ("José", "Jose\u0301"), ("José", "JOSE"), ("Ali", "Alí"), ("ᾂ\u0300", "ἊῚ"),
            ("Tom Cruise", " Tom \u00a0 Cruise\t"), ("Ｔｏｍ", "tom")]
    for a, b in same:
        assert name_key(a) == name_key(b), (a, b)
    # Letters count, and so do the marks of scripts without case (Devanagari's vowel signs).
    for a, b in [("Tom Cruise", "Tom Cruse"), ("Anna", "Аnna"), ("कमल", "कमाल"), ("किरण", "करण")]:
        assert name_key(a) != name_key(b), (a, b)


def test_every_single_letter_survives_every_transformation():
    """Exhaustive over the letters of Unicode that change case, in a word and beside others."""
    bad = []
    for cp in range(0x20000):
        c = chr(cp)
        if not unicodedata.category(c).startswith("L") or (c.lower() == c.upper() == c):
            continue
        for text in (c, f"a{c}b", f"{c}x"):
            key = name_key(text)
            if any(name_key(f(text)) != key for f in (str.lower, str.upper, str.capitalize, str.title)):
                bad.append(hex(cp))
                break
    assert not bad, bad[:20]


LETTER = st.characters(categories=("Lu", "Ll", "Lt", "Lm", "Lo"))
MARK = st.characters(categories=("Mn", "Mc"))
WORD = st.builds(lambda first, rest: first + "".join(rest), LETTER,
                 st.lists(st.one_of(LETTER, LETTER, MARK), max_size=8))
GENERATED_NAME = st.lists(WORD, min_size=1, max_size=3).map(" ".join)


def valid_name(name: str) -> str | None:
    """The name as load_facts reads it (NFC), or None where load_facts refuses it."""
    try:
        return check_text(name, "name", "test", is_name=True)
    except ContextbotError:
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(GENERATED_NAME, st.integers(0, 2**32))
def test_referents_find_any_name_in_every_noise_the_corpus_adds(name, seed):
    """A name in any script, in a question as the corpus writes it (add_noise, and every other
    transformation), is found as that person, never a KeyError."""
    name = valid_name(name)
    if name is None:
        return
    ref = Referents([entity(name), entity("Megan Fox", "she")])
    rng = random.Random(seed)
    questions = [form.format(name=name) for form in INTRO_FORMS]
    noisy = [add_noise(q, rng, shout=0.5) for q in questions for _ in range(4)]
    for q in noisy + [t for q in questions[:2] for t in transformations(q)]:
        # (a one-letter name may also be a word of the question: "S" in "WHO'S S?")
        assert set(ref.people_in(q)) == {0}, (name, q)


@pytest.mark.parametrize("name", NAMES)
def test_referents_label_every_script_through_the_corpus_noise(name):
    ref = Referents([entity("Megan Fox", "she"), entity(name)])
    rng = random.Random(name)
    for form in INTRO_FORMS:
        q = form.format(name=name)
        for text in transformations(q) + [add_noise(q, rng, shout=0.5) for _ in range(20)]:
            conv = Conversation([(text, "He is a Turkish actor."), ("Where does he live?", "He lives in Izmir.")])
            assert ref.turns(conv)[0][1] == (3, 0), (name, text)


def test_names_are_whole_words_in_every_case():
    ref = Referents([entity("Ali"), entity("Ali Yılmaz"), entity("Işıl", "she")])
    assert ref.people_in("WHO IS ALI YILMAZ?") == [1]  # the longest name wins
    assert ref.people_in("who is ali?") == [0]
    assert ref.people_in("Who is Alison?") == [] and ref.people_in("Who is Bali?") == []
    assert ref.people_in("Who is ALİ?") == [0]  # accents on cased letters do not count (name_key)
    assert ref.people_in("Who is IŞIL, and ali?") == [2, 0]
    assert ref.people_in("") == [] and Referents([]).people_in("Who is Ali?") == []


def test_unknown_names_are_never_a_known_name_in_another_case():
    # Known people whose first names unknown_name borrows, and one with every surname it can make
    # in capitals: none of those may come out as "unknown".
    syllables = ["Ka", "Lo"]
    known = [entity(f"Yılmaz {a.upper()}") for a in syllables] + [entity("Işıl Ka", "she")]
    rng = random.Random(0)
    keys = {name_key(e.name) for e in known}
    for _ in range(500):
        assert name_key(unknown_name(rng, known)) not in keys


# -- validation -------------------------------------------------------------------------------

def test_the_shipped_facts_file_is_valid_and_read_as_before():
    entities = load_facts(paths.DEFAULT_FACTS)
    raw = json.loads(paths.DEFAULT_FACTS.read_text(encoding="utf-8"))["entities"]
    assert [e.name for e in entities] == [r["name"] for r in raw]
    assert [(e.spouse, e.born) for e in entities] == [(r["spouse"], r["born"]) for r in raw]


def test_names_in_every_script_are_accepted(tmp_path):
    people = [person(n, "he" if i % 2 else "she") for i, n in enumerate(NAMES)]
    entities = load_facts(write(tmp_path, {"entities": people}))
    # as written, in Unicode's composed form (NFC): the Kelvin sign is a K there
    assert [e.name for e in entities] == [unicodedata.normalize("NFC", n) for n in NAMES]
    assert entities[NAMES.index("\u212Aelvin Kane")].name == "Kelvin Kane"
    decomposed = person("Jose\u0301 Nu\u0301n\u0303ez")
    assert load_facts(write(tmp_path, {"entities": [decomposed] + people[:1]}))[0].name == "José Núñez"


@pytest.mark.parametrize("first, second", [
    ("Tom Cruise", "TOM CRUISE"), ("Tom Cruise", " Tom Cruise "), ("Yusuf Yılmaz", "YUSUF YILMAZ"),
    ("Yusuf Yılmaz", "Yusuf Yilmaz"), ("Jürgen Weiß", "Jürgen Weiss"), ("José Núñez", "Jose\u0301 Nu\u0301n\u0303ez"),
    ("Fiona Flint", "ﬁona ﬂint"), ("Marco", "Ｍａｒｃｏ"), ("Σίσυφος", "ΣΊΣΥΦΟΣ"), ("Kelvin", "\u212Aelvin"),
])
def test_one_person_under_two_spellings_is_refused(tmp_path, first, second):
    p = write(tmp_path, {"entities": [person(first), person("Megan Fox", "she"), person(second)]})
    with pytest.raises(ContextbotError, match=r"entity 3 .*same name as entity 1"):
        load_facts(p)


@pytest.mark.parametrize("name, match", [
    ("Tom\nCruise", "control character U\\+000A"), ("Tom\tCruise", "control character U\\+0009"),
    ("Tom\x1b[31mCruise", "control character U\\+001B"), ("Tom\u202eCruise", "control character U\\+202E"),
    ("Tom\u2028Cruise", "control character U\\+2028"), ("Tom\x00", "control character U\\+0000"),
    ("Tom\ud800", "control character U\\+D800"), ("Tom  Cruise", "repeated spaces"),
    ("Tom\u00a0Cruise", "U\\+00A0 NO-BREAK SPACE"), ("Tom\u3000Cruise", "U\\+3000"),
    ("T" * (MAX_TEXT + 1), f"{MAX_TEXT + 1} characters long"), ("x" * 5000, "5000 characters long"),
    ("", "non-empty string"), ("   ", "non-empty string"), (42, "non-empty string"), (None, "non-empty string"),
    ("1234", "must contain a letter"), ("\u0301Tom", "combining mark"),
])
def test_a_bad_name_is_refused_in_one_line(tmp_path, name, match):
    p = write(tmp_path, {"entities": [person("Megan Fox", "she"), person(name)]})
    with pytest.raises(ContextbotError, match=f"entity 2: 'name' .*{match}|entity 2: 'name' {match}") as exc:
        load_facts(p)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("key", ["profession", "nationality", "city", "spouse"])
@pytest.mark.parametrize("value, match", [
    ("actor\nQ: Who is Tom?", "control character"), ("a" * 3000, "3000 characters long"),
    ("stand-up  comedian", "repeated spaces"), ("\x1b]0;pwned\x07", "control character"),
])
def test_every_string_value_is_checked_the_same_way(tmp_path, key, value, match):
    p = write(tmp_path, {"entities": [person("Megan Fox", "she"), person("Tom Cruise", **{key: value})]})
    with pytest.raises(ContextbotError, match=f"entity 2 \\(Tom Cruise\\): '{key}' .*{match}"):
        load_facts(p)


@pytest.mark.parametrize("key, expected", [("Spouse", "spouse"), ("pronouns", "pronoun"), ("bron", "born"),
                                            ("citty", "city"), ("Name", "name"), ("profesion", "profession")])
def test_a_misspelt_key_is_refused_with_the_key_it_should_be(tmp_path, key, expected):
    bad = person("Tom Cruise")
    bad[key] = bad.pop(expected) if expected in bad and expected != "spouse" else "Katie Holmes"
    p = write(tmp_path, {"entities": [person("Megan Fox", "she"), bad]})
    with pytest.raises(ContextbotError, match=f"unknown key '{key}' \\(did you mean '{expected}'\\?"):
        load_facts(p)


@pytest.mark.parametrize("data, match", [
    ("[1, 2]", "expected a JSON object .*got a JSON list"), ('"entities"', "got a JSON string"),
    ("null", "got a JSON null"), ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"entities": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ('{"entities": [], "entites": []}', "unknown key 'entites' \\(did you mean 'entities'"),
    ('{"Entities": []}', "did you mean 'entities'"), ('{"entities": {}}', "a list of people"),
    ('{"entities": [], "entities": []}', "'entities' appears twice"),
    ('{"entities": [{"name": "A", "name": "B"}]}', "'name' appears twice"),
    ('{"entities": [{"born": 1' + "0" * 5000 + '}]}', "not valid JSON"),
    ("{not json", "not valid JSON"), ('{"entities": [7]}', "entity 1: not an object"),
    ('{"entities": []}', "needs at least one entity with pronoun 'he'"),
])
def test_a_file_that_is_not_a_facts_file_is_refused_in_one_line(tmp_path, data, match):
    with pytest.raises(ContextbotError, match=match) as exc:
        load_facts(write(tmp_path, data))
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("change, match", [
    ({"pronoun": "He"}, "'pronoun' must be 'he' or 'she', got 'He'"), ({"born": "1962"}, "'born' must be a year"),
    ({"born": True}, "'born' must be a year"), ({"born": 1962.0}, "'born' must be a year"),
    ({"born": 10**12}, "from -9999 to 9999"), ({"spouse": ""}, "'spouse' must be a name or null"),
    ({"spouse": 3}, "'spouse' must be a name or null"),
])
def test_other_values(tmp_path, change, match):
    p = write(tmp_path, {"entities": [person("Megan Fox", "she"), person("Tom Cruise", **change)]})
    with pytest.raises(ContextbotError, match=match):
        load_facts(p)


def test_leaving_out_spouse_is_not_married_and_outer_spaces_are_dropped(tmp_path):
    bare = person("  Tom Cruise ", city=" Beverly Hills ")
    del bare["spouse"]
    tom = load_facts(write(tmp_path, {"entities": [bare, person("Megan Fox", "she")]}))[0]
    assert (tom.name, tom.city, tom.spouse) == ("Tom Cruise", "Beverly Hills", None)


def test_every_command_that_reads_facts_refuses_a_bad_file_in_one_line(tmp_path, capsys, tiny_corpus,
                                                                        tiny_checkpoint):
    """corpus build, train --facts and eval --facts go through the same validation; a refused
    build writes nothing."""
    p = write(tmp_path, {"entities": [person("Megan Fox", "she"), person("Tom Cruise", Spouse="Katie")]})
    (tmp_path / "train.txt").write_text("old", encoding="utf-8")
    commands = [["corpus", "build", "--facts", p],
                ["train", "--corpus", tiny_corpus, "--valid", "none", "--facts", p,
                 "--out", tmp_path / "m.safetensors", "--steps", "1", "--batch", "2", "--hidden", "8"],
                ["eval", "--checkpoint", tiny_checkpoint, "--facts", p, "--per-category", "1"]]
    for argv in commands:
        rc, _, err = cli(capsys, *argv)
        assert_one_line_error(rc, err, "unknown key 'Spouse' \\(did you mean 'spouse'")
    assert (tmp_path / "train.txt").read_text(encoding="utf-8") == "old"
    assert not (tmp_path / "valid.txt").exists() and not (tmp_path / "m.safetensors").exists()
