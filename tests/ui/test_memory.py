"""The Memory section: who "he" and "she" mean, as the referent head reads the state, live.

The values the panel shows are checked against the head applied to the state by the test itself
(`torch.softmax(referent_head(h_top), -1)`, with the states computed by PyTorch's module), on a
tiny model with a random head (fast, and its readings move with every character) and on the
shipped checkpoint (which knows who Megan Fox is).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from rich.text import Text

from contextbot import chat as session_module
from contextbot.analysis.readout import Readout
from contextbot.chat import ChatSession
from contextbot.model import checkpoint as ckpt_io
from contextbot.model.network import ModelConfig, RecurrentLM, hidden_of
from contextbot.text.turns import prompt
from contextbot.ui import app as app_module
from contextbot.ui import streaming
from contextbot.ui.app import ChatApp
from contextbot.ui.help import HELP, HelpScreen
from contextbot.ui.messages import PromptProgress
from contextbot.ui.panel import MemorySection, MemoryView, abbreviations

from ..conftest import save_with_referent_head
from .conftest import ask, loaded

NAMES = ["Tom Cruise", "Megan Fox", "Tara Walsh"]


@pytest.fixture(scope="module")
def head_path(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny untrained GRU with a referent head over nobody, a stranger and three people."""
    path = tmp_path_factory.mktemp("head") / "head.safetensors"
    return save_with_referent_head(path, tiny_tokenizer, NAMES, layers=2, seed=3, scale=20, step=3)


@pytest.fixture
def with_head(head_path, monkeypatch) -> Path:
    monkeypatch.setattr(session_module, "MAX_REPLY", 40)
    return head_path


@pytest.fixture
def without_head(tmp_path, tiny_tokenizer, monkeypatch) -> Path:
    """A tiny checkpoint trained without the referent signal: no head."""
    monkeypatch.setattr(session_module, "MAX_REPLY", 40)
    torch.manual_seed(0)
    model = RecurrentLM(ModelConfig(vocab_size=tiny_tokenizer.vocab_size, embed=8, hidden=16)).eval()
    path = tmp_path / "nohead.safetensors"
    ckpt_io.save(path, model, tiny_tokenizer, step=1)
    return path


# -- what the test computes itself -----------------------------------------------------------------
def head_probs(model: RecurrentLM, h_top: torch.Tensor) -> torch.Tensor:
    """(..., hidden) -> (..., 2, classes): the referent head's softmax, row 0 he, row 1 she."""
    with torch.no_grad():
        logits = model.referent_head(h_top).unflatten(-1, (2, model.config.referents))
    return torch.softmax(logits, -1)


def module_prompt_probs(model: RecurrentLM, tok, question: str, state) -> torch.Tensor:
    """The head's probabilities after each token of the prompt, fed through the module with
    `forward(..., referents=True)` (training's own path): (tokens, 2, classes)."""
    with torch.no_grad():
        _, _, who = model(torch.tensor([tok.encode(prompt(question))]), state, referents=True)
    return torch.softmax(who[0], -1)


def assert_shows(memory, probs: torch.Tensor, labels: list[str]) -> None:
    """A (he, she) reading is the likeliest class of each row of `probs`, with its probability."""
    for reading, row in zip(memory, probs):
        p, i = row.max(-1)
        assert reading.label == labels[int(i)] and reading.index == int(i)
        assert reading.probability == pytest.approx(float(p), abs=1e-4)


# -- the worker's readings ----------------------------------------------------------------------------
def test_run_turn_reads_every_character_of_the_question_and_the_reply(with_head):
    session = ChatSession.load(with_head)
    readout = Readout.of(session.checkpoint)
    assert readout.labels == ["nobody", "a stranger", *NAMES]
    session.ask("Who is Tom?")  # something carried in
    start = session.state.clone()
    fed = []
    result = streaming.run_turn(session, "Where does he live?", readout=readout,
                                on_prompt=lambda text, memory: fed.append((text, memory)))
    # One reading per character of the prompt, in order, each the head on the module's state.
    text = prompt("Where does he live?")
    assert [t for t, _ in fed] == [text[:i + 1] for i in range(len(text))]
    expected = module_prompt_probs(session.model, session.tokenizer, "Where does he live?", start)
    assert len(expected) == len(text)  # one token per character in this alphabet
    for (_, memory), probs in zip(fed, expected):
        assert_shows(memory, probs, readout.labels)
    assert len({(m[0].index, m[1].index, round(m[0].probability, 3)) for _, m in fed}) > 1
    # Every reply character: the head on the top layer's h after it (the tick's units).
    assert result.ticks and all(t.memory is not None for t in result.ticks)
    for tick in result.ticks:
        assert_shows(tick.memory, head_probs(session.model, tick.units), readout.labels)
    # The end of the turn: the head on the session's state after the newline.
    assert_shows(result.memory_out, head_probs(session.model, hidden_of(session.state)[-1, 0]),
                 readout.labels)
    assert result.slim().memory_out == result.memory_out


