import os
import pickle
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from contextbot.model import checkpoint
from contextbot.errors import ContextbotError
from contextbot.text.turns import prompt

from ..conftest import make_model


def test_round_trip_gives_identical_logits(tmp_path, tiny_tokenizer):
    for cell in ("rnn", "gru", "lstm"):
        m = make_model(tiny_tokenizer, cell, layers=2)
        p = tmp_path / f"{cell}.safetensors"
        checkpoint.save(p, m, tiny_tokenizer, step=7, corpus_sha256="abc")
        ck = checkpoint.load(p)
        x = torch.tensor([tiny_tokenizer.encode(prompt("Who is Tom Cruise?"))])
        torch.testing.assert_close(ck.model(x)[0], m(x)[0], rtol=0, atol=0)
        assert ck.step == 7 and ck.metadata["corpus_sha256"] == "abc"
        assert ck.tokenizer.encode("Who") == tiny_tokenizer.encode("Who")
        assert len(ck.sha256) == 64


def test_interrupted_save_leaves_previous_file_intact(tmp_path, tiny_tokenizer, monkeypatch):
    p = tmp_path / "m.safetensors"
    m = make_model(tiny_tokenizer)
    checkpoint.save(p, m, tiny_tokenizer, step=1)
    before = p.read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt  # as if killed between writing and renaming

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(p, make_model(tiny_tokenizer, seed=1), tiny_tokenizer, step=2)
    assert p.read_bytes() == before
    assert checkpoint.load(p).step == 1
    assert [f.name for f in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return p


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt", "evil.ckpt"])
def test_pickle_is_refused_and_never_run(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _write(tmp_path, name, pickle.dumps(Payload()))
    with pytest.raises(ContextbotError, match="not a safetensors checkpoint"):
        checkpoint.load(p)
    assert not (tmp_path / "PWNED").exists()


def test_damaged_files_are_one_line_errors(tmp_path, tiny_tokenizer):
    good = tmp_path / "good.safetensors"
    checkpoint.save(good, make_model(tiny_tokenizer), tiny_tokenizer, step=0)
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "absurd_header": struct.pack("<Q", 1 << 60) + b"{}",
        "empty": b"",
    }
    for name, blob in cases.items():
        with pytest.raises(ContextbotError) as e:
            checkpoint.load(_write(tmp_path, name, blob))
        assert "\n" not in str(e.value)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(ContextbotError, match="not a contextbot checkpoint"):
        checkpoint.load(other)
    with pytest.raises(ContextbotError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.safetensors")
    with pytest.raises(ContextbotError, match="directory"):
        checkpoint.load(tmp_path)


def test_future_version_wrong_shapes_and_nan_are_refused(tmp_path, tiny_tokenizer, monkeypatch):
    m = make_model(tiny_tokenizer)
    p = tmp_path / "m.safetensors"
    monkeypatch.setattr(checkpoint, "VERSION", 99)
    checkpoint.save(p, m, tiny_tokenizer, step=0)
    monkeypatch.setattr(checkpoint, "VERSION", 1)
    with pytest.raises(ContextbotError, match="newer"):
        checkpoint.load(p)

    m.config.hidden = 32  # the config now disagrees with the weights
    checkpoint.save(p, m, tiny_tokenizer, step=0)
    with pytest.raises(ContextbotError, match="shape"):
        checkpoint.load(p)

    m = make_model(tiny_tokenizer)
    with torch.no_grad():
        m.head.weight[0, 0] = float("nan")
    checkpoint.save(p, m, tiny_tokenizer, step=0)
    with pytest.raises(ContextbotError, match="NaN"):
        checkpoint.load(p)


def test_cli_reports_a_bad_checkpoint_in_one_line(tmp_path):
    p = _write(tmp_path, "evil.pt", pickle.dumps(Payload()))
    r = subprocess.run([sys.executable, "-m", "contextbot", "ask", "--checkpoint", str(p), "Hi"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("contextbot: error: ") and r.stderr.count("\n") == 1
    assert not (tmp_path / "PWNED").exists()
