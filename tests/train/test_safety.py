"""Training must never lose the user's data, nor run on what cannot train (contextbot/train/).

- a run that diverges (a non-finite loss, gradient, weight, optimizer or carried state) stops in
  one line, exit 2, and the checkpoint on disk stays the last good one, byte for byte;
- --out can never be a file that training reads (--corpus, --valid, --facts), however spelt;
- --valid defaults to the valid.txt beside --corpus, and the "resume with" hint after Ctrl-C is a
  command that, run as printed, continues the same run to the same weights;
- absurd flag values, and absurd recipes in a checkpoint, are one line before anything is
  allocated or any step runs;
- `--resume` refuses a recipe flag that disagrees with the checkpoint instead of ignoring it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from contextbot.errors import ContextbotError
from contextbot.model import checkpoint
from contextbot.paths import DEFAULT_FACTS
from contextbot.train import loop, resume
from contextbot.train.batches import IGNORE
from contextbot.train.options import TrainOptions

from ..conftest import TINY_CORPUS, assert_one_line_error, cli
from .conftest import TIMEOUT, fingerprint, launcher, one_thread

# --referent-weight 0: the tiny corpus's folder has no facts file, and training would say so.
SMALL = ["--hidden", "16", "--embed", "8", "--batch", "2", "--seq-len", "24", "--referent-weight", "0", "--json"]
DIVERGED = r"step (\d+): the (loss|gradient norm|weights|optimizer state|carried state) (is|are) not finite \(the run diverged; try a lower --lr\)"


def _train(capsys, corpus, out, *extra) -> tuple[int, str, str]:
    return cli(capsys, "train", "--corpus", corpus, "--valid", "none", "--out", out, *SMALL, *extra)


def _prints(path: Path) -> tuple[int, str]:
    ck = checkpoint.load(path)
    return ck.step, fingerprint(ck.model.state_dict(), ck.train_tensors)


@pytest.fixture
def good(tiny_corpus, tmp_path, capsys) -> Path:
    """A healthy checkpoint at step 4 (checkpoints every 2 steps)."""
    out = tmp_path / "m.safetensors"
    rc, _, err = _train(capsys, tiny_corpus, out, "--steps", "4", "--checkpoint-every", "2")
    assert rc == 0, err
    return out


# -- 1. a diverging run keeps the last good checkpoint -------------------------------------------

@pytest.mark.parametrize("lr", ["1e30", "1e12", "1e8"])
def test_a_huge_learning_rate_stops_and_keeps_the_last_good_checkpoint(tiny_corpus, tmp_path, capsys, lr):
    """Checkpoints every step: the run stops at the first non-finite step, exit 2, and the file
    holds the step before it, loadable, never a NaN."""
    out = tmp_path / "m.safetensors"
    rc, stdout, err = _train(capsys, tiny_corpus, out, "--lr", lr, "--steps", "200", "--checkpoint-every", "1")
    assert_one_line_error(rc, err, DIVERGED)
    assert stdout == "", "no summary for a run that failed"
    m = re.search(DIVERGED + r"; (\S+) still holds the last good checkpoint \(step (\d+)\)$", err.strip())
    assert m, err
    stopped, kept = int(m.group(1)), int(m.group(5))
    assert Path(m.group(4)) == out and kept == stopped - 1
    ck = checkpoint.load(out)  # checks every weight is finite
    assert ck.step == kept
    assert all(torch.isfinite(t).all() for t in ck.train_tensors.values() if t.is_floating_point())


def test_a_diverging_new_run_leaves_an_older_file_untouched(good, tiny_corpus, capsys):
    before = good.read_bytes()
    rc, _, err = _train(capsys, tiny_corpus, good, "--lr", "1e30", "--steps", "200", "--checkpoint-every", "100")
    assert_one_line_error(rc, err, DIVERGED + rf"; nothing was saved to {re.escape(str(good))}$")
    assert good.read_bytes() == before
    assert checkpoint.load(good).step == 4


def _break(what: str):
    """Make one part of a training run non-finite, as a bug or bad arithmetic would."""
    def nan_weight(run):
        with torch.no_grad():
            run.model.rnn.weight_hh_l0[0, 0] = math.nan

    def inf_unused_embedding(run):  # a byte piece the corpus never uses: the loss stays finite
        row = next(i for i, b in enumerate(run.tok.piece_byte) if b is not None)
        with torch.no_grad():
            run.model.embedding.weight[row] = math.inf

    def nan_optimizer(run):
        state = next(iter(run.opt.state.values()))
        state["exp_avg_sq"].fill_(math.nan)

    def nan_state(run):
        run.state = torch.full_like(run.state, math.nan)

    def inf_state(run):
        run.state = torch.full_like(run.state, math.inf)

    return locals()[what]


@pytest.mark.parametrize("what,found", [
    ("nan_weight", "the loss is"), ("inf_unused_embedding", "the weights are"),
    ("nan_optimizer", "the (weights|loss) (is|are)"), ("nan_state", "the loss is"),
    ("inf_state", "the loss is"),
])
def test_non_finite_values_mid_run_stop_it_and_the_checkpoint_stays(good, tiny_corpus, capsys, monkeypatch,
                                                                   what, found):
    """Resumed from step 4, checkpoints at 6, 8, ...; something turns non-finite before step 6:
    whether the loss shows it at once or only the weights do when step 6 is saved, nothing is
    written and the step-4 file is byte for byte what it was, and still resumes."""
    before = good.read_bytes()
    real, breaker = loop.train_step, _break(what)

    def train_step(run, b):
        if run.step == 5:
            breaker(run)
        return real(run, b)

    monkeypatch.setattr(loop, "train_step", train_step)
    rc, _, err = _train(capsys, tiny_corpus, good, "--steps", "12", "--checkpoint-every", "2", "--resume")
    assert_one_line_error(rc, err, rf"step 6: {found} not finite .*still holds the last good checkpoint \(step 4\)")
    assert good.read_bytes() == before
    monkeypatch.setattr(loop, "train_step", real)
    rc, _, err = _train(capsys, tiny_corpus, good, "--steps", "6", "--checkpoint-every", "2", "--resume")
    assert rc == 0, err
    assert checkpoint.load(good).step == 6


def test_the_last_good_checkpoint_is_the_last_one_this_run_wrote(good, tiny_corpus, capsys, monkeypatch):
    real, breaker = loop.train_step, _break("nan_weight")
    saved = {}

    def train_step(run, b):
        if run.step == 7:
            saved["bytes"] = good.read_bytes()  # the step-6 checkpoint, written by this run
            breaker(run)
        return real(run, b)

    monkeypatch.setattr(loop, "train_step", train_step)
    rc, _, err = _train(capsys, tiny_corpus, good, "--steps", "12", "--checkpoint-every", "2", "--resume")
    assert_one_line_error(rc, err, r"step 8: the loss is not finite .*\(step 6\)$")
    assert good.read_bytes() == saved["bytes"] and checkpoint.load(good).step == 6


def _nan_referent_loss(monkeypatch, from_step: int, run_step: list[int]):
    """The referent head's cross entropy (the call with ignore_index) turns NaN from a step on."""
    real = torch.nn.functional

    def cross_entropy(*args, **kw):
        ce = real.cross_entropy(*args, **kw)
        if kw.get("ignore_index") == IGNORE and run_step[0] >= from_step:
            return ce + math.nan
        return ce

    monkeypatch.setattr(loop, "F", SimpleNamespace(cross_entropy=cross_entropy))
    step = loop.train_step

    def train_step(run, b):
        run_step[0] = run.step
        return step(run, b)

    monkeypatch.setattr(loop, "train_step", train_step)


