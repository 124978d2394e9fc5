import json
import random
import re
import subprocess
import sys

import pytest

from contextbot import paths
from contextbot.text import corpus, turns
from contextbot.text.dialogue import (HELD_OUT_QUESTIONS, PRONOUN_FORMS, TRAIN_QUESTIONS, Talk, fill,
                                       format_conversation)
from contextbot.errors import ContextbotError
from contextbot.text.facts import load_facts

from ..conftest import ENV


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
        if line.startswith(turns.QUESTION):
            q = line[len(turns.QUESTION):]
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
    questions = [line[len(turns.QUESTION):] for line in train_text.splitlines()
                 if line.startswith(turns.QUESTION)]
    shouted = [q for q in questions if any(ch.isalpha() for ch in q) and q == q.upper()]
    assert 0.11 < len(shouted) / len(questions) < 0.17


def test_the_turn_format_round_trips_through_the_corpus_reader(tmp_path):
    """What turns.py writes, the corpus reader reads back: the same (question, answer) pairs, and
    statistics that count exactly the characters of the turns written."""
    conversations = [
        [("Who is Tom Cruise?", "He is an American actor."),
         ("Where does he live?", "He lives in Beverly Hills.")],
        # the format's own prefixes inside a turn, characters outside ASCII, an empty answer
        [("Hi.", "Hi there!"), ("A: Q: what?", "Q: A: this."), ("Café ☃?", "")],
    ]
    p = tmp_path / "turns.txt"
    p.write_text("\n".join(turns.conversation(c) for c in conversations), encoding="utf-8")
    stats = corpus.CorpusStats()
    assert [c.turns for c in corpus.read_conversations(p, stats)] == conversations
    assert stats.turns == 5 and stats.conversations == 2
    assert stats.characters == sum(len(turns.turn(q, a)) for c in conversations for q, a in c)
    for q, a in conversations[1]:
        question_line, answer_line = turns.turn(q, a).split(turns.END)[:2]
        assert turns.parse_line(question_line) == ("Q", q) and turns.parse_line(answer_line) == ("A", a)
        assert turns.turn(q, a) == turns.prompt(q) + turns.reply(a)
    talk = Talk(random.Random(1), load_facts(paths.DEFAULT_FACTS))
    talk.small_talk()
    talk.ask("he")
    assert format_conversation(talk.turns) == turns.conversation((t.question, t.answer) for t in talk.turns)


