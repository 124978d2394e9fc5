import json
import subprocess
import sys

import pytest
import torch

from contextbot.errors import ContextbotError
from contextbot.model import checkpoint
from contextbot.paths import DEFAULT_FACTS
from contextbot.train.loop import learning_rate, train
from contextbot.train.options import TrainOptions

TINY = dict(hidden=16, embed=8, batch=2, seq_len=24, eval_every=3, checkpoint_every=2, json=True,
            referent_weight=0.0)  # the referent signal has tests of its own (test_referents.py)


def _opts(tiny_corpus, out, **kw):
    return TrainOptions(corpus=str(tiny_corpus), valid=str(tiny_corpus), out=str(out), **(TINY | kw))


def _weights(path):
    return checkpoint.load(path).model.state_dict()


def test_training_writes_a_loadable_checkpoint_and_learns(tiny_corpus, tmp_path):
    out = tmp_path / "m.safetensors"
    s = train(_opts(tiny_corpus, out, steps=100, lr=3e-2, hidden=32, warmup=5, eval_every=1000))
    assert s["steps"] == 100 and s["chars"] > 0 and s["valid_bpc"] is not None
    # A model that knows nothing needs log2(vocab) ≈ 8.4 bits a character; this one has learnt.
    assert s["valid_bpc"] < 3.0
    ck = checkpoint.load(out)
    assert ck.step == 100 and ck.metadata["corpus_sha256"]