@pytest.mark.parametrize("from_step,kept", [(0, None), (3, 2)])
def test_a_nan_in_the_referent_loss_stops_the_run(tiny_corpus, tmp_path, capsys, monkeypatch, from_step, kept):
    """The language model's own loss is finite; only the referent signal's is not. That too is
    a diverged run: nothing is saved from it."""
    out = tmp_path / "m.safetensors"
    _nan_referent_loss(monkeypatch, from_step, [0])
    rc, _, err = _train(capsys, tiny_corpus, out, "--facts", DEFAULT_FACTS, "--referent-weight", "1", "--steps", "10",
                        "--checkpoint-every", "2")
    assert_one_line_error(rc, err, rf"step {from_step + 1}: the loss is not finite")
    if kept is None:
        assert "nothing was saved" in err and not out.exists()
    else:
        assert f"(step {kept})" in err and checkpoint.load(out).step == kept
        assert checkpoint.load(out).config.referents > 0


def test_save_refuses_a_non_finite_optimizer_state(tiny_corpus, tmp_path):
    """The save itself checks what it writes, whatever the loop before it did."""
    out = tmp_path / "m.safetensors"
    o = TrainOptions(corpus=str(tiny_corpus), valid=None, out=str(out), hidden=8, embed=4, batch=2,
                     seq_len=16, steps=1, json=True)
    run = loop.prepare(o, loop.distributed.World())
    loop.train_step(run, run.schedule.get(0))
    for state in run.opt.state.values():
        state["exp_avg"].fill_(math.inf)
    with pytest.raises(ContextbotError, match="step 1: the optimizer state is not finite.*nothing was saved"):
        loop.save(run, loop.Clock(None))
    assert not out.exists()


