import random

import pytest
import torch

from contextbot import ChatSession
from contextbot.analysis import evaluate
from contextbot.paths import DEFAULT_FACTS
from contextbot.text.dialogue import HELD_OUT_QUESTIONS, Turn, phrasing
from contextbot.text.facts import load_facts
from contextbot.chat import BatchSession
from contextbot.text.turns import prompt


def test_scoring_needs_the_fact_and_rejects_the_other_persons():
    turn = Turn("Where does she live?", "She lives in Los Angeles.", "fact",
                expected=("Los Angeles",), forbidden=("Paris",))
    assert evaluate.is_right("She lives in Los Angeles.", turn)
    assert evaluate.is_right("she lives in los angeles", turn)  # case does not matter
    assert not evaluate.is_right("She lives in Paris.", turn)  # the other person's fact
    assert not evaluate.is_right("She lives in Los Angeles and Paris.", turn)  # both: wrong
    assert not evaluate.is_right("Who do you mean?", turn)


def test_categories_generate_what_they_claim():
    entities = load_facts(DEFAULT_FACTS)
    switches_with_a_forbidden_fact = 0
    for key, _ in evaluate.CATEGORIES:
        rng = random.Random(0)
        for _ in range(30):
            item = evaluate.make_item(key, rng, entities)
            assert item.scored and max(item.scored) < len(item.turns)
            if key == "far":
                assert 4 <= item.distance <= 8
                assert all(t.kind == "small_talk" for t in item.turns[1:-1])
            if key == "near":
                assert 0 <= item.distance <= 3
            if key == "stateless":
                assert item.zero_before == item.scored
            if key == "switch":
                last = item.turns[-1]
                # The earlier person's fact is forbidden unless it is the same as the new one's.
                assert not any(f in last.expected[0] or last.expected[0] in f for f in last.forbidden)
                switches_with_a_forbidden_fact += bool(last.forbidden)
    assert switches_with_a_forbidden_fact >= 20


def test_unseen_phrasings_are_scored_one_by_one(shipped_gru):
    """Every scored turn of the unseen category is counted under the held-out phrasing it was
    asked in, and the phrasings add up to the category."""
    entities = load_facts(DEFAULT_FACTS)
    rng = random.Random(3)
    items = [evaluate.make_item("unseen", rng, entities) for _ in range(40)]
    scores = evaluate.run(shipped_gru, items)
    held_out = {phrasing(t) for ts in HELD_OUT_QUESTIONS.values() for t in ts}
    assert scores.by_phrasing and set(scores.by_phrasing) <= held_out
    unseen = scores.by_category["unseen"]
    assert sum(r.total for r in scores.by_phrasing.values()) == unseen.total == 40
    assert sum(r.right for r in scores.by_phrasing.values()) == unseen.right


def test_eval_seed_differs_from_corpus_seeds():
    assert evaluate.EVAL_SEED > 1000


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_batched_talk_equals_chat_session(tiny_checkpoint, shipped_gru):
    """The eval's batched talk (PyTorch's modules) says what chat (Stepper) says. Two
    implementations round differently (another summing order, another tanh), so they may part
    where the model is undecided: allowed only where its two best next characters are within
    1e-3 of each other in logit, which a wrong equation would not keep to. The random tiny model
    is full of such near-ties; the shipped GRU is not."""
    entities = load_facts(DEFAULT_FACTS)
    items = evaluate.generate(entities, seed=5, per_category=3)
    convs = [[t.question for t in it.turns] for it in items]
    zero = [it.zero_before for it in items]
    for session in (ChatSession.load(tiny_checkpoint), shipped_gru):
        batched = BatchSession(session).run(convs, zero)
        parted = 0
        for conv, z, replies in zip(convs, zero, batched):
            session.reset()
            for i, q in enumerate(conv):
                if i in z:
                    session.reset()
                before = session.state
                got = session.ask(q)
                if got == replies[i]:
                    continue
                k = first_difference(got, replies[i])
                with torch.inference_mode():
                    ids = torch.tensor([session.tokenizer.encode(prompt(q) + got[:k])])
                    top = session.model(ids, before)[0][0, -1].topk(2).values
                assert top[0] - top[1] < 1e-3, (q, got, replies[i])
                parted += 1
                break  # the two states differ from here on
        if session is shipped_gru:
            assert parted == 0
        session.reset()