def test_run_turn_without_a_readout_reads_nothing(with_head):
    session = ChatSession.load(with_head)
    fed = []
    result = streaming.run_turn(session, "Hi", on_prompt=lambda *a: fed.append(a))
    assert not fed and result.memory_out is None and all(t.memory is None for t in result.ticks)


def test_prompt_progress_collapses_within_a_turn():
    a, b, c = PromptProgress(1, "Q", ()), PromptProgress(1, "Q:", ()), PromptProgress(2, "Q", ())
    assert a.can_replace(b) and not b.can_replace(c)


# -- the panel ---------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_the_panel_updates_during_the_question_and_the_reply(with_head, monkeypatch):
    """What the Memory section draws while a turn streams: it changes, and every reading it holds
    is the head on the state at that character."""
    real_run_turn = app_module.run_turn

    def slowly(*args, on_progress, on_prompt, **kw):  # a few ms per character: time to draw
        def progress(ticks):
            time.sleep(0.005)
            on_progress(ticks)

        def prompt_progress(text, memory):
            time.sleep(0.005)
            on_prompt(text, memory)
        return real_run_turn(*args, on_progress=progress, on_prompt=prompt_progress, **kw)

    monkeypatch.setattr(app_module, "run_turn", slowly)
    app = ChatApp(with_head)
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        view = app.query_one(MemoryView)
        assert app.query_one(MemorySection).display
        model, labels = app.session.model, app.readout.labels
        question_seen, reply_seen = [], []
        on_prompt, on_reply = ChatApp.on_prompt_progress, ChatApp.on_reply_progress

        def prompt_progress(self, message):
            on_prompt(self, message)
            question_seen.append((message.fed, view.memory, view.text()))

        def reply_progress(self, message):
            on_reply(self, message)
            reply_seen.append((message.ticks[-1], view.memory, view.text()))

        # On the class: Textual finds handlers in the class's __dict__, not the instance's.
        monkeypatch.setattr(ChatApp, "on_prompt_progress", prompt_progress)
        monkeypatch.setattr(ChatApp, "on_reply_progress", reply_progress)
        start = app.session.state.clone()
        await ask(pilot, "Who is Tom?")
        assert len(question_seen) > 1 and len(reply_seen) > 1
        assert len({text for *_, text in question_seen}) > 1  # it moved while the question was read
        assert len({text for *_, text in reply_seen}) > 1  # and while the reply streamed
        expected = module_prompt_probs(model, app.session.tokenizer, "Who is Tom?", start)
        for fed, memory, text in question_seen:
            assert_shows(memory, expected[len(fed) - 1], labels)
            assert "reading the question" in text and str(memory[0]) in text
        for tick, memory, text in reply_seen:
            assert memory == tick.memory
            assert_shows(memory, head_probs(model, tick.units), labels)
            assert "replying" in text and str(memory[1]) in text
        # Between turns: the state after the turn, and an entry for the turn.
        assert_shows(view.memory, head_probs(model, hidden_of(app.session.state)[-1, 0]), labels)
        assert "after turn 1" in view.text() and view.history[-1][0] == 1


@pytest.mark.asyncio
async def test_without_a_head_the_section_is_hidden_and_f1_says_why(without_head):
    app = ChatApp(without_head)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        assert app.readout is None
        assert not app.query_one(MemorySection).display
        assert app.query_one("#norms-title").has_class("-first")  # no gap at the panel's top
        await ask(pilot, "Who is Tom?")
        assert app.query_one(MemoryView).memory is None
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        screen = "\n".join(strip.text for strip in app.screen._compositor.render_strips())
        assert "no referent head" in screen and "--referent-weight 0" in screen


@pytest.mark.asyncio
async def test_f1_with_a_head_explains_the_section_and_fits_80x24(with_head):
    from textual.containers import VerticalScroll
    app = ChatApp(with_head)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press("f1")
        await pilot.pause()
        box = app.screen.query_one(VerticalScroll)
        assert box.max_scroll_y == 0 and box.max_scroll_x == 0
        screen = "\n".join(strip.text for strip in app.screen._compositor.render_strips())
        for line in Text.from_markup(HELP).plain.splitlines():
            assert line.rstrip() in screen, line
        assert "linear probe" in screen and "no referent head" not in screen