RANK_ONE_DIVERGES = """
import math, os, sys
import torch
from contextbot.cli import main
from contextbot.train import loop
real = loop.train_step
def train_step(run, b):
    if os.environ["RANK"] == "1" and run.step == 2:  # rank 1's streams alone go NaN
        run.state = torch.full_like(run.state, math.nan)
    return real(run, b)
loop.train_step = train_step
sys.exit(main(["train", "--corpus", sys.argv[1], "--valid", "none", "--out", sys.argv[2], "--steps", "8",
               "--hidden", "8", "--embed", "4", "--batch", "2", "--seq-len", "16", "--checkpoint-every", "2"]))
"""


def test_under_torchrun_every_rank_stops_together(tiny_corpus, tmp_path):
    """A NaN on rank 1 only: both ranks stop at the same step (no rank waits forever in a
    collective), rank 0 says why in one line, and the step-2 checkpoint stands."""
    script = tmp_path / "rank_one_diverges.py"
    script.write_text(RANK_ONE_DIVERGES, encoding="utf-8")
    out = tmp_path / "m.safetensors"
    env = os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([*launcher(), "--standalone", "--nproc_per_node", "2", str(script), str(tiny_corpus),
                        str(out)], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert r.returncode != 0
    assert r.stderr.count("contextbot: error: ") == 1, r.stderr[-3000:]
    assert re.search(r"contextbot: error: step 3: the loss is not finite .*\(step 2\)", r.stderr), r.stderr[-3000:]
    assert "contextbot/" not in r.stderr, "no rank crashed with a traceback"
    assert checkpoint.load(out).step == 2


# -- 2. --out is never a file that training reads ------------------------------------------------

def _spellings(folder: Path, name: str) -> list[str]:
    """Ways to name folder/name from inside folder: relative, ./, .., absolute, a symlink, a hard link."""
    (folder / "sub").mkdir(exist_ok=True)
    (folder / f"link-{name}").symlink_to(folder / name)
    os.link(folder / name, folder / f"hard-{name}")
    return [name, f"./{name}", f"sub/../{name}", str(folder / name), f"{folder}//{name}",
            f"link-{name}", f"hard-{name}"]


@pytest.mark.parametrize("role", ["--corpus", "--valid", "--facts", "facts beside the corpus"])
def test_out_may_not_be_a_file_training_reads(tmp_path, capsys, monkeypatch, role):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.txt").write_text(TINY_CORPUS, encoding="utf-8")
    (tmp_path / "valid.txt").write_text(TINY_CORPUS, encoding="utf-8")
    (tmp_path / "facts.json").write_bytes(DEFAULT_FACTS.read_bytes())
    (tmp_path / "people.json").write_bytes(DEFAULT_FACTS.read_bytes())
    target = {"--corpus": "train.txt", "--valid": "valid.txt", "--facts": "people.json",
              "facts beside the corpus": "facts.json"}[role]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    for spelling in _spellings(tmp_path, target):
        flags = ["--corpus", "train.txt", "--valid", "valid.txt", "--out", spelling, "--steps", "1",
                 "--hidden", "8", "--batch", "2", "--seq-len", "16"]
        if role == "--facts":
            flags += ["--facts", "people.json"]
        rc, _, err = cli(capsys, "train", *flags)
        assert_one_line_error(rc, err, rf"--out {re.escape(spelling)} is .*training would replace it")
        with pytest.raises(ContextbotError, match="training would replace it"):  # the Python API agrees
            TrainOptions(corpus="train.txt", valid="valid.txt", out=spelling,
                         facts="people.json" if role == "--facts" else None).validate()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.name in before}
    assert after == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_out_beside_the_corpus_is_fine(tmp_path, capsys):
    (tmp_path / "train.txt").write_text(TINY_CORPUS, encoding="utf-8")
    rc, _, err = cli(capsys, "train", "--corpus", tmp_path / "train.txt", "--out", tmp_path / "train.safetensors",
                     "--steps", "1", "--hidden", "8", "--batch", "2", "--seq-len", "16", "--json")
    assert rc == 0, err