# -- the shipped GRU --------------------------------------------------------------------------

#: The categories where the shipped GRU meets its targets (docs/results.md).
MET = ("intro", "near", "far", "switch", "two", "compound", "unknown", "nobody", "noise")


def test_shipped_gru_is_right_nearly_always_where_it_meets_the_targets(shipped_gru):
    """A small fixed set of fresh conversations of every category it meets: all right, and the
    stateless comparison falls to chance."""
    entities = load_facts(DEFAULT_FACTS)
    items = [i for i in evaluate.generate(entities, seed=78, per_category=20)
             if i.category in MET + ("stateless",)]
    by_cat = evaluate.run(shipped_gru, items).by_category
    for key in MET:
        assert by_cat[key].accuracy >= 0.95, (key, by_cat[key].examples)
    assert by_cat["stateless"].accuracy <= 0.05


def assert_targets(session, target):
    """Score `session` on 100 fresh conversations per category (a seed of its own; the eval uses
    200) against `target(category)`, a least accuracy or None for a category only reported; the
    stateless comparison must fall to chance."""
    items = evaluate.generate(load_facts(DEFAULT_FACTS), seed=77, per_category=100)
    by_cat = evaluate.run(session, items).by_category
    for key, label in evaluate.CATEGORIES:
        acc = by_cat[key].accuracy
        if key == "stateless":
            assert acc <= evaluate.STATELESS_MAX, label
        elif target(key) is not None:
            assert acc >= target(key), (label, by_cat[key].examples)


def test_shipped_gru_passes_every_category(shipped_gru):
    """Issue 3's own targets on 100 fresh conversations per category (a seed of its own; the eval
    uses 200). Twenty were too few: a checkpoint at 96% on two people passed them by luck."""
    assert_targets(shipped_gru, lambda key: evaluate.TARGETS.get(key, evaluate.DEFAULT_TARGET))


def test_shipped_lstm_meets_its_target_on_every_category(shipped_lstm):
    """The shipped LSTM is held to less than the GRU (issue 3): 95% on every category but the
    unseen phrasings, which are only reported; 100 fresh conversations per category, as above."""
    assert_targets(shipped_lstm, lambda key: None if key == "unseen" else evaluate.LSTM_TARGET)


def test_shipped_gru_seed_dialogue_is_right_at_every_turn(shipped_gru):
    turns = evaluate.seed_dialogue(shipped_gru)
    assert all(t["right"] for t in turns), turns


def test_stateless_shipped_gru_gets_the_seed_pronoun_questions_wrong(shipped_gru):
    shipped_gru.carry = False
    try:
        for q, expected in evaluate.SEED_DIALOGUE[2:]:
            reply = shipped_gru.ask(q)
            assert not any(x.lower() in reply.lower() for x in expected), (q, reply)
    finally:
        shipped_gru.carry = True
        shipped_gru.reset()


# -- facts files with few people -------------------------------------------------------------

def _people(*pronouns):
    from contextbot.text.facts import Entity
    return [Entity(f"Person {chr(65 + i)}", p, "actor", "Irish", f"City {i}", None, 1970 + i)
            for i, p in enumerate(pronouns)]


