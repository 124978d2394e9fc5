"""Shared builders and fixtures: tiny models built in the test (for mechanics) and the shipped
checkpoints (for the trained model's behaviour).

Every test that needs a shipped checkpoint carries the `shipped` marker: the fixtures below add it
to any test that uses them, and tests that name a shipped file directly say so with
`@pytest.mark.shipped`. A developer who is changing the model, and so the checkpoints, runs the
rest with `pytest -m "not slow and not shipped"`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from contextbot.cli import main
from contextbot.model import checkpoint
from contextbot.model.network import ModelConfig, RecurrentLM
from contextbot.paths import CHECKPOINTS
from contextbot.text.tokenizer import Tokenizer

SHIPPED_GRU = CHECKPOINTS / "gru.safetensors"
SHIPPED_LSTM = CHECKPOINTS / "lstm.safetensors"
#: Fixtures that hand a test a shipped checkpoint: using one marks the test `shipped`.
SHIPPED_FIXTURES = {"shipped", "shipped_gru", "shipped_lstm"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SHIPPED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shipped)

TINY_CORPUS = """Q: Who is Tom Cruise?
A: He is an American actor.
Q: Where does he live?
A: He lives in Beverly Hills.

Q: Who is Megan Fox?
A: She is an American actress.
Q: Where does she live?
A: She lives in Los Angeles.
"""


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    p = tmp_path / "tiny.txt"
    p.write_text(TINY_CORPUS, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def tiny_tokenizer() -> Tokenizer:
    return Tokenizer.train(TINY_CORPUS.splitlines())


def make_model(tok: Tokenizer, cell: str = "gru", hidden: int = 16, layers: int = 1, seed: int = 0) -> RecurrentLM:
    torch.manual_seed(seed)
    return RecurrentLM(ModelConfig(vocab_size=tok.vocab_size, cell=cell, embed=8, hidden=hidden,
                                   layers=layers)).eval()


def build(cell: str, layers: int, seed: int = 0) -> RecurrentLM:
    """A small model with no tokenizer (vocabulary of 23), for the recurrence's equivalence tests."""
    torch.manual_seed(seed)
    model = RecurrentLM(ModelConfig(vocab_size=23, cell=cell, embed=7, hidden=11, layers=layers))
    return model.eval()


def random_state(model: RecurrentLM, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    h = torch.randn(c.layers, 1, c.hidden, generator=g) * 0.5
    return (h, torch.randn(c.layers, 1, c.hidden, generator=g) * 0.5) if c.cell == "lstm" else h


def save_with_referent_head(path: Path, tok: Tokenizer, names: list[str] | None, cell: str = "gru",
                            layers: int = 1, seed: int = 0, scale: float = 8.0, step: int = 0) -> Path:
    """A random model saved with a referent head over nobody, a stranger and `names` (the names
    its checkpoint records); `names=None`: a checkpoint trained without the referent signal, no
    head. It never emits a byte piece or <unk>, as a trained model; the head's weights are scaled
    by `scale` so that its readings move with every character."""
    torch.manual_seed(seed)
    referents = 2 + len(names) if names is not None else 0
    model = RecurrentLM(ModelConfig(vocab_size=tok.vocab_size, cell=cell, embed=8, hidden=16,
                                    layers=layers, referents=referents)).eval()
    with torch.no_grad():
        for i in range(tok.vocab_size):
            if tok.piece_byte[i] is not None or tok.piece_text[i] == "":
                model.head.bias[i] = -1e4
        if model.referent_head is not None:
            model.referent_head.weight.mul_(scale)
    options = {"referent_names": list(names)} if names is not None else None
    checkpoint.save(path, model, tok, step=step, train_options=options)
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_tokenizer) -> Path:
    """A randomly initialised GRU saved as a real checkpoint. Its output bias rules out the byte
    pieces, as training does for a real model, so its replies are whole characters that encode
    back to the same tokens."""
    p = tmp_path / "tiny.safetensors"
    m = make_model(tiny_tokenizer)
    with torch.no_grad():
        for i, b in enumerate(tiny_tokenizer.piece_byte):
            if b is not None:
                m.head.bias[i] = -1e4
    checkpoint.save(p, m, tiny_tokenizer, step=0)
    return p


def _load_shipped(path: Path):
    from contextbot import ChatSession
    if not path.exists():
        pytest.fail(f"the shipped checkpoint {path} is missing")
    return ChatSession.load(path)


@pytest.fixture
def shipped() -> Path:
    """The path of the shipped GRU checkpoint (for tests that load it their own way)."""
    if not SHIPPED_GRU.exists():
        pytest.fail(f"the shipped checkpoint {SHIPPED_GRU} is missing")
    return SHIPPED_GRU


@pytest.fixture(scope="session")
def shipped_gru():
    return _load_shipped(SHIPPED_GRU)


@pytest.fixture(scope="session")
def shipped_lstm():
    return _load_shipped(SHIPPED_LSTM)


# -- running the command line ----------------------------------------------------------------
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