# -- 3. --valid beside the corpus, and a resume hint that resumes -------------------------------

def test_valid_defaults_to_the_valid_txt_beside_the_corpus(tmp_path, capsys):
    with_valid, alone = tmp_path / "with", tmp_path / "alone"
    for folder in (with_valid, alone):
        folder.mkdir()
        (folder / "train.txt").write_text(TINY_CORPUS, encoding="utf-8")
    (with_valid / "valid.txt").write_text(TINY_CORPUS.split("\n\n")[0] + "\n", encoding="utf-8")
    assert TrainOptions(corpus=str(with_valid / "train.txt")).valid == str(with_valid / "valid.txt")
    assert TrainOptions(corpus=str(alone / "train.txt")).valid is None
    assert TrainOptions(corpus=str(with_valid / "train.txt"), valid=None).valid is None

    argv = ["--steps", "2", "--hidden", "8", "--batch", "2", "--seq-len", "16", "--json"]
    rc, out, err = cli(capsys, "train", "--corpus", with_valid / "train.txt", "--out", tmp_path / "a.safetensors", *argv)
    assert rc == 0, err
    assert json.loads(out)["valid_bpc"] is not None and "valid.txt" not in err
    rc, out, err = cli(capsys, "train", "--corpus", alone / "train.txt", "--out", tmp_path / "b.safetensors", *argv)
    assert rc == 0, err
    assert json.loads(out)["valid_bpc"] is None
    notes = [line for line in err.splitlines() if "valid.txt" in line]
    assert notes == [f"note: no valid.txt beside {alone / 'train.txt'} (pass --valid FILE): training without validation"]
    rc, _, err = cli(capsys, "train", "--corpus", alone / "train.txt", "--valid", "none",
                     "--out", tmp_path / "c.safetensors", *argv)
    assert rc == 0 and "valid.txt" not in err  # asked for: nothing to say


def _send_ctrl_c(monkeypatch, at_step: int, times: int) -> None:
    """Press Ctrl-C `times` times just before step `at_step` + 1 (in this process: the handler
    that training installs gets real SIGINTs)."""
    real = loop.train_step

    def train_step(run, b):
        if run.step == at_step:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # let the handler run before the next one
        return real(run, b)

    monkeypatch.setattr(loop, "train_step", train_step)


