"""The referent labels (contextbot/text/referents.py) and the auxiliary loss that trains on them."""

import json

import pytest
import torch

from contextbot.model import checkpoint
from contextbot.text.corpus import Conversation
from contextbot.paths import DEFAULT_FACTS
from contextbot.train.batches import IGNORE, BatchSchedule, encode_conversation
from contextbot.errors import ContextbotError
from contextbot.text.facts import load_facts
from contextbot.text.referents import NOBODY, UNKNOWN, Referents
from contextbot.train.loop import TrainOptions, train

ENTITIES = load_facts(DEFAULT_FACTS)
TOM = 2 + next(i for i, e in enumerate(ENTITIES) if e.name == "Tom Cruise")
MEGAN = 2 + next(i for i, e in enumerate(ENTITIES) if e.name == "Megan Fox")


def test_labels_follow_the_corpus_rules():
    conv = Conversation([
        ("Where does he live?", "Who do you mean?"),
        ("who is tom cruise. where he lives?", "He is an American actor and lives in Beverly Hills."),
        ("Thanks!", "You are welcome."),
        ("Tell me about Megan Fox.", "She is an American actress."),
        ("Where does he live?", "He lives in Beverly Hills."),
        ("Who is Zorb Kalo?", "I don't know who that is."),
        ("Where does she live?", "I don't know."),
    ])
    turns = Referents(ENTITIES).turns(conv)
    assert [after for _, after in turns] == [
        (NOBODY, NOBODY), (TOM, NOBODY), (TOM, NOBODY), (TOM, MEGAN), (TOM, MEGAN),
        (UNKNOWN, UNKNOWN), (UNKNOWN, UNKNOWN)]
    # A question is read with the referents from before it: the compound turn learns Tom at "A: ".
    assert turns[1][0] == (NOBODY, NOBODY) and turns[3][0] == (TOM, NOBODY)


def test_every_input_position_is_labelled_question_before_answer_after(tiny_tokenizer):
    conv = Conversation([("Who is Tom Cruise?", "He is an American actor."),
                         ("Who is Megan Fox?", "She is an American actress.")])
    e = encode_conversation(conv, tiny_tokenizer, 3.0, Referents(ENTITIES))
    assert e.referents.shape == (len(e.inputs), 2)
    labels = [tuple(r) for r in e.referents.tolist()]
    q1 = len(tiny_tokenizer.encode("Q: Who is Tom Cruise?"))
    first_turn = len(tiny_tokenizer.encode("Q: Who is Tom Cruise?\nA: He is an American actor.\n"))
    assert set(labels[:q1]) == {(NOBODY, NOBODY)}  # reading the first question: nobody yet
    assert set(labels[q1:first_turn]) == {(TOM, NOBODY)}  # from "\nA: " on: Tom
    q2 = first_turn + len(tiny_tokenizer.encode("Q: Who is Megan Fox?"))
    assert set(labels[first_turn:q2]) == {(TOM, NOBODY)}
    assert set(labels[q2:]) == {(TOM, MEGAN)}


def test_padding_carries_no_referent_loss(tiny_tokenizer):
    conv = Conversation([("Who is Tom Cruise?", "He is an American actor.")])
    e = encode_conversation(conv, tiny_tokenizer, 3.0, Referents(ENTITIES))
    b = BatchSchedule([e], batch=1, seq_len=64, seed=0).get(0)
    pad = b.weights[0] == 0
    assert pad.any() and (b.referents[0][pad] == IGNORE).all() and (b.referents[0][~pad] >= 0).all()


def test_training_with_the_referent_signal_learns_to_read_who_he_is(tiny_corpus, tmp_path):
    """The tiny corpus names Tom Cruise and Megan Fox: after training, the head reads them off
    the state where the corpus says so; the checkpoint keeps the head, and chat ignores it."""
    out = tmp_path / "m.safetensors"
    train(TrainOptions(corpus=str(tiny_corpus), valid=None, out=str(out), hidden=32, embed=8, batch=2,
                       seq_len=0, steps=150, lr=3e-2, warmup=5, json=True, referent_weight=1.0,
                       facts=str(DEFAULT_FACTS)))
    ck = checkpoint.load(out)
    assert ck.config.referents == len(ENTITIES) + 2
    conv = Conversation([("Who is Tom Cruise?", "He is an American actor."),
                         ("Where does he live?", "He lives in Beverly Hills.")])
    e = encode_conversation(conv, ck.tokenizer, 3.0, Referents(ENTITIES))
    with torch.no_grad():
        _, _, who = ck.model(e.inputs.long().unsqueeze(0), None, referents=True)
    predicted = who[0].argmax(-1)
    right = (predicted == e.referents.long()).float().mean()
    assert right > 0.9, f"the head reads the referents right at only {right:.0%} of positions"


