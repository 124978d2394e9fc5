"""Shared fixtures: tiny models built in the test (for mechanics) and the shipped checkpoint
(for the trained model's behaviour)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from contextbot.model import checkpoint
from contextbot.model.network import ModelConfig, RecurrentLM
from contextbot.text.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parent.parent
SHIPPED_GRU = REPO / "checkpoints" / "gru.safetensors"
SHIPPED_LSTM = REPO / "checkpoints" / "lstm.safetensors"

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


@pytest.fixture(scope="session")
def shipped_gru():
    return _load_shipped(SHIPPED_GRU)


@pytest.fixture(scope="session")
def shipped_lstm():
    return _load_shipped(SHIPPED_LSTM)
