"""Every command that reads a file, given hostile ones: pickles, damaged and hostile checkpoints,
checkpoints whose replies are escape sequences, hostile corpora.

Every user-facing failure must look the same: exit code 2, one line on stderr that starts with
`contextbot: error: `, no traceback. Commands run in-process through `cli.main` where that is
enough (a traceback would fail the test as an exception), and as real processes where the process
is the point (stdin decoding). The property tests on hostile chat text are in
test_hostile_input.py.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shlex
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
from contextbot.errors import ContextbotError
from contextbot.model import checkpoint
from contextbot.text.corpus import MAX_LINE

from .conftest import (
    ENV,
    TINY_CORPUS,
    assert_one_line_error,
    cli,
    make_model,
    run,
)

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

BAD_CORPORA = {  # tests/train/test_train.py has: empty, a NUL, Latin-1, prose, an answer first
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
