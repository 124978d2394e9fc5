"""No model text reaches the terminal as a control or format character, anywhere in `contextbot chat`.

A checkpoint from a stranger can spell any byte (the tokenizer's byte fallback), so its reply can be
an escape sequence: OSC 0/2 retitle the terminal, OSC 52 writes the clipboard, CSI clears the
screen or recolours it (also as the one-character C1 CSI, U+009B), and bidi controls reorder the
text around them. Here a tiny GRU is wired by hand so that its greedy reply is exactly such a
sequence; the app is driven through a turn, ctrl+d and ctrl+s, and every widget's rendered
content, the screen as the terminal would get it, the notifications and the SVG screenshot are
searched for any character `visible` (text/terminal.py) would have replaced.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
import torch

from contextbot import chat as session_module
from contextbot.chat import ChatSession
from contextbot.model import checkpoint as ckpt_io
from contextbot.model.network import ModelConfig, RecurrentLM
from contextbot.model.recurrence import gate_rows
from contextbot.text.terminal import visible
from contextbot.text.turns import prompt
from contextbot.ui.app import ChatApp
from contextbot.ui.conversation import BotReply, ChatLog, Comparison
from contextbot.ui.panel import ModelInfo, StatePanel

from .conftest import ask, loaded, until

#: Replies a rigged checkpoint gives, one per class of attack.
HOSTILE_REPLIES = {
    "osc0-title": "\x1b]0;PWNED\x07",
    "osc2-title": "\x1b]2;PWNED\x07",
    "osc52-clipboard": "\x1b]52;c;UFdORUQ=\x07",
    "csi-clear": "\x1b[2J",
    "csi-colour": "\x1b[31mred",
    "c1-csi": "\u009b2J",
    "c1-osc": "\u009d0;PWNED\u009c",
    "bidi-override": "\u202eevil\u2066",
    "zero-width-and-tag": "a\u200bb\U000e0041",
    "line-separator": "one\u2028two",
}

UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def unsafe(text: str) -> list[str]:
    """The characters of `text` that must never reach a terminal (a line's own newline aside)."""
    return [ch for ch in text if ch not in "\n\t" and unicodedata.category(ch) in UNSAFE]


def rigged(path: Path, tok, reply: str) -> Path:
    """A GRU checkpoint whose greedy reply to any question is exactly `reply`, then a newline.

    The wiring: the update gate is shut and the reset gate open, so the new h is
    tanh(W x + U h): its first half a one-hot of the current token, its second half a copy of
    the first half of the previous h (the previous token). The output layer then maps the current
    token to the next one, or, where the reply has the same token twice with different
    successors, the previous token does. Every prompt ends in the same two tokens (`A: `), so the
    reply does not depend on the question.
    """
    chain = tok.encode(prompt("x"))[-2:] + tok.encode(reply) + [tok.newline_id]
    assert tok.decode(chain[2:-1]) == reply
    slot = {t: i for i, t in enumerate(sorted(set(chain)))}
    a = len(slot)
    successors: dict[int, set[int]] = {}
    by_pair: dict[tuple[int, int], int] = {}
    for prev, cur, nxt in zip(chain, chain[1:], chain[2:]):
        successors.setdefault(cur, set()).add(nxt)
        assert by_pair.setdefault((prev, cur), nxt) == nxt, "the reply repeats a pair of tokens"
    model = RecurrentLM(ModelConfig(vocab_size=tok.vocab_size, cell="gru", embed=a, hidden=2 * a,
                                    layers=1)).eval()
    rnn = model.rnn
    r, z, n = (gate_rows("gru", g, 2 * a) for g in "rzn")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for t, i in slot.items():
            model.embedding.weight[t, i] = 1.0
        rnn.bias_ih_l0[r] = 20.0  # reset gate open: the candidate sees the old h
        rnn.bias_ih_l0[z] = -20.0  # update gate shut: the new h is the candidate
        w_in, w_hn = rnn.weight_ih_l0[n], rnn.weight_hh_l0[n]
        w_in[:a, :a] = 10.0 * torch.eye(a)  # first half: the current token
        w_hn[a:, :a] = 10.0 * torch.eye(a)  # second half: the previous token
        rnn.weight_ih_l0[n], rnn.weight_hh_l0[n] = w_in, w_hn
        model.head.bias.fill_(-10.0)
        by_prev: dict[int, int] = {}
        for (prev, cur), nxt in by_pair.items():
            if len(successors[cur]) == 1:
                model.head.weight[nxt, slot[cur]] = 20.0
            else:
                assert by_prev.setdefault(prev, nxt) == nxt, "ambiguous for this wiring"
                model.head.weight[nxt, a + slot[prev]] = 10.0
    ckpt_io.save(path, model, tok, step=0)
    return path


def rendered_texts(app) -> list[str]:
    """What the app would put on the terminal: every line of the screen as composited (toasts
    included), and each widget's own render (so a line scrolled out of view counts too), with
    its border titles."""
    texts = [strip.text for strip in app.screen._compositor.render_strips()]
    for widget in app.screen.walk_children(with_self=True):
        rendered = widget.render()
        texts.append(getattr(rendered, "plain", None) or str(rendered))
        texts += [str(widget.border_title or ""), str(widget.border_subtitle or "")]
    texts += [app.title, app.sub_title]
    return texts


def assert_nothing_unsafe(app) -> None:
    bad = [(t, unsafe(t)) for t in rendered_texts(app) if unsafe(t)]
    assert not bad, f"control or format characters reached the screen: {bad[:3]}"
    svg = app.export_screenshot()
    assert not unsafe(svg.replace("\n", "")), "control or format characters in the screenshot"
    notes = [n.message + n.title for n in app._notifications]
    assert not [n for n in notes if unsafe(n)]


@pytest.mark.parametrize("name", HOSTILE_REPLIES)
def test_the_rigged_checkpoint_replies_with_the_sequence(tmp_path, tiny_tokenizer, name):
    """The premise of the tests below: the session returns the escape sequence exactly."""
    reply = HOSTILE_REPLIES[name]
    assert ChatSession.load(rigged(tmp_path / "r.safetensors", tiny_tokenizer, reply)).ask("Hi") == reply


@pytest.mark.parametrize("name", HOSTILE_REPLIES)
@pytest.mark.asyncio
async def test_a_hostile_reply_never_reaches_the_terminal(tmp_path, tiny_tokenizer, monkeypatch, name):
    """The reply streams, is compared with ctrl+d and saved with ctrl+s: on screen it is always
    `visible(reply)`; only the JSON file keeps the exact text (JSON escapes control characters).
    The directory it is saved in has a hostile name too, and the notice names it safely, as
    plain text rather than markup."""
    reply = HOSTILE_REPLIES[name]
    monkeypatch.setattr(session_module, "MAX_REPLY", 40)
    path = rigged(tmp_path / "rigged.safetensors", tiny_tokenizer, reply)
    where = tmp_path / "saves\x1b]0;PWNED\x07[reverse]here"
    where.mkdir()
    monkeypatch.chdir(where)
    app = ChatApp(path)
    notes: list[str] = []
    async with app.run_test(size=(100, 40)) as pilot:
        await loaded(pilot)
        notify = app.notify

        def spy(message, **kw):
            notes.append(message)
            assert kw.get("markup") is False  # a path or a reply is never parsed as markup
            notify(message, **kw)
        app.notify = spy
        assert await ask(pilot, "Hi\u2028[b]there[/b]") == reply  # the session's text is exact
        assert app.query_one(BotReply).content.plain == f"bot › {visible(reply)}"
        assert_nothing_unsafe(app)
        await pilot.press("ctrl+d")
        await until(pilot, lambda: app.query(Comparison) and not app.busy)
        comparison = app.query_one(Comparison)
        assert comparison.carried == comparison.zeroed == reply
        assert [s.content.plain for s in comparison.query("Static")] == [visible(reply)] * 2
        assert_nothing_unsafe(app)
        await pilot.press("ctrl+s")
        await pilot.pause()
        saved = app.last_saved
        assert saved is not None and saved.parent == where
        assert notes and str(saved) not in notes[-1]  # the path is shown through `visible`...
        assert visible(str(saved)) in notes[-1] and "[reverse]here" in notes[-1]  # ...literally
        log = [s.content.plain for s in app.query_one(ChatLog).query(".hint")]
        assert any(visible(str(saved)) in line for line in log)  # and stays in the log
        assert_nothing_unsafe(app)
    data = json.loads(saved.read_text(encoding="utf-8"))
    assert data["turns"][0]["reply"] == reply and data["turns"][0]["zeroed_reply"] == reply


@pytest.mark.asyncio
async def test_a_hostile_checkpoint_name_in_the_panel_and_the_error(tmp_path, tiny_tokenizer, monkeypatch):
    """The panel shows the checkpoint's file name, and a damaged file's error quotes its path:
    both are shown through `visible`, and the error `contextbot chat` repeats on stderr too."""
    monkeypatch.setattr(session_module, "MAX_REPLY", 40)
    name = "m\x1b]2;PWNED\x07\u202e\u009b2J.safetensors"
    good = rigged(tmp_path / name, tiny_tokenizer, "\x1b[31mred")
    app = ChatApp(good)
    async with app.run_test(size=(100, 40)) as pilot:
        await loaded(pilot)
        await ask(pilot, "Hi")
        info = app.query_one(StatePanel).query_one(ModelInfo).content.plain
        assert visible(name) in info
        assert_nothing_unsafe(app)
    bad = tmp_path / "bad" / name
    bad.parent.mkdir()
    bad.write_bytes(b"\x80\x04not a checkpoint at all" * 10)
    app = ChatApp(bad)
    async with app.run_test(size=(100, 40)) as pilot:
        await loaded(pilot)
        assert app.session is None
        errors = [s.content.plain for s in app.query_one(ChatLog).query(".error")]
        assert errors and visible(name) in errors[0]
        assert_nothing_unsafe(app)
    assert app.load_error and not unsafe(app.load_error)  # what `contextbot chat` prints after


@pytest.mark.asyncio
async def test_an_internal_error_note_is_shown_safely(tmp_path, tiny_tokenizer, monkeypatch):
    """A worker that dies with model text in its exception: the note in the log is `visible`."""
    from contextbot.ui import app as app_module

    class Hostile(Exception):
        def __repr__(self) -> str:  # repr() would escape a plain message's controls itself
            return "Hostile('\x1b]0;PWNED\x07 \u202e')"

    def boom(*args, **kwargs):
        raise Hostile()
    monkeypatch.setattr(app_module, "run_turn", boom)
    app = ChatApp(rigged(tmp_path / "r.safetensors", tiny_tokenizer, "ok"))
    async with app.run_test(size=(100, 40)) as pilot:
        await loaded(pilot)
        from contextbot.ui.history_input import HistoryInput
        app.query_one(HistoryInput).value = "Hi"
        await pilot.press("enter")
        await until(pilot, lambda: app.query_one(ChatLog).query(".error") and not app.busy)
        assert_nothing_unsafe(app)


@pytest.mark.parametrize("paste", ["\x1b]0;PWNED\x07", "\x1b]52;c;UFdORUQ=\x07", "\x1b[2J", "\x9b2J",
                                   "\u202eevil\u2066", "a\u200bb\ufeff"])
@pytest.mark.asyncio
async def test_a_paste_cannot_write_escape_sequences_through_the_question_box(tmp_path, tiny_tokenizer, paste):
    """Not the model's text but a paste's (from a web page, say): the box drops what
    `clean_question` would drop before it draws it, and the question asked is the same."""
    from textual import events

    from contextbot.text.terminal import clean_question
    from contextbot.ui.history_input import HistoryInput
    app = ChatApp(rigged(tmp_path / "r.safetensors", tiny_tokenizer, "ok"))
    async with app.run_test(size=(100, 40)) as pilot:
        await loaded(pilot)
        box = app.query_one(HistoryInput)
        box.post_message(events.Paste(f"Who is{paste}\nTom?"))
        await pilot.pause()
        assert box.value == clean_question(f"Who is{paste}\nTom?") and not unsafe(box.value)
        assert_nothing_unsafe(app)
