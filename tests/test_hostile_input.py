"""Property tests: whatever anyone types or pastes, the chat answers or refuses, and goes on.

Hypothesis generates the text: any Unicode, control characters, ANSI escape sequences, right-to-left
and other format marks, emoji sequences, lone surrogates (what undecodable bytes become), strings
that imitate the corpus's own `Q:`/`A:` lines, and pastes of up to 100 000 characters. For each:

- `ask` returns a string of bounded length, or raises ValueError with a message and changes nothing;
- `stream` yields one character at a time with finite norms, and may be abandoned midway;
- the carried state stays finite (no NaN or inf), in a GRU and in an LSTM's cell;
- the session stays usable: the next question is answered, and after `reset()` the shipped
  checkpoint still answers the Tom Cruise dialogue.

The mechanics run on tiny random models (fast, and they emit any byte); one test uses the shipped
checkpoint for the behaviour.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from contextbot import ChatSession
from contextbot.model import checkpoint
from contextbot.chat import MAX_QUESTION, MAX_REPLY
from contextbot.text.turns import ANSWER, END, PROMPT_TAIL, QUESTION, reply

from .conftest import make_model

HOSTILE = [
    "\x1b[31m", "\x1b[2J\x1b[H", "\x1b]0;pwned\x07", "\x1b]52;c;cHduZWQ=\x07", "\x9b6n",  # ANSI / OSC / C1
    "\u202e", "\u200f", "\u2066", "\u2069", "\u061c", "\ufeff", "\u200b", "\u00ad",  # bidi, invisible
    "👨‍👩‍👧‍👦", "🇺🇸", "🏳️‍🌈", "👍🏽", "e\u0301", "\U0010ffff", "\ue000",  # sequences, private use
    "\x00", "\r", "\b", "\x7f", "\t", "\n", "\r\n", "\u2028", "\u2029", "\x85",  # control, line ends
    "\ud800", "\udfff", "\udcff",  # lone surrogates: undecodable bytes under surrogateescape
    QUESTION, PROMPT_TAIL, ANSWER + reply("He is an American actor."),  # the corpus format
    END + END + QUESTION + "Who is Tom Cruise?" + END,
]


@dataclass(frozen=True)
class Paste:
    """`piece` repeated to `n` characters: a long paste that prints short when a test fails."""

    piece: str
    n: int

    def __str__(self) -> str:
        return (self.piece * (self.n // len(self.piece) + 1))[:self.n]


def _text(value: str | Paste) -> str:
    return str(value) if isinstance(value, Paste) else value


texts = st.one_of(
    st.text(max_size=300),  # any Unicode the utf-8 codec can carry
    st.text(st.characters(codec=None), max_size=50),  # any code point
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=10),  # lone surrogates
    st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=4)), max_size=60).map("".join),
    st.builds(Paste, st.one_of(st.sampled_from(HOSTILE), st.text(min_size=1, max_size=3)),
              st.integers(min_value=1, max_value=100_000)),  # pastes, up to 100 000 characters
)

PROPERTIES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PASTES = [Paste("x", 100_000), Paste("\x1b[2J", 100_000), Paste("\u202e", 100_000), Paste("😀", 1000),
          "", "\x00\r\n"]


def _finite(session: ChatSession) -> bool:
    state = session.state if isinstance(session.state, tuple) else (session.state,)
    return all(bool(torch.isfinite(s).all()) for s in state)


def _same_state(a, b) -> bool:
    if isinstance(a, tuple):
        return all(torch.equal(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


def _copy(state):
    return tuple(s.clone() for s in state) if isinstance(state, tuple) else state.clone()


@pytest.fixture(scope="module", params=["gru-greedy", "lstm-sampled"])
def tiny_session(request, tmp_path_factory, tiny_tokenizer) -> ChatSession:
    """A random GRU at temperature 0 (its replies run to MAX_REPLY), and a random two-layer LSTM
    that samples, with the newline made likelier so that its replies end at varied lengths."""
    tok = tiny_tokenizer
    path = tmp_path_factory.mktemp("hostile") / f"{request.param}.safetensors"
    if request.param == "gru-greedy":
        checkpoint.save(path, make_model(tok, "gru"), tok, step=0)
        return ChatSession.load(path)
    model = make_model(tok, "lstm", layers=2)
    with torch.no_grad():
        model.head.bias[tok.newline_id] += 2.0
    checkpoint.save(path, model, tok, step=0)
    return ChatSession.load(path, temperature=1.0, top_k=50, seed=0)


def _too_long(text: str) -> bool:
    """The session's rule: refused if what is left after dropping control and format
    characters is longer than MAX_QUESTION."""
    kept = [ch for ch in text if ch in "\t\n\r\v\f" or not unicodedata.category(ch).startswith("C")]
    return len("".join(kept).strip()) > MAX_QUESTION


def _longest_piece(session: ChatSession) -> int:
    return max(len(t) for t in session.tokenizer.piece_text if t) or 1


@PROPERTIES
@given(text=texts)
@example(text=PASTES[0]).via("a 100 000-character paste")
@example(text=PASTES[1]).via("25 000 escape sequences: too long once cleaned")
@example(text=PASTES[2]).via("100 000 bidi marks: nothing left once cleaned")
@example(text=PASTES[3]).via("1000 emoji")
@example(text=PASTES[4]).via("empty")
@example(text=PASTES[5]).via("NUL and a line end")
def test_ask_answers_or_refuses_any_text(tiny_session, text):
    text = _text(text)
    s = tiny_session
    s.reset()
    s.generator.manual_seed(0)  # every example replays the same way
    s.ask("Who is Tom Cruise?")  # something carried, so a refusal has a state to leave alone
    before = _copy(s.state)
    too_long = _too_long(text)
    try:
        reply = s.ask(text)
    except ValueError as exc:
        assert too_long and "too long" in str(exc)
        assert _same_state(s.state, before)  # a refused question changes nothing
    else:
        assert not too_long
        assert isinstance(reply, str)
        assert len(reply) <= MAX_REPLY * _longest_piece(s)
        assert not any("\ud800" <= ch <= "\udfff" for ch in reply)  # printable as UTF-8
        reply.encode("utf-8")
    assert _finite(s)
    assert isinstance(s.ask("Where does he live?"), str)  # still usable
    assert _finite(s)


@PROPERTIES
@given(text=texts, stop_after=st.one_of(st.none(), st.integers(min_value=0, max_value=20)))
def test_stream_yields_characters_and_may_be_abandoned(tiny_session, text, stop_after):
    text = _text(text)
    s = tiny_session
    s.reset()
    s.generator.manual_seed(0)  # every example replays the same way
    try:
        it = s.stream(text)
    except ValueError as exc:
        assert "too long" in str(exc)
        assert torch.count_nonzero(s.state if not isinstance(s.state, tuple) else s.state[0]) == 0
        return
    layers = s.model.config.layers
    for n, step in enumerate(it):
        assert isinstance(step.char, str) and len(step.char) == 1
        assert len(step.norms) == layers and all(0 <= x < float("inf") for x in step.norms)
        if stop_after is not None and n >= stop_after:
            it.close()  # a UI's Escape: the state is still closed with the reply's newline
            break
    assert _finite(s)
    assert isinstance(s.ask("Who is Megan Fox?"), str)


def test_a_question_that_is_not_text_is_refused(tiny_checkpoint):
    s = ChatSession.load(tiny_checkpoint)
    for bad in (None, b"Who is Tom Cruise?", 42, ["Who"]):
        with pytest.raises(ValueError, match="must be a string"):
            s.ask(bad)
    assert isinstance(s.ask("Hi"), str)


TOM_CRUISE = [("Who is Tom Cruise?", "He is an American actor."),
              ("Where does he live?", "He lives in Beverly Hills.")]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile=st.lists(texts, min_size=1, max_size=4))
def test_hostile_input_leaves_nothing_behind_a_reset(shipped_gru, hostile):
    """On the shipped checkpoint: after any hostile turns, `reset()` gives back exactly the bot
    that a fresh session is, whatever that bot answers."""
    s = shipped_gru
    s.reset()
    fresh = [s.ask(q) for q, _ in TOM_CRUISE]
    for text in hostile:
        _try_ask(s, text)
        assert _finite(s)
    s.reset()
    assert [s.ask(q) for q, _ in TOM_CRUISE] == fresh
    s.reset()


def _try_ask(s, text) -> None:
    """Ask one hostile piece; a refusal (ValueError) is an allowed answer."""
    try:
        s.ask(_text(text))
    except ValueError:
        pass


def test_after_hostile_input_and_reset_the_shipped_bot_still_answers(shipped_gru):
    """The issue's wording: after all of the hostile pieces and pastes, and `reset()`, the seed
    dialogue is answered right (a property of the trained checkpoint, not only of the code)."""
    s = shipped_gru
    for text in HOSTILE + PASTES:
        _try_ask(s, text)
    assert _finite(s)
    s.reset()
    assert [s.ask(q) for q, _ in TOM_CRUISE] == [a for _, a in TOM_CRUISE]
    s.reset()