def test_a_category_the_people_cannot_make_is_left_out_and_the_rest_are_built():
    """One man and one woman (which corpus build and train accept): no switch to a new person
    of the same gender can be built; every other category is."""
    for pronouns in (("he", "she"), ("she", "he")):
        entities = _people(*pronouns)
        assert evaluate.not_applicable("switch", entities)
        items = evaluate.generate(entities, seed=1, per_category=5)
        built = {i.category for i in items}
        assert built == {k for k, _ in evaluate.CATEGORIES} - {"switch"}
    # Two men and one woman: the switch is made, always between the two men.
    entities = _people("he", "she", "he")
    assert evaluate.not_applicable("switch", entities) is None
    rng = random.Random(0)
    for _ in range(30):
        item = evaluate.make_item("switch", rng, entities)
        intros = [t for t in item.turns if t.kind == "intro"]
        assert [t.answer for t in intros] == ["He is an Irish actor."] * 2
    # The shipped facts: every category, and the same conversations as before.
    assert all(evaluate.not_applicable(k, load_facts(DEFAULT_FACTS)) is None for k, _ in evaluate.CATEGORIES)


def test_eval_on_one_man_and_one_woman_reports_the_switch_as_not_applicable(tiny_checkpoint, tiny_corpus,
                                                                            tmp_path, capsys):
    import json

    from ..conftest import cli
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"entities": [
        {"name": "Tom Cruise", "pronoun": "he", "profession": "actor", "nationality": "American",
         "city": "Beverly Hills", "spouse": None, "born": 1962},
        {"name": "Megan Fox", "pronoun": "she", "profession": "actress", "nationality": "American",
         "city": "Los Angeles", "spouse": None, "born": 1986}]}), encoding="utf-8")
    argv = ["eval", "--checkpoint", tiny_checkpoint, "--facts", facts, "--valid", tiny_corpus,
            "--per-category", "2"]
    rc, out, err = cli(capsys, *argv, "--json")
    assert rc == 0, err
    cats = json.loads(out)["categories"]
    switch = cats.pop("switch")
    assert switch["total"] == 0 and switch["accuracy"] is None and switch["meets"] is None
    assert "two people of one gender" in switch["not_applicable"]
    assert all(c["total"] > 0 and c["not_applicable"] is None for c in cats.values())
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    notes = [line for line in out.splitlines() if "not applicable" in line]
    assert notes == ["not applicable: switch to a new person of the same gender (needs two people of "
                     "one gender in the facts file)"]


# -- the readout's agreement with the replies -------------------------------------------------
def _person(name, pronoun, **facts):
    from contextbot.text.facts import Entity
    base = dict(profession="actor", nationality="American", city="Paris", spouse=None, born=1970)
    return Entity(name=name, pronoun=pronoun, **(base | facts))


def test_agreement_judges_the_person_the_reply_is_about():
    tom = _person("Tom Cruise", "he", city="Beverly Hills", born=1962)
    megan = _person("Megan Fox", "she", city="Los Angeles", born=1986, profession="actress")
    people = (tom, megan)
    assert evaluate.reply_person("He lives in Beverly Hills.", "city", people) is tom
    assert evaluate.reply_person("She lives in los angeles.", "city", people) is megan
    assert evaluate.reply_person("Who do you mean?", "city", people) is None
    assert evaluate.reply_person("Beverly Hills or Los Angeles.", "city", people) is None  # several
    assert evaluate.reply_person("That is Megan Fox.", "born", people) is megan  # by name
    assert evaluate.identifies(tom, "city", people)
    assert not evaluate.identifies(tom, "nationality", people)  # both American

    def turn(pronoun, attribute):
        return Turn("?", "", "fact", pronoun=pronoun, attribute=attribute)

    result = evaluate.Agreement()
    evaluate.agreement(
        ["Tom Cruise", "Tom Cruise", "nobody", "Megan Fox", "Tom Cruise", "Tom Cruise",
         "Megan Fox"],
        [turn("he", "city"), turn("he", "city"), turn("he", "city"), turn("she", "born"),
         turn("he", "nationality"), turn("he", "city"), turn("she", "city")],
        ["He lives in Beverly Hills.", "He lives in Los Angeles.", "He lives in Beverly Hills.",
         "Who do you mean?", "He is American.", "Beverly Hills or Los Angeles.",
         "She lives in Rome."],
        [(tom, people), (tom, people), (tom, people), (megan, people), (tom, people),
         (tom, people), (megan, people)], result)
    # agrees; the reply is about Megan: disagrees; the readout reads nobody: disagrees; the reply
    # is about no one ("Who do you mean?", a city no one in play lives in): left out; "American"
    # tells no one apart: left out; the reply is about both: disagrees.
    assert (result.right, result.total, result.left_out) == (1, 4, 3)
    assert len(result.examples) == 3