def test_a_corpus_that_names_nobody_trains_without_the_head(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Q: Hello!\nA: Hi there!\nQ: How are you?\nA: Fine.\n", encoding="utf-8")
    out = tmp_path / "m.safetensors"
    train(TrainOptions(corpus=str(corpus), valid=None, out=str(out), hidden=8, embed=4, batch=1,
                       seq_len=16, steps=2, json=True))
    assert checkpoint.load(out).config.referents == 0


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_resume_with_the_referent_signal_is_exact(tiny_corpus, tmp_path, cell):
    kw = dict(corpus=str(tiny_corpus), valid=None, hidden=16, embed=8, batch=2, seq_len=24,
              checkpoint_every=2, json=True, cell=cell, referent_weight=1.0, facts=str(DEFAULT_FACTS))
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    train(TrainOptions(out=str(full), steps=7, **kw))
    train(TrainOptions(out=str(part), steps=3, **kw))
    train(TrainOptions(out=str(part), steps=7, resume=True, corpus=str(tiny_corpus), valid=None, json=True,
                       facts=str(DEFAULT_FACTS)))
    a, b = checkpoint.load(full).model.state_dict(), checkpoint.load(part).model.state_dict()
    assert "referent_head.weight" in a and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_people_for_the_referent_signal(tiny_corpus, tmp_path):
    """The referent head's class 2 + i is person i of the facts file. Resuming with another facts
    file (here the same people, two swapped) would silently relabel every class: refused."""
    kw = dict(corpus=str(tiny_corpus), valid=None, hidden=16, embed=8, batch=2, seq_len=24, json=True)
    out = tmp_path / "m.safetensors"
    train(TrainOptions(out=str(out), steps=2, referent_weight=1.0, facts=str(DEFAULT_FACTS), **kw))
    raw = json.loads(DEFAULT_FACTS.read_text(encoding="utf-8"))
    raw["entities"][0], raw["entities"][2] = raw["entities"][2], raw["entities"][0]
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(ContextbotError, match="other people for the referent signal"):
        train(TrainOptions(out=str(out), steps=4, resume=True, facts=str(swapped), **kw))
    assert checkpoint.load(out).step == 2  # nothing was written
    train(TrainOptions(out=str(out), steps=4, resume=True, facts=str(DEFAULT_FACTS), **kw))
    assert checkpoint.load(out).step == 4


def test_the_facts_beside_the_corpus_are_found_and_a_corpus_without_them_still_trains(tmp_path, capsys):
    """`corpus build` writes train.txt beside facts.json: training finds it there. Without any
    facts file the run says so on one line and trains without the head."""
    import shutil
    from contextbot.cli import main
    from ..conftest import TINY_CORPUS
    with_facts = tmp_path / "mine"
    with_facts.mkdir()
    (with_facts / "train.txt").write_text(TINY_CORPUS, encoding="utf-8")
    shutil.copy(DEFAULT_FACTS, with_facts / "facts.json")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "train.txt").write_text(TINY_CORPUS, encoding="utf-8")
    for folder, classes in ((with_facts, len(ENTITIES) + 2), (alone, 0)):
        out = folder / "m.safetensors"
        assert main(["train", "--corpus", str(folder / "train.txt"), "--valid", "none", "--out", str(out),
                     "--steps", "2", "--hidden", "8", "--batch", "2", "--seq-len", "16"]) == 0
        assert checkpoint.load(out).config.referents == classes
    assert "training without the referent signal" in capsys.readouterr().err


#: People whose names change under the corpus's case noise in ways lower() does not take back.
UNICODE_PEOPLE = [
    ("Yusuf Yılmaz", "he"), ("Işıl Ünal", "she"), ("Jürgen Weiß", "he"), ("µarco Caſpar", "he"),
    ("Ὀδυσσεύς Λαέρτιος", "he"), ("\u212Aelvin ﬁnch", "he"), ("İlkay Gündoğan", "she"),
]


def test_training_on_names_in_every_case_runs_and_labels_them(tmp_path, capsys):
    """Issue: `contextbot train` died with a KeyError in the referent labels when the corpus wrote
    "YUSUF YILMAZ" in capitals. Now a corpus built from such names trains (a few tiny steps), and
    the labels name those people wherever a question names them, in whatever case."""
    from contextbot.cli import main
    from contextbot.text import corpus
    from contextbot.text.facts import name_key

    people = [{"name": n, "pronoun": p, "profession": "doctor", "nationality": "Turkish",
               "city": "İzmir", "spouse": None, "born": 1980 + i} for i, (n, p) in enumerate(UNICODE_PEOPLE)]
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"entities": people}, ensure_ascii=False), encoding="utf-8")
    train_txt, _ = corpus.build(facts, seed=3, train_conversations=150, valid_conversations=5)
    entities = load_facts(facts)
    convs = list(corpus.read_conversations(train_txt))
    questions = [q for c in convs for q, _ in c.turns]
    # The corpus really writes these names in capitals and in lower case.
    for name, _ in UNICODE_PEOPLE[:2]:
        assert any(name.upper() in q for q in questions), name
        assert any(name.lower() in q for q in questions), name
    ref = Referents(entities)
    named = 0
    for c in convs:
        for (q, a), (_, after) in zip(c.turns, ref.turns(c)):
            people = [i for i, e in enumerate(entities) if name_key(e.name) in name_key(q)]
            if a == "I don't know who that is." or len(people) != 1:
                continue
            e = entities[people[0]]
            assert after[("he", "she").index(e.pronoun)] == 2 + people[0], (q, after)
            named += q.upper() == q or q.lower() == q
    assert named > 10  # questions in capitals or lower case that name someone were labelled
    out = tmp_path / "m.safetensors"
    rc = main(["train", "--corpus", str(train_txt), "--valid", "none", "--out", str(out), "--steps", "2",
               "--hidden", "8", "--batch", "2", "--seq-len", "32"])
    assert rc == 0, capsys.readouterr().err
    assert checkpoint.load(out).config.referents == len(entities) + 2
    assert "Traceback" not in capsys.readouterr().err
