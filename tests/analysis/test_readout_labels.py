"""The readout names its classes: by the names training stores in the checkpoint, else by a facts
file whose fingerprint matches the checkpoint's, else "person 1", "person 2", ..."""

from __future__ import annotations

import json
import shutil

from contextbot.analysis.readout import NOBODY_LABEL, UNKNOWN_LABEL, Readout, referent_labels
from contextbot.model import checkpoint
from contextbot.paths import DEFAULT_FACTS
from contextbot.text.facts import load_facts
from contextbot.text.referents import Referents
from contextbot.train.loop import TrainOptions, train

from ..conftest import TINY_CORPUS

PEOPLE = {"entities": [
    {"name": "Tom Cruise", "pronoun": "he", "profession": "actor", "nationality": "American",
     "city": "Beverly Hills", "spouse": None, "born": 1962},
    {"name": "Megan Fox", "pronoun": "she", "profession": "actress", "nationality": "American",
     "city": "Los Angeles", "spouse": None, "born": 1986},
]}


def trained(tmp_path):
    """A two-step model trained with the referent signal on a facts file beside its corpus."""
    (tmp_path / "facts.json").write_text(json.dumps(PEOPLE), encoding="utf-8")
    corpus = tmp_path / "train.txt"
    corpus.write_text(TINY_CORPUS, encoding="utf-8")
    out = tmp_path / "m.safetensors"
    train(TrainOptions(corpus=str(corpus), valid=None, out=str(out), hidden=16, embed=8, batch=2,
                       seq_len=0, steps=2, json=True, referent_weight=1.0))
    return out


def test_training_stores_the_people_names_and_the_readout_uses_them(tmp_path):
    ck = checkpoint.load(trained(tmp_path))
    assert ck.train_options["referent_names"] == ["Tom Cruise", "Megan Fox"]
    assert Readout.of(ck).labels == [NOBODY_LABEL, UNKNOWN_LABEL, "Tom Cruise", "Megan Fox"]


def test_without_stored_names_the_facts_beside_the_corpus_name_them_by_fingerprint(tmp_path):
    ck = checkpoint.load(trained(tmp_path))
    options = dict(ck.train_options, referent_names=[])  # as checkpoints written before the names
    ck.metadata["train"] = json.dumps(options)
    assert referent_labels(ck)[2:] == ["Tom Cruise", "Megan Fox"]
    # Another facts file beside the corpus, with other people: the fingerprint no longer matches.
    other = {"entities": [dict(e, name=e["name"] + " Jr") for e in PEOPLE["entities"]]}
    (tmp_path / "facts.json").write_text(json.dumps(other), encoding="utf-8")
    assert referent_labels(ck)[2:] == ["person 1", "person 2"]


def test_the_shipped_facts_name_an_old_checkpoint_with_their_fingerprint(tmp_path):
    entities = load_facts(DEFAULT_FACTS)
    ck = checkpoint.load(trained(tmp_path))
    # Pretend this model was trained on the shipped people, from a corpus that has since moved.
    shutil.rmtree(tmp_path / "gone", ignore_errors=True)
    options = dict(ck.train_options, referent_names=None, referents=Referents(entities).key(),
                   corpus=str(tmp_path / "gone" / "train.txt"))
    ck.metadata["train"] = json.dumps(options)
    ck.model.config.referents = len(entities) + 2
    assert referent_labels(ck)[2:] == [e.name for e in entities]
