"""Training interrupted: Ctrl-C saves and says how to resume, kill -9 at any moment loses nothing,
and the temporaries a killed writer leaves are cleaned up (contextbot/train/loop.py, files.py).

The slow one (`make test-all`) kills a training run twenty times at random moments.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from contextbot.cli import main
from contextbot.model import checkpoint
from contextbot.train.loop import TrainOptions, train

from ..conftest import ENV, run
from .conftest import file_fingerprint, fingerprint, one_thread

# -- Ctrl-C and kill -9 during training -----------------------------------------------------------

KILL_FLAGS = ["--valid", "none", "--hidden", "16", "--embed", "8", "--layers", "2", "--dropout", "0.1",
              "--batch", "2", "--seq-len", "24", "--seed", "3", "--json"]


def _options(corpus: Path, out: Path, steps: int, every: int) -> TrainOptions:
    """The TrainOptions that `contextbot train --corpus C --out O KILL_FLAGS` builds."""
    return TrainOptions(corpus=str(corpus), valid=None, out=str(out), hidden=16, embed=8, layers=2,
                        dropout=0.1, batch=2, seq_len=24, seed=3, steps=steps, checkpoint_every=every,
                        json=True)


def _reference_run(corpus: Path, out: Path, steps: int, monkeypatch) -> dict[int, str]:
    """An uninterrupted run in this process: the fingerprint of its checkpoint at every step."""
    prints: dict[int, str] = {}
    real_save = checkpoint.save

    def recording_save(path, model, tok, *, step, train_tensors=None, **kw):
        prints[step] = fingerprint(model.state_dict(), train_tensors or {})
        real_save(path, model, tok, step=step, train_tensors=train_tensors, **kw)

    monkeypatch.setattr(checkpoint, "save", recording_save)
    try:
        with one_thread():
            train(_options(corpus, out, steps, every=1))
    finally:
        monkeypatch.setattr(checkpoint, "save", real_save)
    return prints


def test_ctrl_c_saves_and_says_how_to_resume(tiny_corpus, tmp_path, monkeypatch):
    """SIGINT mid-run: exit 130, the checkpoint holds the step the message names, and the
    command the message gives continues to the end; exactly to the weights an uninterrupted run
    reaches once Ctrl-C waits for the end of the step under way."""
    steps = 150
    out = tmp_path / "m.safetensors"
    p = subprocess.Popen([sys.executable, "-m", "contextbot", "train", "--corpus", str(tiny_corpus),
                          "--out", str(out), "--steps", str(steps), "--checkpoint-every", "5", *KILL_FLAGS],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not out.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    # rich wraps at the console width, 80 columns where stderr is not a terminal (ENV sets
    # COLUMNS): a command to copy and paste should be printed with soft_wrap=True.
    m = re.search(r"interrupted at step (\d+); saved (\S+)\. Resume with: (.+)$", err.strip())
    assert m, err
    assert "Traceback" not in err
    stopped = int(m.group(1))
    assert 5 <= stopped < steps and Path(m.group(2)) == out
    at_stop = file_fingerprint(out)
    assert at_stop[0] == stopped

    resume = shlex.split(m.group(3))
    assert resume[:2] == ["contextbot", "train"] and "--resume" in resume
    with one_thread():
        assert main(resume[1:] + ["--valid", "none", "--json"]) == 0
    assert checkpoint.load(out).step == steps
    reference = _reference_run(tiny_corpus, tmp_path / "ref.safetensors", steps, monkeypatch)
    assert at_stop[1] == reference[stopped], "the Ctrl-C checkpoint mixes two steps"
    assert file_fingerprint(out) == (steps, reference[steps])


def test_training_removes_the_temporaries_that_killed_runs_left(tiny_corpus, tmp_path):
    """A kill between writing a checkpoint's temporary and renaming it leaves `.NAME.XXXX.tmp`.
    The next training run of that checkpoint deletes those a minute old, and keeps a young one
    (a writer that may still be alive) and anything that is not its own."""
    out = tmp_path / "m.safetensors"
    old = [tmp_path / f".m.safetensors.{k}.tmp" for k in ("a1b2", "c3d4")]
    young, other = tmp_path / ".m.safetensors.e5f6.tmp", tmp_path / ".other.safetensors.a1b2.tmp"
    for f in (*old, young, other):
        f.write_bytes(b"half a checkpoint")
    for f in (*old, other):
        os.utime(f, (time.time() - 3600, time.time() - 3600))
    train(TrainOptions(corpus=str(tiny_corpus), valid=None, out=str(out), steps=1, hidden=8, embed=4,
                       batch=2, seq_len=16, json=True))
    assert not any(f.exists() for f in old) and young.exists() and other.exists()
    assert checkpoint.load(out).step == 1


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*.tmp"))


def _kill_while_writing(p: subprocess.Popen, out: Path, timeout: float = 60) -> int | None:
    """Freeze the process while a temporary checkpoint exists (it is between creating and
    renaming it), note the complete checkpoint's step, and kill it. None if no write was caught."""
    deadline = time.monotonic() + timeout
    seen = set(_temporaries(out))
    while p.poll() is None and time.monotonic() < deadline:
        if set(_temporaries(out)) - seen:
            p.send_signal(signal.SIGSTOP)
            if set(_temporaries(out)) - seen:  # still writing: frozen mid-write
                step = checkpoint.load(out).step if out.exists() else None
                p.kill()
                return step
            p.send_signal(signal.SIGCONT)  # the rename won the race; try the next write
    p.kill()
    return None