@pytest.mark.parametrize("times", [1, 2])
def test_the_resume_hint_continues_the_same_run(tmp_path, capsys, monkeypatch, times):
    """Ctrl-C once (saves, then stops) or twice (stops at once; the last checkpoint stands): the
    printed command, run exactly as printed, ends on the weights, Adam moments, carried state and
    RNG of a run never interrupted. Paths with spaces, and every flag that is not the recipe's."""
    data = tmp_path / "my data"
    data.mkdir()
    corpus, valid = data / "train set.txt", data / "held out.txt"
    corpus.write_text(TINY_CORPUS, encoding="utf-8")
    valid.write_text(TINY_CORPUS, encoding="utf-8")
    flags = ["--corpus", corpus, "--valid", valid, "--facts", DEFAULT_FACTS, "--steps", "12",
             "--minutes", "30", "--checkpoint-every", "3", "--eval-every", "4", "--json",
             "--hidden", "16", "--embed", "8", "--layers", "2", "--dropout", "0.1", "--batch", "2",
             "--seq-len", "24", "--seed", "5", "--lr", "0.01"]
    with one_thread():
        ref = tmp_path / "ref.safetensors"
        assert cli(capsys, "train", *flags, "--out", ref)[0] == 0
        out = tmp_path / "out dir" / "m.safetensors"
        _send_ctrl_c(monkeypatch, at_step=7, times=times)
        with pytest.raises(SystemExit) as exit:
            cli(capsys, "train", *flags, "--out", out)
        assert exit.value.code == 130
        err = capsys.readouterr().err
        monkeypatch.undo()
        said = err.strip().splitlines()[-1]  # after the validation lines: one line, a command to copy
        m = re.search(r"^interrupted (at|during) step (\d+); .* Resume with: (.+)$", said)
        assert m and "Traceback" not in err, err
        # Once: step 8 is finished and saved. Twice: step 8 is abandoned; step 6 was the last saved.
        assert int(m.group(2)) == 8 and checkpoint.load(out).step == (8 if times == 1 else 6)
        argv = shlex.split(m.group(3))
        assert argv[:2] == ["contextbot", "train"] and argv[-1] == "--resume"
        for flag in ("--corpus", "--valid", "--facts", "--out", "--steps", "--minutes", "--checkpoint-every",
                     "--eval-every", "--json"):
            assert flag in argv, (flag, argv)
        rc, stdout, err = cli(capsys, *argv[1:])
        assert rc == 0, err
    assert json.loads(stdout)["steps"] == 12
    assert _prints(out) == _prints(ref)


def test_the_resume_hint_quotes_for_the_shell():
    o = TrainOptions(corpus="my 'data'/t.txt", valid=None, out="x", steps=9, minutes=1.5, json=True)
    argv = shlex.split(loop.resume_command(o, Path("a b/m $HOME.safetensors")))
    assert argv == ["contextbot", "train", "--corpus", "my 'data'/t.txt", "--valid", "none", "--out",
                    "a b/m $HOME.safetensors", "--steps", "9", "--minutes", "1.5", "--json", "--resume"]


# -- 4. flag values: one line, before anything is allocated -------------------------------------