# -- the shipped checkpoint ---------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_megan_fox_then_ctrl_r_then_ctrl_t(shipped, monkeypatch):
    app = ChatApp(shipped)
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        view, model = app.query_one(MemoryView), app.session.model
        labels = app.readout.labels
        zero = head_probs(model, torch.zeros(model.config.hidden))
        assert_shows(view.memory, zero, labels)  # nothing said yet: the zero state
        await ask(pilot, "Who is Megan Fox?")
        she = view.memory[1]
        assert she.label == "Megan Fox" and she.probability > 0.9
        assert "she → Megan Fox" in view.text()
        assert_shows(view.memory, head_probs(model, hidden_of(app.session.state)[-1, 0]), labels)
        await ask(pilot, "How are you?")  # small talk keeps her
        assert view.memory[1].label == "Megan Fox"
        assert [m[1].label for _, _, m in view.history] == ["Megan Fox", "Megan Fox"]
        # ctrl+r: the zeroed state's reading.
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert_shows(view.memory, zero, labels)
        assert view.memory[1].label != "Megan Fox" and "zeroed" in view.text()
        # The next turn reads from zero too: its first prompt character is "Q" fed on zero.
        await ask(pilot, "Who is Megan Fox?")
        assert view.memory[1].label == "Megan Fox" and view.history[-1][1] == "reset"
        # ctrl+t: memory off. The panel shows the zero state; the next turn starts from it.
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert_shows(view.memory, zero, labels)
        assert "memory off" in view.text()
        firsts = []
        on_prompt = ChatApp.on_prompt_progress

        def prompt_progress(self, message):
            if len(message.fed) == 1:
                firsts.append(message)
            on_prompt(self, message)

        monkeypatch.setattr(ChatApp, "on_prompt_progress", prompt_progress)
        await ask(pilot, "Where does she live?")
        fresh = ChatSession.load(shipped)
        expected_q = module_prompt_probs(model, fresh.tokenizer, "Where does she live?",
                                         model.zero_state(1))
        for m in firsts:  # (it may have been collapsed into a later one)
            assert_shows(m.memory, expected_q[0], labels)
        fresh.ask("Where does she live?")  # the same turn, from zero, in a session of its own
        end = head_probs(model, hidden_of(fresh.state)[-1, 0])
        assert_shows(view.history[-1][2], end, labels)
        assert view.history[-1][1] == "off" and view.history[-1][2][1].label != "Megan Fox"
        assert_shows(view.memory, zero, labels)  # still off: the next turn starts from zero


# -- drawing ------------------------------------------------------------------------------------------
def test_abbreviations_tell_people_apart():
    assert abbreviations(["nobody", "a stranger", "Tom Cruise", "Megan Fox"]) == {
        "nobody": "–", "a stranger": "?", "Tom Cruise": "Tom", "Megan Fox": "Megan"}
    short = abbreviations(["nobody", "a stranger", "Tom Cruise", "Tom Hanks", "Ann Lee"])
    assert short["Tom Cruise"] == "Tom C" and short["Tom Hanks"] == "Tom H" and short["Ann Lee"] == "Ann L"
    short = abbreviations(["nobody", "a stranger", "Tom Cruise", "Tom Castle"])
    assert short["Tom Cruise"] == "Tom Cruise"


def test_the_history_keeps_the_newest_turns_that_fit():
    from contextbot.analysis.readout import Reading
    view = MemoryView()
    view.setup(["nobody", "a stranger", "Tom Cruise", "Megan Fox"])
    he, she = Reading("he", "Tom Cruise", 2, 0.9), Reading("she", "nobody", 0, 0.8)
    view.show((he, she), "after turn 9")
    for n in range(1, 10):
        view.add_turn(n, "turn", (he, she))
    lines = [line.plain for line in view.lines(30)]
    assert lines[:3] == ["he → Tom Cruise 0.90", "she → nobody 0.80", "after turn 9"]
    history = lines[3:]
    assert len(history) == MemoryView.HISTORY_LINES and all(len(ln) <= 30 for ln in history)
    assert history[0].startswith("by turn ") and history[-1].rstrip().endswith("9 Tom/–")
    assert "1 Tom/–" not in " ".join(history)  # the oldest turns make room
    wide = [line.plain for line in view.lines(120)]
    assert wide[0] == "he → Tom Cruise 0.90 · she → nobody 0.80"  # one line when it fits
    assert "1 Tom/–" in wide[2]
