import random

import pytest

from contextbot.paths import DEFAULT_TRAIN
from contextbot.errors import ContextbotError
from contextbot.text.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def corpus_tok():
    lines = DEFAULT_TRAIN.read_text(encoding="utf-8").splitlines()[:5000]
    return Tokenizer.train(lines), lines


def test_round_trip_on_the_corpus_is_exact_and_one_token_per_character(corpus_tok):
    tok, lines = corpus_tok
    text = "\n".join(lines) + "\n\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) == len(text)  # char model: one token per character


def test_spaces_newlines_and_repeats_survive(corpus_tok):
    tok, _ = corpus_tok
    for t in ["  leading", "trailing  ", "a   b", "\n\nQ: x\n", " ", "\n", "A: "]:
        assert tok.decode(tok.encode(t)) == t


def test_random_unicode_round_trips_without_unknowns(corpus_tok):
    tok, _ = corpus_tok
    rng = random.Random(0)
    for _ in range(200):
        t = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0xA0, 0xD7FF),
                                    rng.randrange(0x1F300, 0x1FAFF)])) for _ in range(rng.randint(1, 30)))
        ids = tok.encode(t)
        assert 0 not in ids  # never <unk>: unseen characters become UTF-8 byte tokens
        assert tok.decode(ids) == t


def test_streaming_decoder_waits_for_whole_characters(corpus_tok):
    tok, _ = corpus_tok
    text = "Hi ☃ 😀 ok"
    d = tok.decoder()
    pieces = [d.push(i) for i in tok.encode(text)]
    assert "".join(pieces) + d.flush() == text
    assert all("\ufffd" not in p for p in pieces)


def test_char_count_counts_characters_not_bytes(corpus_tok):
    tok, _ = corpus_tok
    text = "a😀b"
    assert sum(tok.char_count(i) for i in tok.encode(text)) == 3


def test_bpe_tokenizer_round_trips(corpus_tok):
    _, lines = corpus_tok
    tok = Tokenizer.train(lines, kind="bpe", vocab_size=400)
    text = "\n".join(lines[:50]) + "\n"
    ids = tok.encode(text)
    assert len(ids) < len(text)
    assert tok.decode(ids) == text


def test_unknown_kind_and_empty_corpus_are_errors():
    with pytest.raises(ContextbotError):
        Tokenizer.train(["a"], kind="word")
    with pytest.raises(ContextbotError):
        Tokenizer.train([])