BAD_FLAGS = [
    (["--chrono-fraction", "nan"], dict(chrono_fraction=math.nan), "--chrono-fraction must be in"),
    (["--chrono-fraction", "1.5"], dict(chrono_fraction=1.5), "--chrono-fraction must be in"),
    (["--chrono-tmax", "nan"], dict(chrono_tmax=math.nan), "--chrono-tmax must be"),
    (["--chrono-tmax", "inf"], dict(chrono_tmax=math.inf), "--chrono-tmax must be"),
    (["--chrono-tmax", "-1"], dict(chrono_tmax=-1.0), "--chrono-tmax must be"),
    (["--answer-weight", "nan"], dict(answer_weight=math.nan), "--answer-weight must be"),
    (["--answer-weight", "-1"], dict(answer_weight=-1.0), "--answer-weight must be"),
    (["--answer-weight", "inf"], dict(answer_weight=math.inf), "--answer-weight must be"),
    (["--referent-weight", "nan"], dict(referent_weight=math.nan), "--referent-weight must be"),
    (["--referent-weight", "-0.5"], dict(referent_weight=-0.5), "--referent-weight must be"),
    (["--lr", "nan"], dict(lr=math.nan), "--lr must be"),
    (["--lr", "inf"], dict(lr=math.inf), "--lr must be"),
    (["--lr", "-1"], dict(lr=-1.0), "--lr must be"),
    (["--lr", "1e39"], dict(lr=1e39), "--lr must be"),  # float32 Adam overflows: not a divergence
    (["--dropout", "nan"], dict(dropout=math.nan), "--dropout must be"),
    (["--dropout", "inf"], dict(dropout=math.inf), "--dropout must be"),
    (["--dropout", "1"], dict(dropout=1.0), "--dropout must be"),
    (["--minutes", "nan"], dict(minutes=math.nan), "--minutes must be"),
    (["--minutes", "inf"], dict(minutes=math.inf), "--minutes must be"),
    (["--minutes", "-2"], dict(minutes=-2.0), "--minutes must be"),
    (["--seed", str(2 ** 64)], dict(seed=2 ** 64), "--seed must be"),
    (["--seed", str(10 ** 30)], dict(seed=10 ** 30), "--seed must be"),
    (["--seed", "-1"], dict(seed=-1), "--seed must be"),
    (["--batch", "100000000"], dict(batch=10 ** 8), "--batch 100000000 is too large"),
    (["--batch", "4096", "--seq-len", "4096"], dict(batch=4096, seq_len=4096), "tokens a step"),
    (["--seq-len", "1000000000"], dict(seq_len=10 ** 9), "--seq-len 1000000000 is too large"),
    (["--seq-len", "-3"], dict(seq_len=-3), "--seq-len must be"),
    (["--steps", "-5"], dict(steps=-5), "--steps must be at least 1"),
    (["--steps", "0"], dict(steps=0), "--steps must be at least 1"),
    (["--steps", str(10 ** 20)], dict(steps=10 ** 20), "--steps must be at most"),
    (["--hidden", "30000"], dict(hidden=30000), "million parameters"),
    (["--hidden", "10000000"], dict(hidden=10 ** 7), "--hidden 10000000 is too large"),
    (["--layers", "200", "--hidden", "2048"], dict(layers=200, hidden=2048), "million parameters"),
    (["--vocab-size", "0"], dict(vocab_size=0), "--vocab-size must be at least 1"),
]


@pytest.fixture
def nothing_may_run(monkeypatch):
    """Fail loudly if training reads the corpus, builds a model or steps: the refusal must come first."""
    def forbidden(*a, **k):
        raise AssertionError("training went on past a value it should have refused")
    for name in ("load_corpus", "RecurrentLM", "train_step", "batch_schedule"):
        monkeypatch.setattr(loop, name, forbidden)


@pytest.mark.parametrize("flags,kw,match", BAD_FLAGS, ids=[" ".join(f) for f, _, _ in BAD_FLAGS])
def test_a_bad_flag_value_is_one_line_before_anything_runs(tiny_corpus, tmp_path, capsys, nothing_may_run,
                                                          flags, kw, match):
    out = tmp_path / "new" / "m.safetensors"
    rc, _, err = cli(capsys, "train", "--corpus", tiny_corpus, "--valid", "none", "--out", out, *flags)
    assert_one_line_error(rc, err, re.escape(match))
    assert not out.parent.exists(), "nothing is written, not even --out's folder"
    with pytest.raises(ContextbotError, match=re.escape(match)):  # the Python API says the same
        TrainOptions(corpus=str(tiny_corpus), valid=None, out=str(out), **kw).validate()


@pytest.mark.parametrize("kw,match", [
    (dict(hidden="16"), "--hidden must be a whole number"), (dict(hidden=True), "--hidden must be a whole number"),
    (dict(lr="fast"), "--lr must be a number"), (dict(lr=10 ** 400), "--lr must be a number"),
    (dict(json=1), "--json must be True or False"), (dict(corpus=3), "--corpus must be text"),
    (dict(batch=None, seq_len=2.5), "--seq-len must be a whole number"),
])
def test_python_options_of_the_wrong_type_are_one_line(kw, match):
    with pytest.raises(ContextbotError, match=re.escape(match)):
        TrainOptions(**kw).validate()