def test_same_seed_same_weights(tiny_corpus, tmp_path):
    train(_opts(tiny_corpus, tmp_path / "a.safetensors", steps=5))
    train(_opts(tiny_corpus, tmp_path / "b.safetensors", steps=5))
    a, b = _weights(tmp_path / "a.safetensors"), _weights(tmp_path / "b.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_corpus, tmp_path, cell):
    full = tmp_path / "full.safetensors"
    part = tmp_path / "part.safetensors"
    train(_opts(tiny_corpus, full, steps=9, cell=cell, dropout=0.1, layers=2))
    train(_opts(tiny_corpus, part, steps=4, cell=cell, dropout=0.1, layers=2))
    assert checkpoint.load(part).step == 4
    train(_opts(tiny_corpus, part, steps=9, resume=True))
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"


def test_resume_refuses_another_corpus(tiny_corpus, tmp_path):
    out = tmp_path / "m.safetensors"
    train(_opts(tiny_corpus, out, steps=2))
    other = tmp_path / "other.txt"
    other.write_text("Q: Hi\nA: Hello\n", encoding="utf-8")
    with pytest.raises(ContextbotError, match="different corpus"):
        train(TrainOptions(corpus=str(other), valid=None, out=str(out), steps=4, resume=True))


def test_learning_rate_warms_up_then_decays():
    o = TrainOptions(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert learning_rate(o, 0) == pytest.approx(0.1)
    assert learning_rate(o, 9) == pytest.approx(1.0)
    assert learning_rate(o, 60) == pytest.approx(0.55)
    assert learning_rate(o, 110) == pytest.approx(0.1)


def test_cli_train_json_summary(tiny_corpus, tmp_path):
    out = tmp_path / "m.safetensors"
    r = subprocess.run([sys.executable, "-m", "contextbot", "train", "--corpus", str(tiny_corpus),
                        "--valid", "none", "--out", str(out), "--steps", "3", "--hidden", "8",
                        "--batch", "2", "--seq-len", "16", "--json", "--facts", str(DEFAULT_FACTS)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(summary) >= {"steps", "chars", "seconds", "chars_per_sec", "train_bpc", "valid_bpc", "config"}
    assert summary["steps"] == 3 and summary["config"]["hidden"] == 8
    assert set(summary["config"]) == {"cell", "vocab_size", "embed", "hidden", "layers", "batch", "seq_len",
                                      "referents"}
    assert summary["config"]["referents"] > 0  # the tiny corpus names people from facts.json


@pytest.mark.parametrize("content,why", [
    (b"", "no Q/A turns"),
    (b"\xff\xfe\x00bad", "NUL"),
    (b"Q: caf\xe9\nA: x\n", "not UTF-8"),
    (b"just some prose\n", "expected a line starting with"),
    (b"A: an answer first\n", "answer without a question"),
])
def test_bad_corpus_exits_2_with_one_line(tmp_path, content, why):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    for cmd in (["train", "--corpus", str(p), "--out", str(tmp_path / "m.safetensors")],
                ["corpus", "check", str(p)]):
        r = subprocess.run([sys.executable, "-m", "contextbot", *cmd], capture_output=True, text=True)
        assert r.returncode == 2
        assert r.stderr.startswith("contextbot: error: ") and r.stderr.count("\n") == 1
        assert why in r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_cli_help_states_the_real_defaults():
    """The recipe lives in TrainOptions; `contextbot train --help` must not drift from it."""
    import re

    from contextbot.cli import build_parser
    full = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    help_text = " ".join(full.split("options:", 1)[1].split())
    o = TrainOptions()
    for flag, value in [("--hidden", o.hidden), ("--layers", o.layers), ("--embed", o.embed),
                        ("--batch", o.batch), ("--seq-len", o.seq_len), ("--steps", o.steps),
                        ("--checkpoint-every", o.checkpoint_every), ("--eval-every", o.eval_every),
                        ("--answer-weight", o.answer_weight), ("--lr", o.lr)]:
        m = re.search(re.escape(flag) + r" \S+ .*?\(default ([^)\s;]+)", help_text)
        assert m, flag
        assert float(m.group(1)) == float(value), (flag, m.group(1), value)


def test_on_checkpoint_sees_every_checkpoint_and_can_stop_training(tiny_corpus, tmp_path):
    seen = []

    def hook(step, model):
        seen.append(step)
        return step == 4  # "target reached"

    out = tmp_path / "m.safetensors"
    s = train(_opts(tiny_corpus, out, steps=10), on_checkpoint=hook)
    assert seen == [2, 4] and s["steps"] == 4 and checkpoint.load(out).step == 4


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_whole_conversation_training_resumes_exactly(tiny_corpus, tmp_path, cell):
    """--seq-len 0: whole conversations per step, each from a zero state; resume is still exact."""
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    train(_opts(tiny_corpus, full, steps=7, cell=cell, seq_len=0))
    train(_opts(tiny_corpus, part, steps=3, cell=cell, seq_len=0))
    train(_opts(tiny_corpus, part, steps=7, resume=True, seq_len=0))  # a recipe option given must agree
    a, b = _weights(full), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"


def test_whole_conversation_batches_cover_every_conversation_once_an_epoch():
    from contextbot.train.batches import ConversationBatches, Encoded

    def conv(n, tag):
        return Encoded(torch.full((n,), tag, dtype=torch.int32), torch.ones(n - 1),
                       torch.ones(n - 1, dtype=torch.int16))

    encoded = [conv(3 + (i * 7) % 20, i) for i in range(40)]
    sched = ConversationBatches(encoded, batch=4, seed=0, pool=2)
    seen = []
    step = 0
    while sched.get(step) is not None and sched.epoch == 0:
        b = sched.get(step)
        assert b.inputs.shape[0] == 4 and not b.keep[:, 0].any()  # every row starts from zeros
        assert b.keep[:, 1:].all()  # and is one conversation: no reset after its start
        for row, w in zip(b.inputs, b.weights):
            n = int((w > 0).sum())  # real targets; padding weighs 0
            tag = int(row[0])
            assert n == len(encoded[tag].inputs) and (row[:n] == tag).all() and (row[n:] == 0).all()
            seen.append(tag)
        step += 1
    assert sorted(seen) == list(range(40))
    # Sorting within pools keeps padding small: these lengths differ by up to 19 tokens.
    pads = [float((sched.get(s).weights == 0).float().mean()) for s in range(step)]
    assert sum(pads) / len(pads) < 0.25