def _peak_rss_mb(argv: list[str]) -> float:
    """Peak resident memory of `contextbot ARGV`, measured by a parent that has no other child."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", probe, sys.executable, "-m", "contextbot", *argv],
                       capture_output=True, text=True, env=ENV, timeout=1800)
    rc, kb = r.stdout.split()[-2:]
    assert rc == "0", r.stderr
    return int(kb) / 1024


@pytest.mark.slow
def test_a_200_mb_corpus_is_checked_in_bounded_memory(tmp_path):
    """`corpus check` streams: 200 MB takes about the memory that 3.5 MB does."""
    unit = paths.DEFAULT_TRAIN.read_bytes()
    small = tmp_path / "small.txt"
    small.write_bytes(unit)
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        while f.tell() < 200_000_000:
            f.write(unit + b"\n")
    base = _peak_rss_mb(["corpus", "check", str(small)])
    peak = _peak_rss_mb(["corpus", "check", str(big)])
    print(f"peak RSS: {base:.0f} MB for {len(unit) / 1e6:.1f} MB, "
          f"{peak:.0f} MB for {big.stat().st_size / 1e6:.0f} MB")
    assert peak < base + 50


# -- where `corpus build` writes ----------------------------------------------------------------

def _shipped_bytes() -> dict:
    return {p: p.read_bytes() for p in (paths.DEFAULT_TRAIN, paths.DEFAULT_VALID, paths.DEFAULT_FACTS)}


def test_build_without_facts_writes_into_the_current_folder_and_says_where(tmp_path, monkeypatch, capsys):
    """Issue: with no --facts, `corpus build` run from another folder rewrote the shipped
    corpus/train.txt. Now it reads the shipped facts and writes where the user is, and prints
    the full paths; the shipped files are untouched."""
    from ..conftest import cli
    before = _shipped_bytes()
    monkeypatch.chdir(tmp_path)
    rc, out, _ = cli(capsys, "corpus", "build")
    assert rc == 0
    assert _shipped_bytes() == before
    assert (tmp_path / "train.txt").read_bytes() == before[paths.DEFAULT_TRAIN]
    assert (tmp_path / "valid.txt").read_bytes() == before[paths.DEFAULT_VALID]
    assert f"wrote {tmp_path.resolve() / 'train.txt'}:" in out and f"wrote {tmp_path.resolve() / 'valid.txt'}:" in out
    # --facts F writes beside F, wherever the user is; --out-dir wins over both.
    mine = tmp_path / "my"
    mine.mkdir()
    (mine / "facts.json").write_bytes(before[paths.DEFAULT_FACTS])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, out, _ = cli(capsys, "corpus", "build", "--facts", "../my/facts.json", "--seed", "2")
    assert rc == 0 and f"wrote {mine.resolve() / 'train.txt'}:" in out
    assert not list(elsewhere.iterdir())
    rc, out, _ = cli(capsys, "corpus", "build", "--out-dir", "out", "--seed", "2")
    assert rc == 0 and (elsewhere / "out" / "train.txt").read_bytes() == (mine / "train.txt").read_bytes()
    assert _shipped_bytes() == before


@pytest.mark.parametrize("where", ["corpus", "checkpoints", "root", "package"])
def test_build_without_facts_or_out_dir_never_writes_into_the_shipped_folders(where, monkeypatch, capsys):
    from ..conftest import assert_one_line_error, cli
    folder = {"corpus": paths.CORPUS, "checkpoints": paths.CHECKPOINTS, "root": paths.SHIPPED,
              "package": paths.SHIPPED / "contextbot" if (paths.SHIPPED / "contextbot").is_dir()
              else paths.SHIPPED}[where]
    before = _shipped_bytes()
    listing = sorted(p.name for p in folder.iterdir())
    monkeypatch.chdir(folder)
    rc, _, err = cli(capsys, "corpus", "build")
    assert_one_line_error(rc, err, "shipped files.*--out-dir.*--facts")
    assert _shipped_bytes() == before and sorted(p.name for p in folder.iterdir()) == listing


def test_a_refused_build_leaves_the_old_corpus_as_it_was(tmp_path):
    """Everything is validated before anything is written: a bad facts file, or a valid.txt that
    cannot be written, leaves train.txt and valid.txt as they were."""
    good = json.loads(paths.DEFAULT_FACTS.read_text(encoding="utf-8"))
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(good), encoding="utf-8")
    corpus.build(facts, train_conversations=5, valid_conversations=2)
    old = {n: (tmp_path / n).read_bytes() for n in ("train.txt", "valid.txt")}
    bad_names = ["Tom\nCruise", "T" * 5000, "Tom\x1b[2JCruise", "Megan  Fox"]
    for bad in bad_names:
        broken = json.loads(json.dumps(good))
        broken["entities"][-1]["name"] = bad
        facts.write_text(json.dumps(broken), encoding="utf-8")
        with pytest.raises(ContextbotError):
            corpus.build(facts, train_conversations=5, valid_conversations=2)
        assert {n: (tmp_path / n).read_bytes() for n in old} == old
    facts.write_text(json.dumps(good), encoding="utf-8")
    (tmp_path / "valid.txt").unlink()
    (tmp_path / "valid.txt").mkdir()
    with pytest.raises(ContextbotError, match="valid.txt: is a directory; nothing was written"):
        corpus.build(facts, seed=2, train_conversations=5, valid_conversations=2)
    assert (tmp_path / "train.txt").read_bytes() == old["train.txt"]