@pytest.mark.parametrize("batch", ["3", "16", "60000"])
def test_more_streams_than_conversations_is_refused(tiny_corpus, tmp_path, capsys, monkeypatch, batch):
    """The tiny corpus has 2 conversations: each stream needs at least one. Said before the
    streams are laid out or the model is built."""
    def forbidden(*a, **k):
        raise AssertionError("built the batches or the model first")
    monkeypatch.setattr(loop, "batch_schedule", forbidden)
    monkeypatch.setattr(loop, "RecurrentLM", forbidden)
    rc, _, err = cli(capsys, "train", "--corpus", tiny_corpus, "--valid", "none", "--out",
                     tmp_path / "m.safetensors", "--batch", batch, "--seq-len", "16")
    assert_one_line_error(rc, err, rf"--batch {batch} is more streams than .* has conversations \(2\)")
    assert not (tmp_path / "m.safetensors").exists()


# -- 5. a checkpoint's recipe: checked before anything is allocated ------------------------------

def _with_recipe(good: Path, dest: Path, **changes) -> Path:
    """A copy of `good` whose saved recipe has `changes` (JSON allows NaN and Infinity)."""
    ck = checkpoint.load(good)
    meta = dict(ck.metadata)
    train_meta = json.loads(meta["train"])
    train_meta["recipe"] = train_meta["recipe"] | changes
    meta["train"] = json.dumps(train_meta)
    dest.write_bytes(st_save(st_load(good.read_bytes()), metadata=meta))
    return dest


RECIPES = [
    (dict(batch=10 ** 7), "--batch 10000000 is too large"),
    (dict(seq_len=10 ** 8), "--seq-len 100000000 is too large"),
    (dict(batch=4096, seq_len=4096), "tokens a step"),
    (dict(hidden=10 ** 6), "--hidden 1000000 is too large"),
    (dict(layers=10 ** 6), "--layers 1000000 is too large"),
    (dict(lr=math.nan), "--lr must be"),
    (dict(clip=math.inf), "--clip must be"),
    (dict(min_lr_ratio=-1.0), "--min-lr-ratio must be"),
    (dict(answer_weight=-3.0), "--answer-weight must be"),
    (dict(chrono_fraction=math.nan), "--chrono-fraction must be"),
    (dict(seed=-1), "--seed must be"),
    (dict(seed=2 ** 70), "--seed must be"),
    (dict(warmup=0), "--warmup must be at least 1"),
    (dict(cell="transformer"), "--cell must be one of"),
    (dict(tokenizer="words"), "--tokenizer must be one of"),
    (dict(referent_weight=True), "damaged"),
    (dict(hidden=16.0), "damaged"),
    (dict(hidden=32), "disagrees with the model"),
    (dict(cell="lstm"), "disagrees with the model"),
    (dict(batch=3), "--batch 3 is more streams than"),  # the tiny corpus has 2 conversations
]


@pytest.mark.parametrize("change,match", RECIPES, ids=[str(c) for c, _ in RECIPES])
def test_an_absurd_recipe_in_a_checkpoint_is_one_line_before_anything_runs(good, tmp_path, tiny_corpus, capsys,
                                                                         monkeypatch, change, match):
    bad = _with_recipe(good, tmp_path / "bad.safetensors", **change)
    before = bad.read_bytes()

    def forbidden(*a, **k):
        raise AssertionError("built a model, batches or a step from an absurd recipe")
    for name in ("RecurrentLM", "train_step", "batch_schedule"):
        monkeypatch.setattr(loop, name, forbidden)
    rc, _, err = cli(capsys, "train", "--corpus", tiny_corpus, "--valid", "none", "--out", bad,
                     "--steps", "8", "--resume")
    assert_one_line_error(rc, err, re.escape(match))
    assert bad.read_bytes() == before