def test_items_know_whom_their_pronoun_questions_are_about():
    entities = load_facts(DEFAULT_FACTS)
    items = evaluate.generate(entities, seed=7, per_category=5)
    for item in items:
        for i, (who, people) in item.about.items():
            turn = item.turns[i]
            assert i in item.scored and turn.kind in ("fact", "compound")
            assert who in people and who.pronoun == turn.pronoun
            assert who.fact(turn.attribute) in turn.expected
        if item.category in ("near", "far", "switch", "compound", "noise", "unseen", "stateless"):
            assert item.about
        if item.category in ("intro", "nobody"):
            assert not item.about


def test_batched_talk_keeps_the_prompt_end_states(tiny_checkpoint):
    """`run_with_prompt_states` changes no reply, and gives the top layer's h after each prompt."""
    session = ChatSession.load(tiny_checkpoint)
    convs = [["Who is Tom Cruise?", "Where does he live?"], ["Who is Megan Fox?"]]
    zero = [set(), {0}]
    talker = BatchSession(session)
    plain = talker.run(convs, zero)
    replies, tops = talker.run_with_prompt_states(convs, zero)
    assert replies == plain
    assert [len(t) for t in tops] == [2, 1]
    for conv, conv_replies, conv_tops in zip(convs, replies, tops):
        state = None
        for q, reply, top in zip(conv, conv_replies, conv_tops):
            with torch.inference_mode():
                ids = torch.tensor([session.tokenizer.encode(prompt(q))])
                _, after_prompt = session.model(ids, state)
                torch.testing.assert_close(top, after_prompt[-1, 0])
                ids = torch.tensor([session.tokenizer.encode(prompt(q) + reply + "\n")])
                _, state = session.model(ids, state)


def test_a_checkpoint_without_the_head_has_no_agreement(tiny_checkpoint):
    entities = load_facts(DEFAULT_FACTS)
    scores = evaluate.run(ChatSession.load(tiny_checkpoint), evaluate.generate(entities, seed=3, per_category=1))
    assert scores.agreement is None
    from contextbot.analysis.report import _agreement
    a = _agreement(scores.agreement)
    assert a["accuracy"] is None and "referent signal" in a["not_applicable"]


@pytest.mark.shipped
def test_shipped_gru_readout_agrees_with_its_replies(capsys, tiny_corpus):
    """The shipped GRU's referent head names the person its reply is about nearly always: the
    memory one linear layer reads is the memory the replies use. In the JSON and the table."""
    import io
    import json

    from rich.console import Console

    from contextbot.analysis.report import print_report

    from ..conftest import SHIPPED_GRU, cli
    rc, out, err = cli(capsys, "eval", "--checkpoint", SHIPPED_GRU, "--per-category", "12",
                      "--valid", tiny_corpus, "--json")  # a small validation file: quicker
    assert rc == 0, err
    r = json.loads(out)
    a = r["agreement"]
    assert a["label"] == evaluate.AGREEMENT_LABEL and a["total"] >= 60
    assert a["accuracy"] == round(a["right"] / a["total"], 4) >= 0.95, a
    console = Console(width=200, record=True, file=io.StringIO())
    print_report(r, console)
    text = console.export_text()
    row = next(line for line in text.splitlines() if evaluate.AGREEMENT_LABEL in line and "│" in line)
    assert f"{a['accuracy']:.1%}" in row and f"{a['right']}" in row
