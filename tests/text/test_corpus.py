import json
import random
import re

import pytest

from contextbot import paths
from contextbot.text import corpus
from contextbot.text.dialogue import HELD_OUT_QUESTIONS, PRONOUN_FORMS, TRAIN_QUESTIONS, Talk, fill
from contextbot.errors import ContextbotError
from contextbot.text.facts import load_facts


@pytest.fixture(scope="module")
def train_text():
    return paths.DEFAULT_TRAIN.read_text(encoding="utf-8")


def test_facts_file_meets_the_contract():
    entities = load_facts(paths.DEFAULT_FACTS)
    assert len(entities) >= 40
    assert sum(e.pronoun == "he" for e in entities) >= 15
    assert sum(e.pronoun == "she" for e in entities) >= 15
    by_name = {e.name: e for e in entities}
    tom, megan = by_name["Tom Cruise"], by_name["Megan Fox"]
    assert (tom.pronoun, tom.profession, tom.nationality, tom.city, tom.spouse, tom.born) == \
        ("he", "actor", "American", "Beverly Hills", "Katie Holmes", 1962)
    assert (megan.pronoun, megan.profession, megan.nationality, megan.city, megan.spouse, megan.born) == \
        ("she", "actress", "American", "Los Angeles", "Brian Austin Green", 1986)
    # No shortcut: cities, professions and nationalities are shared.
    for attr in ("city", "profession", "nationality"):
        values = [getattr(e, attr) for e in entities]
        assert len(set(values)) < len(values)


def test_build_is_deterministic_and_matches_the_committed_files(tmp_path):
    train, valid = corpus.build(seed=1, out_dir=tmp_path)
    assert train.read_bytes() == paths.DEFAULT_TRAIN.read_bytes()
    assert valid.read_bytes() == paths.DEFAULT_VALID.read_bytes()


def test_corpus_teaches_every_required_form(train_text):
    required = [
        "Who is Tom Cruise?", "Tell me about Megan Fox.", "A: He is an American actor.",
        "What does she do?", "What is his job?", "Where he lives?", "Where is her home?",
        "Whom did he marry?", "Whom she married?", "Who is his spouse?", "When was she born?",
        "What year was he born?", "Where is she from?", "What is his nationality?",
        "A: He lives in Beverly Hills.", "A: She married Brian Austin Green.", "is not married.",
        "A: He is American.", "Hello!", "How are you?", "Thanks!", "Interesting.", "Tell me a joke.",
        "A: I don't know who that is.", "A: I don't know.", "A: Who do you mean?",
        "and lives in Beverly Hills.",
    ]
    for text in required:
        assert text in train_text, text
    assert re.search(r"Q: Who is [^\n,]+, and where does (he|she) live\?", train_text)
    assert re.search(r"Q: Who is [^\n.]+\. Where (he|she) lives\?", train_text)
    assert re.search(r"Q: who is [a-z ]+", train_text)  # case noise
    assert re.search(r"Q: WHERE DOES (HE|SHE) LIVE", train_text)


def test_held_out_phrasings_never_appear_in_training(train_text):
    lower = train_text.lower()
    for attribute, templates in HELD_OUT_QUESTIONS.items():
        for t in templates:
            for pronoun in PRONOUN_FORMS:
                phrase = fill(t, pronoun).lower().rstrip("?")
                assert phrase not in lower, phrase
            assert t not in TRAIN_QUESTIONS[attribute]


def test_small_talk_runs_are_at_most_three_turns(train_text):
    # The eval's 4-8 turns category must be further back than anything in training.
    small = {"Hello!", "Hi.", "How are you?", "Thanks!", "Thank you.", "Interesting.", "Tell me a joke.",
             "Good morning!", "Nice.", "OK.", "What is your name?", "Cool!"}
    run = longest = 0
    for line in train_text.splitlines():
        if line.startswith("Q: "):
            q = line[3:]
            is_small = any(q.lower().rstrip("?.! ") == s.lower().rstrip("?.! ") for s in small)
            run = run + 1 if is_small else 0
            longest = max(longest, run)
        elif not line:
            run = 0
    assert longest <= 4  # a greeting may open a conversation before 3 small-talk turns


def test_dialogue_rules():
    entities = load_facts(paths.DEFAULT_FACTS)
    by = {e.name: e for e in entities}
    t = Talk(random.Random(0), entities)
    assert t.ask("she").answer == "Who do you mean?"
    t.intro(by["Tom Cruise"])
    t.intro(by["Megan Fox"])
    assert t.ask("he", "city").answer == "He lives in Beverly Hills."
    assert t.ask("she", "spouse").answer == "She married Brian Austin Green."
    t.intro(by["Chloe Martin"])  # a switch: "she" is now Chloe
    assert t.ask("she", "city").answer == "She lives in Paris."
    t.unknown("Qwerty Zed")
    assert t.turns[-1].answer == "I don't know who that is."
    assert t.ask("he").answer == "I don't know."


def test_check_prints_statistics_and_rejects_bad_files(tmp_path):
    s = corpus.check(paths.DEFAULT_VALID)
    assert s.conversations > 100 and s.turns > s.conversations and s.characters > 10_000
    assert "\n" not in s.alphabet and "Q" in s.alphabet
    with pytest.raises(ContextbotError, match="directory"):
        corpus.check(tmp_path)
    with pytest.raises(ContextbotError, match="no such"):
        corpus.check(tmp_path / "missing.txt")
    p = tmp_path / "noanswer.txt"
    p.write_text("Q: hello\n\nQ: again\nA: yes\n")
    with pytest.raises(ContextbotError, match="line 1: a question without an answer"):
        corpus.check(p)


def test_bad_facts_file(tmp_path):
    p = tmp_path / "facts.json"
    p.write_text(json.dumps({"entities": [{"name": "X", "pronoun": "it"}]}))
    with pytest.raises(ContextbotError, match="entity 1"):
        load_facts(p)
    p.write_text("{not json")
    with pytest.raises(ContextbotError, match="not valid JSON"):
        load_facts(p)


def test_questions_in_capitals_have_their_share(train_text):
    """Noise falls on 35% of questions and 30% of that (plus one in seven of the rest) is all
    capitals, about 14% of questions: at 3% (the old share), the GRU read 'IS HE MARRIED' as
    another question."""
    questions = [line[3:] for line in train_text.splitlines() if line.startswith("Q: ")]
    shouted = [q for q in questions if any(ch.isalpha() for ch in q) and q == q.upper()]
    assert 0.11 < len(shouted) / len(questions) < 0.17