def test_the_recipe_check_is_the_options_rules():
    good = TrainOptions(cell="lstm").recipe()
    assert resume.saved_recipe(Path("m"), {"recipe": good}) == good
    for bad in ({"batch": 0}, {"lr": math.inf}, {"dropout": 1.0}, {"seq_len": 1 << 30}):
        with pytest.raises(ContextbotError, match="damaged or absurd"):
            resume.saved_recipe(Path("m"), {"recipe": good | bad})


# -- 6. --resume refuses recipe flags that disagree ----------------------------------------------

DIFFERENT = [
    ["--hidden", "512"], ["--cell", "lstm"], ["--lr", "0.1"], ["--seq-len", "12"], ["--batch", "1"],
    ["--seed", "4"], ["--answer-weight", "2"], ["--referent-weight", "2"], ["--tokenizer", "bpe"],
    ["--chrono-tmax", "100"], ["--chrono-fraction", "0.5"], ["--chrono-spread", "uniform"],
    ["--dropout", "0.2"], ["--layers", "2"], ["--embed", "4"], ["--vocab-size", "100"],
]


@pytest.mark.parametrize("flag", DIFFERENT, ids=[" ".join(f) for f in DIFFERENT])
def test_resume_refuses_a_recipe_flag_that_differs(good, tiny_corpus, capsys, monkeypatch, flag):
    before = good.read_bytes()

    def train_step(*a):
        raise AssertionError("stepped with a recipe flag it ignored")
    monkeypatch.setattr(loop, "train_step", train_step)
    rc, _, err = cli(capsys, "train", "--corpus", tiny_corpus, "--valid", "none", "--out", good, "--steps", "8",
                     "--resume", *flag)
    saved = checkpoint.load(good).train_options["recipe"][flag[0][2:].replace("-", "_")]
    shown = f"{saved:g}" if isinstance(saved, float) else str(saved)
    assert_one_line_error(rc, err, re.escape(f"--resume continues the recipe saved in {good}: {flag[0]} ")
                          + rf"\S+ differs from its {re.escape(shown)}; drop the flag or train a new --out")
    assert good.read_bytes() == before


def test_resume_names_every_flag_that_differs(good, tiny_corpus, capsys):
    rc, _, err = cli(capsys, "train", "--corpus", tiny_corpus, "--valid", "none", "--out", good, "--resume",
                     "--hidden", "512", "--lr", "0.1", "--embed", "8")
    assert_one_line_error(rc, err, "--hidden 512 differs from its 16, --lr 0.1 differs from its 0.003; ")


def test_resume_takes_the_same_recipe_values_and_the_other_flags(good, tiny_corpus, tmp_path, capsys):
    """Recipe flags equal to the checkpoint's, spelt any way, and every flag outside the recipe."""
    rc, out, err = cli(capsys, "train", "--corpus", tiny_corpus, "--valid", tiny_corpus,
                       "--out", good, "--resume", "--steps", "6", "--minutes", "5", "--checkpoint-every", "3",
                       "--eval-every", "2", "--json", "--hidden", "16", "--lr", "3e-3", "--cell", "gru",
                       "--seq-len", "24", "--answer-weight", "3", "--seed", "0")
    assert rc == 0, err
    assert json.loads(out)["steps"] == 6 and checkpoint.load(good).step == 6


def test_the_python_api_refuses_a_recipe_option_that_differs(good, tiny_corpus):
    before = good.read_bytes()
    with pytest.raises(ContextbotError, match="--hidden 512 differs from its 16"):
        loop.train(TrainOptions(corpus=str(tiny_corpus), valid=None, out=str(good), steps=8, resume=True,
                                hidden=512))
    assert good.read_bytes() == before
    s = loop.train(TrainOptions(corpus=str(tiny_corpus), valid=None, out=str(good), steps=6, resume=True,
                                hidden=16, json=True))
    assert s["steps"] == 6
