"""Issue 7: hostile files, hostile corpora, long sessions, killed training runs.

test_checkpoint.py and test_train.py hold the first cases (pickles under three names, truncated
files, exact resume). This file carries them through every command that reads a file, and adds
what they leave out. The property tests on hostile chat input are in test_hostile_input.py.

Every user-facing failure must look the same: exit code 2, one line on stderr that starts with
`contextbot: error: `, no traceback. Commands run in-process through `cli.main` where that is
enough (a traceback would fail the test as an exception), and as real processes where the process
is the point (stdin decoding, kill -9, Ctrl-C).

The slow ones (`make test-all`): a 200 MB corpus, a 1000-turn conversation, 20 kills of a training
run. They measure memory and time as ratios against a small baseline, never as absolute limits.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import pickle
import random
import re
import shlex
import signal
import statistics
import struct
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from contextbot import ChatSession
from contextbot.model import checkpoint
from contextbot.analysis import probe
from contextbot.cli import main
from contextbot.text.corpus import MAX_LINE, Conversation
from contextbot.paths import DEFAULT_TRAIN
from contextbot.train.batches import Streams, encode_conversation
from contextbot.errors import ContextbotError
from contextbot.train.loop import TrainOptions, train

from .conftest import SHIPPED_GRU, TINY_CORPUS, make_model

ENV = os.environ | {"OMP_NUM_THREADS": "1", "COLUMNS": "400"}  # COLUMNS: see test_ctrl_c_...


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run `contextbot ARGV` in this process: (exit code, stdout, stderr)."""
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc: int, err: str, match: str = "") -> None:
    assert rc == 2, err
    assert err.startswith("contextbot: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert re.search(match, err), (match, err)


def run(*argv, **kw) -> subprocess.CompletedProcess:
    """Run `contextbot ARGV` as a real process."""
    return subprocess.run([sys.executable, "-m", "contextbot", *map(str, argv)], capture_output=True,
                          text=True, env=ENV, timeout=300, **kw)


# -- hostile checkpoints through every command -----------------------------------------------------

class Payload:
    """Unpickling this runs `touch MARKER`: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture
def pickles(tmp_path) -> tuple[list[Path], Path]:
    """Pickles disguised as checkpoints: raw pickles under three names and a torch.save zip."""
    marker = tmp_path / "PWNED"
    files = []
    for name in ("evil.safetensors", "evil.pt", "evil.ckpt"):
        p = tmp_path / name
        p.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=4))
        files.append(p)
    zipped = tmp_path / "evil-zip.pt"
    torch.save({"state_dict": Payload(marker)}, zipped)  # what a shared PyTorch checkpoint looks like
    files.append(zipped)
    # The control: these payloads do run when something unpickles them.
    pickle.loads(files[0].read_bytes())
    assert marker.exists()
    marker.unlink()
    torch.load(zipped, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return files, marker


def checkpoint_commands(path: Path, corpus: Path) -> list[list]:
    return [
        ["ask", "--checkpoint", path, "Who is Tom Cruise?"],
        ["eval", "--checkpoint", path, "--per-category", "1"],
        ["inspect", "--checkpoint", path],
        ["inspect", "--probe", "--checkpoint", path, "--conversations", "3"],
        ["train", "--corpus", corpus, "--valid", "none", "--out", path, "--resume"],
    ]


def test_a_pickle_runs_in_no_command(pickles, tiny_corpus, capsys, monkeypatch):
    files, marker = pickles
    for path in files:
        for argv in checkpoint_commands(path, tiny_corpus):
            rc, _, err = cli(capsys, *argv)
            assert_one_line_error(rc, err, "not a safetensors checkpoint")
            assert not marker.exists(), argv
        monkeypatch.setenv("CONTEXTBOT_CHECKPOINT", str(path))  # the default checkpoint, too
        rc, _, err = cli(capsys, "ask", "Hi")
        assert_one_line_error(rc, err, "not a safetensors checkpoint")
    assert not marker.exists()


def test_a_pickle_given_to_train_resume_as_a_process(pickles, tiny_corpus):
    files, marker = pickles
    r = run("train", "--corpus", tiny_corpus, "--valid", "none", "--out", files[2], "--resume")
    assert_one_line_error(r.returncode, r.stderr, "not a safetensors checkpoint")
    assert not marker.exists()


@pytest.mark.asyncio
async def test_a_pickle_given_to_chat_shows_an_error_and_runs_nothing(pickles):
    from contextbot.ui.app import ChatApp
    files, marker = pickles
    app = ChatApp(files[1])
    async with app.run_test() as pilot:
        deadline = time.monotonic() + 60
        while app.load_error is None and app.session is None and time.monotonic() < deadline:
            await pilot.pause(0.05)
        assert app.session is None
        assert app.load_error and "not a safetensors checkpoint" in app.load_error
    assert not marker.exists()


def _rewrite(src: Path, dst: Path, *, metadata: dict | None = None, header: dict | None = None,
             tensors: dict | None = None) -> Path:
    """A copy of a checkpoint with its metadata, raw header or tensors replaced."""
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    if header is not None:
        raw = json.dumps(header).encode()
        dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
        return dst
    meta = json.loads(data[8:8 + n])["__metadata__"]
    tensors = tensors if tensors is not None else st_load(data)
    dst.write_bytes(st_save(tensors, metadata=meta | (metadata or {})))
    return dst


def test_a_hostile_config_cannot_make_us_allocate_or_spin(tiny_checkpoint, tmp_path, capsys):
    """The config is read before the weights: a file that claims hidden = 10**9 must be refused
    without building that model (12 TB, or minutes of initialising 10**6 layers)."""
    config = json.loads(checkpoint.load(tiny_checkpoint).metadata["config"])
    for i, claim in enumerate([{"hidden": 10**9}, {"embed": 10**9}, {"layers": 10**6},
                               {"hidden": 10**5, "layers": 3, "cell": "lstm"}, {"referents": 10**9}]):
        p = _rewrite(tiny_checkpoint, tmp_path / f"claim{i}.safetensors",
                     metadata={"config": json.dumps(config | claim)})
        # Building that model would need terabytes: the sizes must be refused before it is built.
        with pytest.raises(ContextbotError, match=r"the config (needs|says)|the config \(missing"):
            checkpoint.load(p)
    rc, _, err = cli(capsys, "ask", "--checkpoint", p, "Hi")
    assert_one_line_error(rc, err, "missing referent_head.weight")


def test_damaged_metadata_is_one_line(tiny_checkpoint, tiny_corpus, tmp_path, capsys):
    good = checkpoint.load(tiny_checkpoint)
    data = tiny_checkpoint.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    cases = {
        "meta-list": (dict(header=header | {"__metadata__": ["contextbot"]}), "metadata is not an object"),
        "meta-string": (dict(header=header | {"__metadata__": "contextbot"}), "metadata is not an object"),
        "config-list": (dict(metadata={"config": "[1, 2]"}), "damaged|config"),
        "config-unknown": (dict(metadata={"config": json.dumps(good.config.to_dict() | {"evil": 1})}),
                           "unknown fields"),
        "tokenizer-junk": (dict(metadata={"tokenizer": "AAAA"}), "tokenizer"),
        "train-not-json": (dict(metadata={"train": "{not json"}), "damaged"),
        "train-a-list": (dict(metadata={"train": "[1]"}), "damaged"),
        "step-text": (dict(metadata={"step": "eleven"}), "damaged"),
    }
    for name, (change, match) in cases.items():
        p = _rewrite(tiny_checkpoint, tmp_path / f"{name}.safetensors", **change)
        with pytest.raises(ContextbotError, match=match):
            checkpoint.load(p)
        # `train --resume` reads the training metadata too: still one line, never a traceback.
        rc, _, err = cli(capsys, "train", "--corpus", tiny_corpus, "--valid", "none", "--out", p, "--resume")
        assert_one_line_error(rc, err)


def test_a_damaged_training_state_is_one_line_for_resume(tiny_corpus, tmp_path, capsys):
    """`train --resume` reads what chat ignores: the recipe, Adam's moments, the carried state,
    the RNG. Damaged or hostile, each is one line before training starts, never a crash in the
    first step, and a recipe cannot set options that are not recipe (such as --out)."""
    good = tmp_path / "good.safetensors"
    flags = ["--valid", "none", "--hidden", "8", "--embed", "4", "--batch", "2", "--seq-len", "16", "--json"]
    assert cli(capsys, "train", "--corpus", tiny_corpus, "--out", good, "--steps", "2", *flags)[0] == 0
    tensors = st_load(good.read_bytes())
    train_meta = json.loads(checkpoint.load(good).metadata["train"])
    recipe = train_meta["recipe"]

    def with_recipe(r) -> dict:
        return dict(metadata={"train": json.dumps(train_meta | {"recipe": r})})

    adam = next(k for k in tensors if k.startswith("train.optim.") and k.endswith("exp_avg"))
    cases = {
        "rng-as-floats": dict(tensors=tensors | {"train.rng": tensors["train.rng"].float()}),
        "rng-cut-short": dict(tensors=tensors | {"train.rng": tensors["train.rng"][:10].clone()}),
        "rng-rows-cut-short": dict(tensors=tensors | {"train.rng_ranks": torch.zeros(1, 7, dtype=torch.uint8)}),
        "cuda-rng-cut-short": dict(tensors=tensors | {"train.rng_cuda": torch.zeros(5, dtype=torch.uint8)}),
        "state-of-another-shape": dict(tensors=tensors | {"train.state_h": torch.zeros(1, 7, 3)}),
        "adam-of-another-shape": dict(tensors=tensors | {adam: torch.zeros(3)}),
        "adam-nan": dict(tensors=tensors | {adam: torch.full_like(tensors[adam], float("nan"))}),
        "recipe-a-list": with_recipe([1, 2]),
        "recipe-sets-out": with_recipe(recipe | {"out": "x"}),
        "recipe-text-lr": with_recipe(recipe | {"lr": "fast"}),
        "recipe-other-cell": with_recipe(recipe | {"cell": "lstm"}),
    }
    for name, change in cases.items():
        p = _rewrite(good, tmp_path / f"{name}.safetensors", **change)
        rc, _, err = cli(capsys, "train", "--corpus", tiny_corpus, "--out", p, "--steps", "4", "--resume",
                         *flags)
        assert_one_line_error(rc, err)


def test_a_device_or_pipe_is_not_read_as_a_checkpoint(tmp_path, capsys):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)  # reading it would block forever
    for path in [fifo] + ([Path("/dev/zero")] if Path("/dev/zero").exists() else []):
        rc, _, err = cli(capsys, "ask", "--checkpoint", path, "Hi")
        assert_one_line_error(rc, err, "not a regular file")


def _rigged(tmp_path, tok, byte: int) -> Path:
    """A checkpoint whose every reply is one control byte, repeated (byte fallback spells it)."""
    m = make_model(tok)
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.fill_(-10.0)
        m.head.bias[tok.sp.piece_to_id(f"<0x{byte:02X}>")] = 10.0
    p = tmp_path / f"rigged-{byte:02x}.safetensors"
    checkpoint.save(p, m, tok, step=0)
    return p


def test_a_model_cannot_write_escape_sequences_to_the_terminal(tmp_path, tiny_tokenizer, capsys):
    """ESC, a carriage return, a bell or a backspace spelled as bytes come out of `ask` as U+FFFD,
    one reply a line (the session itself returns the reply exactly as generated); a newline
    spelled as a byte ends the reply like the newline piece."""
    for byte in (0x1B, 0x0D, 0x07, 0x08, 0x0A):
        p = _rigged(tmp_path, tiny_tokenizer, byte)
        reply = ChatSession.load(p).ask("Hi")
        assert reply == (chr(byte) * len(reply) if byte != 0x0A else "") and (reply or byte == 0x0A)
        rc, out, err = cli(capsys, "ask", "--checkpoint", p, "Hi", "Who is Tom Cruise?")
        assert rc == 0, err
        lines = out.split("\n")
        assert len(lines) == 3 and lines[2] == ""
        assert all(unicodedata.category(ch) != "Cc" for line in lines for ch in line)
        assert set(lines[0]) <= {"\ufffd"}


def test_inspect_cannot_be_made_to_write_escape_sequences(tmp_path, tiny_tokenizer, capsys):
    """The same rigged model through `inspect`'s table and its --units view: what it spells is
    printed as U+FFFD, never as a control character."""
    p = _rigged(tmp_path, tiny_tokenizer, 0x1B)
    for extra in ([], ["--units", "Tom"]):
        rc, out, err = cli(capsys, "inspect", "--checkpoint", p, *extra, "Who is Tom?")
        assert rc == 0, err
        assert "\x1b" not in out and "\ufffd" in out


def test_ask_reads_stdin_that_is_not_utf8(tiny_checkpoint):
    """A strict UTF-8 locale (most desktops) decodes stdin strictly; a Latin-1 byte must not
    turn into a traceback."""
    r = subprocess.run([sys.executable, "-m", "contextbot", "ask", "--checkpoint", str(tiny_checkpoint)],
                       input=b"Who is Zo\xeb?\n\xff\xfe\n", capture_output=True, timeout=300,
                       env=ENV | {"PYTHONIOENCODING": "utf-8:strict"})
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert r.stdout.decode("utf-8").count("\n") == 2 and not r.stderr


def test_train_out_that_is_a_directory_fails_before_training(tiny_corpus, tmp_path, capsys):
    rc, _, err = cli(capsys, "train", "--corpus", tiny_corpus, "--valid", "none", "--out", tmp_path)
    assert_one_line_error(rc, err, "is a directory")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    rc, _, err = cli(capsys, "train", "--corpus", tiny_corpus, "--valid", "none",
                     "--out", blocker / "sub" / "m.safetensors")
    assert_one_line_error(rc, err, "a-file is a file, not a folder")


# -- hostile corpora ----------------------------------------------------------------------------

BAD_CORPORA = {  # test_train.py has: empty, a NUL, Latin-1, prose, an answer first
    "gigantic-line": (b"Q: " + b"x" * (MAX_LINE + 10) + b"\nA: y\n", "longer than"),
    "gigantic-multibyte-line": (("Q: " + "é" * (MAX_LINE + 10) + "\nA: y\n").encode(), "longer than"),
    "blank-lines-only": (b"\n\n\n\n", "no Q/A turns"),
    "utf-16": ("Q: hi\nA: yo\n".encode("utf-16"), "NUL"),
    "random-bytes": (random.Random(0).randbytes(5000), "NUL|not UTF-8|longer|expected"),
    "question-last": (b"Q: hi\nA: yo\nQ: and?\n", "last question has no answer"),
    "byte-order-mark": ("\ufeffQ: hi\nA: yo\n".encode(), "expected a line starting with"),
}


@pytest.mark.parametrize("name", BAD_CORPORA)
def test_bad_corpus_is_one_line_for_check_and_train(name, tiny_corpus, tmp_path, capsys):
    content, match = BAD_CORPORA[name]
    p = tmp_path / f"{name}.txt"
    p.write_bytes(content)
    out = tmp_path / "m.safetensors"
    for argv in (["corpus", "check", p],
                 ["train", "--corpus", p, "--valid", "none", "--out", out],
                 ["train", "--corpus", tiny_corpus, "--valid", p, "--out", out, "--steps", "1"]):
        rc, _, err = cli(capsys, *argv)
        assert_one_line_error(rc, err, match)
    assert not out.exists()


def test_corpus_paths_that_are_not_files(tmp_path, capsys):
    cases = [(tmp_path, "is a directory"), (tmp_path / "missing.txt", "no such corpus file")]
    if Path("/dev/zero").exists():
        cases.append((Path("/dev/zero"), "NUL"))  # endless, and no newline: read in bounded pieces
    for path, match in cases:
        for argv in (["corpus", "check", path],
                     ["train", "--corpus", path, "--out", tmp_path / "m.safetensors"]):
            rc, _, err = cli(capsys, *argv)
            assert_one_line_error(rc, err, match)


def test_windows_line_endings_are_a_corpus(tmp_path, capsys):
    p = tmp_path / "crlf.txt"
    p.write_bytes(TINY_CORPUS.replace("\n", "\r\n").encode())
    rc, out, err = cli(capsys, "corpus", "check", p)
    assert rc == 0, err
    assert "turns          4" in out


UNSEEN = """Q: Wer ist Zoë Kravitz?
A: Sie ist eine Schauspielerin. 🎬
Q: Где она живёт?
A: 她住在纽约。
"""


def test_characters_the_tokenizer_never_saw(tiny_checkpoint, tiny_corpus, tmp_path, capsys):
    """Byte fallback spells any character, so asking or validating with new characters works;
    resuming training on a corpus with new characters is refused in one line."""
    unseen = tmp_path / "unseen.txt"
    unseen.write_text(UNSEEN, encoding="utf-8")
    rc, out, err = cli(capsys, "ask", "--checkpoint", tiny_checkpoint, "Wer ist Zoë? 🎬", "她住在哪里？")
    assert rc == 0 and out.count("\n") == 2, err

    rc, out, err = cli(capsys, "eval", "--checkpoint", tiny_checkpoint, "--per-category", "1",
                       "--valid", unseen, "--json")
    assert rc == 0, err
    assert 0 < json.loads(out)["valid_bpc"] < float("inf")

    m = tmp_path / "m.safetensors"
    flags = ["--hidden", "8", "--embed", "4", "--batch", "2", "--seq-len", "16", "--json"]
    rc, out, err = cli(capsys, "train", "--corpus", tiny_corpus, "--valid", unseen, "--out", m,
                       "--steps", "2", *flags)
    assert rc == 0, err
    assert 0 < json.loads(out)["valid_bpc"] < float("inf")
    more = tmp_path / "more.txt"
    more.write_text(TINY_CORPUS + "\n" + UNSEEN, encoding="utf-8")
    rc, _, err = cli(capsys, "train", "--corpus", more, "--valid", "none", "--out", m, "--steps", "4",
                     "--resume", *flags)
    assert_one_line_error(rc, err, "different corpus")


def test_encoded_conversations_are_compact_and_exact(tiny_tokenizer):
    """Training holds the whole corpus in memory: 10 bytes a token, not Python lists (about 60),
    with exactly the values the lists held."""
    tok = tiny_tokenizer
    conv = Conversation([("Who is Zoë?", "She is 😀."), ("Where does she live?", "She lives in Paris.")])
    e = encode_conversation(conv, tok, 3.0)
    ids, weights = [], []
    for q, a in conv.turns:
        prompt, reply = tok.encode(f"Q: {q}\nA: "), tok.encode(f"{a}\n")
        ids += prompt + reply
        weights += [1.0] * len(prompt) + [3.0] * len(reply)
    assert e.inputs.tolist() == ids[:-1] and e.targets.tolist() == ids[1:]
    assert e.weights.tolist() == weights[1:]
    assert e.chars.tolist() == [tok.char_count(t) for t in ids[1:]]
    assert tok.decode(ids) == "".join(f"Q: {q}\nA: {a}\n" for q, a in conv.turns)
    assert (e.tokens.nbytes + e.weights.nbytes + e.chars.nbytes) / len(e.tokens) < 10
    b = Streams([e, e], batch=2, seq_len=16, seed=0, epoch=0).chunk(0)
    assert b.inputs.dtype == b.targets.dtype == torch.long and b.chars.dtype == torch.float32


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
    unit = DEFAULT_TRAIN.read_bytes()
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


# -- Ctrl-C and kill -9 during training -----------------------------------------------------------

KILL_FLAGS = ["--valid", "none", "--hidden", "16", "--embed", "8", "--layers", "2", "--dropout", "0.1",
              "--batch", "2", "--seq-len", "24", "--seed", "3", "--json"]


def _options(corpus: Path, out: Path, steps: int, every: int) -> TrainOptions:
    """The TrainOptions that `contextbot train --corpus C --out O KILL_FLAGS` builds."""
    return TrainOptions(corpus=str(corpus), valid=None, out=str(out), hidden=16, embed=8, layers=2,
                        dropout=0.1, batch=2, seq_len=24, seed=3, steps=steps, checkpoint_every=every,
                        json=True)


def _fingerprint(weights: dict[str, torch.Tensor], train_tensors: dict[str, torch.Tensor]) -> str:
    """A hash of every tensor a checkpoint holds (weights, Adam's moments, carried state, RNG)."""
    h = hashlib.sha256()
    for prefix, tensors in (("model.", weights), ("train.", train_tensors)):
        for k in sorted(tensors):
            h.update(f"{prefix}{k}".encode())
            h.update(tensors[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _file_fingerprint(path: Path) -> tuple[int, str]:
    ck = checkpoint.load(path)
    return ck.step, _fingerprint(ck.model.state_dict(), ck.train_tensors)


# Train in this process on one thread, as the subprocesses (OMP_NUM_THREADS=1) do: the same
# arithmetic, so the same weights bit for bit.
one_thread = probe.one_thread


def _reference_run(corpus: Path, out: Path, steps: int, monkeypatch) -> dict[int, str]:
    """An uninterrupted run in this process: the fingerprint of its checkpoint at every step."""
    prints: dict[int, str] = {}
    real_save = checkpoint.save

    def recording_save(path, model, tok, *, step, train_tensors=None, **kw):
        prints[step] = _fingerprint(model.state_dict(), train_tensors or {})
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
    at_stop = _file_fingerprint(out)
    assert at_stop[0] == stopped

    resume = shlex.split(m.group(3))
    assert resume[:2] == ["contextbot", "train"] and "--resume" in resume
    with one_thread():
        assert main(resume[1:] + ["--valid", "none", "--json"]) == 0
    assert checkpoint.load(out).step == steps
    reference = _reference_run(tiny_corpus, tmp_path / "ref.safetensors", steps, monkeypatch)
    assert at_stop[1] == reference[stopped], "the Ctrl-C checkpoint mixes two steps"
    assert _file_fingerprint(out) == (steps, reference[steps])


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
        step, fingerprint = _file_fingerprint(out)
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
    assert _file_fingerprint(out) == (steps, reference[steps])
    print(f"20 kills: reached step {last} before the final resume; {mid_write} kills inside a write")


# -- a long conversation ---------------------------------------------------------------------------

def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _thousand_turns():
    """1000 turns without a reset (a 50-turn script of introductions, follow-ups and small talk,
    20 times) on the shipped GRU; returns the session and what was measured on the way."""
    from contextbot.paths import DEFAULT_FACTS
    from contextbot.text.dialogue import training_conversation
    from contextbot.text.facts import load_facts

    s = ChatSession.load(SHIPPED_GRU)
    rng = random.Random(11)
    entities = load_facts(DEFAULT_FACTS)
    script: list[str] = []
    while len(script) < 50:
        script += [t.question for t in training_conversation(rng, entities)]
    script = script[:50]
    times, norms = [], []
    for turn in range(1000):
        if turn == 100:
            gc.collect()
            rss_100 = _rss_bytes()
        question = script[turn % len(script)]
        t0 = time.process_time()  # CPU time: what other programs on the machine do not change
        reply = s.ask(question)
        # per character fed and generated, so that longer or shorter replies do not count
        times.append((time.process_time() - t0) / (len(question) + len(reply) + 8))
        norms.append(max(s.norms()))
        assert torch.isfinite(s.state).all()
    gc.collect()
    return s, (_rss_bytes() - rss_100) / 2**20, times, norms


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_a_1000_turn_conversation_stays_fast_small_and_finite():
    """After 1000 turns the memory has not grown, a turn costs no more at the end than at the
    start (CPU time per character, the same questions at both ends), ‖h‖ stays within its bound,
    and a reset gives back exactly a fresh bot."""
    s, growth_mb, times, norms = _thousand_turns()
    bound = s.model.config.hidden ** 0.5  # |h_i| < 1 for a GRU: ‖h‖ < sqrt(hidden)
    first, last = statistics.median(times[:100]), statistics.median(times[-100:])
    print(f"RSS growth over turns 100-1000: {growth_mb:.2f} MB; median CPU time per character "
          f"{first * 1e6:.0f} µs (first 100 turns) and {last * 1e6:.0f} µs (last 100); "
          f"max ‖h‖ {max(norms):.2f} of {bound:.1f}")
    assert growth_mb < 5
    assert last < 1.5 * first  # a ratio, not a time limit
    assert max(norms) < bound
    s.reset()
    fresh = ChatSession.load(SHIPPED_GRU)
    for q in ("Who is Megan Fox?", "Where does she live?", "Who is Tom Cruise?", "Where does he live?"):
        assert s.ask(q) == fresh.ask(q)


@pytest.mark.slow
def test_after_1000_turns_the_bot_still_follows_a_new_introduction():
    """Carried over the whole conversation, a new introduction still sets who "he" means."""
    s, *_ = _thousand_turns()
    assert s.ask("Who is Tom Cruise?") == "He is an American actor."
    assert s.ask("Where does he live?") == "He lives in Beverly Hills."