def _wait_for_a_save(p: subprocess.Popen, out: Path, timeout: float = 60) -> None:
    def ident():
        try:
            st = out.stat()
            return st.st_ino, st.st_mtime_ns
        except FileNotFoundError:
            return None
    before, deadline = ident(), time.monotonic() + timeout
    while ident() == before and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)


@pytest.mark.slow
def test_kill_9_at_20_random_moments_loses_nothing(tiny_corpus, tmp_path, monkeypatch):
    """`kill -9` at 20 moments in a row (while starting, while training, while a checkpoint is
    being written): every time, the checkpoint loads and is exactly the uninterrupted run's
    checkpoint at its step, the step never goes back, and a kill mid-write leaves the previous
    checkpoint. `--resume` after the last kill ends bit for bit where the uninterrupted run ends."""
    steps = 200
    out = tmp_path / "run" / "m.safetensors"
    reference = _reference_run(tiny_corpus, tmp_path / "ref.safetensors", steps, monkeypatch)
    rng = random.Random(7)
    last, mid_write = 0, 0
    for i in range(20):
        argv = [sys.executable, "-m", "contextbot", "train", "--corpus", str(tiny_corpus), "--out", str(out),
                "--steps", str(steps), "--checkpoint-every", "1", *KILL_FLAGS]
        if out.exists():
            argv.append("--resume")
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        kind = i % 4
        if kind == 0:  # anywhere: importing, reading the corpus, training the tokenizer, training
            time.sleep(rng.uniform(0.0, 4.0))
            p.kill()
        elif kind == 1 and out.exists():  # inside checkpoint.save, between the temporary and the rename
            complete = _kill_while_writing(p, out)
            if complete is not None:
                mid_write += 1
                p.wait()
                assert checkpoint.load(out).step == complete  # the last complete one
        else:  # once training runs, at a random moment
            _wait_for_a_save(p, out)
            time.sleep(rng.uniform(0.0, 0.8))
            p.kill()
        p.wait()
        if not out.exists():
            continue
        step, fingerprint = file_fingerprint(out)
        assert step >= last, f"kill {i}: the checkpoint went back from step {last} to {step}"
        assert fingerprint == reference[step], f"kill {i}: step {step} is not the reference's"
        last = step
    assert mid_write >= 1, "no kill landed inside a checkpoint write"
    assert last > 0
    # What a kill mid-write leaves behind: its temporary, never a damaged checkpoint.
    assert {f.name for f in out.parent.iterdir()} - {f.name for f in _temporaries(out)} == {out.name}

    r = run("train", "--corpus", tiny_corpus, "--out", out, "--steps", steps, "--checkpoint-every", "1",
            *KILL_FLAGS, "--resume")
    assert r.returncode == 0, r.stderr
    assert file_fingerprint(out) == (steps, reference[steps])
    print(f"20 kills: reached step {last} before the final resume; {mid_write} kills inside a write")
