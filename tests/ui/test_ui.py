"""The terminal UI (`contextbot chat`), driven by Textual's Pilot.

Mechanics use a tiny untrained model built here (fast; its replies are cut at 40 characters);
behaviour that needs a model that knows who Tom Cruise is uses the shipped checkpoint, which
must be there (as in the rest of the suite). The snapshot tests compare SVG screenshots with the ones under
tests/ui/__snapshots__/; after an intended change to the UI or the checkpoint, regenerate them:

    .venv/bin/python -m pytest tests/ui/test_ui.py -k snapshot --snapshot-update
"""

from __future__ import annotations

import ast
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from textual.widget import Widget
from textual.widgets import Static

from contextbot.model import checkpoint as ckpt_io
from contextbot import chat as session_module
from contextbot.chat import MAX_QUESTION, ChatSession
from contextbot.text.terminal import visible
from contextbot.ui import app as app_module
from contextbot.ui import streaming
from contextbot.ui.app import ChatApp
from contextbot.ui.conversation import BotReply, ChatLog, Comparison, Divider, UserLine
from contextbot.ui.help import HelpScreen
from contextbot.ui.history_input import HistoryInput
from contextbot.ui.messages import ReplyFinished, ReplyProgress
from contextbot.ui.panel import CarryoverTable, GateBars, NormChart, StatePanel, UnitHeatmap
from contextbot.ui.status import StatusLine
from contextbot.ui.timeline import Boundary, Timeline, columns

from .conftest import ask, loaded, save_tiny, until


def reply_texts(app) -> list[str]:
    return [r.text for r in app.query(BotReply)]


# -- chatting --------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_a_question_streams_a_reply_and_moves_the_panel(tiny):
    app = ChatApp(tiny)
    async with app.run_test() as pilot:
        await loaded(pilot)
        chart = app.query_one(NormChart)
        assert chart.current == (0.0, 0.0)  # a fresh conversation starts from zero
        await pilot.click(HistoryInput)
        await pilot.press(*"Who is Tom?")
        await pilot.press("enter")
        await until(pilot, lambda: app.transcript.entries and not app.busy)
        await pilot.pause()
        entry = app.transcript.entries[0]
        assert entry.result.question == "Who is Tom?"
        assert [u.content for u in app.query(UserLine)][-1].plain.endswith("Who is Tom?")
        # What the screen shows is what the session generated, and what a plain session says.
        assert reply_texts(app) == [entry.result.reply]
        assert entry.result.reply == ChatSession.load(tiny).ask("Who is Tom?")
        # The panel moved: live norms, a sparkline of the reply, gates, a carryover row.
        assert chart.current == app.session.norms() and any(n > 0 for n in chart.current)
        assert len(app.timeline.ticks()) == len(entry.result.reply)
        assert app.query_one(GateBars).values and "update" in app.query_one(GateBars).values[0]
        assert len(app.query_one(CarryoverTable).turns) == 1
        assert not app.query_one(HistoryInput).disabled and not app.busy
        assert "turn 1" in str(app.query_one(StatusLine).content)


@pytest.mark.asyncio
async def test_ctrl_r_zeroes_the_state_and_keeps_the_log(tiny):
    app = ChatApp(tiny)
    async with app.run_test() as pilot:
        await loaded(pilot)
        await ask(pilot, "Who is Tom Cruise?")
        assert any(n > 0 for n in app.session.norms())
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert app.session.norms() == (0.0, 0.0)
        assert float(app.session.state.abs().sum()) == 0.0
        assert app.session.chars_seen == 0
        assert app.query_one(NormChart).current == (0.0, 0.0)
        assert len(app.query(BotReply)) == 1  # the conversation stays on screen...
        assert "memory zeroed" in str(app.query(Divider).last().content)  # ...with a divider
        assert isinstance(app.timeline.recent()[-1], Boundary)
        await ask(pilot, "Where does he live?")
        assert app.transcript.entries[-1].memory_zeroed_before
        assert app.transcript.entries[-1].result.norms_in == (0.0, 0.0)


@pytest.mark.asyncio
async def test_ctrl_t_toggles_carry(tiny):
    app = ChatApp(tiny)
    async with app.run_test() as pilot:
        await loaded(pilot)
        assert app.session.carry and "memory: carried" in str(app.query_one(StatusLine).content)
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert not app.session.carry
        assert "memory: OFF" in str(app.query_one(StatusLine).content)
        await ask(pilot, "Who is Tom Cruise?")
        await ask(pilot, "Where does he live?")
        r = app.transcript.entries[-1].result
        assert not r.carry and r.norms_in == (0.0, 0.0)
        # Memory off: the follow-up is answered exactly as it would be in a fresh conversation.
        assert r.reply == ChatSession.load(tiny).ask("Where does he live?")
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert app.session.carry


@pytest.mark.asyncio
async def test_memory_off_changes_the_follow_up_answer(shipped):
    """The point of the project: the same follow-up, with and without the carried state."""
    app = ChatApp(shipped)
    async with app.run_test() as pilot:
        await loaded(pilot)
        await ask(pilot, "Who is Tom Cruise?")
        carried = await ask(pilot, "Where does he live?")
        reference = ChatSession.load(shipped)
        reference.ask("Who is Tom Cruise?")
        assert carried == reference.ask("Where does he live?")
        await pilot.press("ctrl+r", "ctrl+t")
        await pilot.pause()
        await ask(pilot, "Who is Tom Cruise?")
        forgotten = await ask(pilot, "Where does he live?")
        assert forgotten == ChatSession.load(shipped).ask("Where does he live?")
        assert forgotten != carried
        assert reply_texts(app)[-3] == carried and reply_texts(app)[-1] == forgotten


@pytest.mark.asyncio
async def test_ctrl_d_shows_both_answers(tiny):
    app = ChatApp(tiny)
    async with app.run_test() as pilot:
        await loaded(pilot)
        await ask(pilot, "Who is Tom Cruise?")
        carried = await ask(pilot, "Where does he live?")
        state_before = app.session.state.clone()
        await pilot.press("ctrl+d")
        await until(pilot, lambda: app.query(Comparison) and not app.busy)
        comparison = app.query_one(Comparison)
        assert comparison.carried == carried
        assert comparison.zeroed == ChatSession.load(tiny).ask("Where does he live?")
        shown = [s.content.plain for s in comparison.query(Static)]
        assert shown == [visible(carried) or "(empty reply)", visible(comparison.zeroed) or "(empty reply)"]
        assert app.transcript.entries[-1].zeroed_reply == comparison.zeroed
        assert torch.equal(app.session.state, state_before)  # the conversation's memory untouched


@pytest.mark.asyncio
async def test_ctrl_s_writes_valid_json(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the file goes to the current directory
    app = ChatApp(tiny)
    notes = []
    async with app.run_test() as pilot:
        await loaded(pilot)
        app.notify = lambda message, **kw: notes.append(message)
        first = await ask(pilot, "Who is Tom Cruise?")
        await pilot.press("ctrl+r")
        await ask(pilot, "Where does he live?")
        await pilot.press("ctrl+s")
        await pilot.pause()
    path = app.last_saved
    assert path is not None and path.parent == tmp_path and path.exists()
    assert any(path.name in n for n in notes)  # the notice names the file
    data = json.loads(path.read_text())
    assert data["format"] == "contextbot-chat"
    assert data["checkpoint"]["sha256"] == ckpt_io.file_sha256(tiny)
    assert data["settings"] == {"carry": True, "temperature": 0.0, "top_k": None}
    turns = data["turns"]
    assert [t["question"] for t in turns] == ["Who is Tom Cruise?", "Where does he live?"]
    assert turns[0]["reply"] == first
    assert [t["memory_zeroed_before"] for t in turns] == [False, True]
    assert len(turns[0]["norms"]) == len(first) and len(turns[0]["norms"][0]) == 2
    assert turns[1]["norms_in"] == [0.0, 0.0]


@pytest.mark.asyncio
async def test_a_bad_checkpoint_shows_the_message(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a checkpoint at all" * 10)
    app = ChatApp(bad)
    async with app.run_test() as pilot:
        await loaded(pilot)
        assert app.session is None
        assert not app.query_one(StatePanel).display  # the message gets the whole width
        errors = [s.content.plain for s in app.query_one(ChatLog).query(".error")]
        assert errors and errors[0].startswith("contextbot: error: ")
        assert "not a safetensors checkpoint" in errors[0]
        assert app.query_one(HistoryInput).disabled
        assert not app.query_one(ChatLog).loading
        await pilot.press("ctrl+r", "ctrl+s", "ctrl+d", "ctrl+t")  # nothing to act on: no crash
        await pilot.pause()
        assert app.is_running


def test_chat_command_refuses_a_missing_checkpoint(tmp_path, capsys):
    from contextbot.cli import main
    assert main(["chat", "--checkpoint", str(tmp_path / "nope.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("contextbot: error: ") and "no such checkpoint" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.asyncio
async def test_refused_and_cleaned_input(tiny):
    app = ChatApp(tiny)
    notes = []
    async with app.run_test() as pilot:
        await loaded(pilot)
        app.notify = lambda message, **kw: notes.append(message)
        box = app.query_one(HistoryInput)
        box.value = "x" * (MAX_QUESTION + 1)
        await pilot.press("enter")
        await pilot.pause()
        assert notes and "too long" in notes[0]
        assert not app.transcript.entries and box.value == "x" * (MAX_QUESTION + 1)  # kept
        await ask(pilot, "Who \x1b[31mis\x00 Tom 🎬?")
        assert app.transcript.entries[-1].result.question == "Who [31mis Tom 🎬?"


@pytest.mark.asyncio
async def test_paste_keeps_every_line(tiny):
    from textual import events
    app = ChatApp(tiny)
    async with app.run_test() as pilot:
        await loaded(pilot)
        box = app.query_one(HistoryInput)
        box.post_message(events.Paste("Who is\nTom Cruise?"))
        await pilot.pause()
        assert box.value == "Who is Tom Cruise?"


@pytest.mark.asyncio
async def test_up_and_down_walk_the_history(tiny):
    app = ChatApp(tiny)
    async with app.run_test() as pilot:
        await loaded(pilot)
        await ask(pilot, "first")
        await ask(pilot, "second")
        box = app.query_one(HistoryInput)
        box.value = "draft"
        await pilot.press("up")
        assert box.value == "second"
        await pilot.press("up", "up")
        assert box.value == "first"
        await pilot.press("down")
        assert box.value == "second"
        await pilot.press("down")
        assert box.value == "draft"


@pytest.mark.asyncio
async def test_escape_stops_a_reply(tiny_path, monkeypatch):
    # Slow the worker down so that Escape surely arrives mid-reply.
    real = streaming.Tick

    def slow_tick(*args, **kwargs):
        time.sleep(0.02)
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "Tick", slow_tick)
    app = ChatApp(tiny_path)
    async with app.run_test() as pilot:
        await loaded(pilot)
        app.query_one(HistoryInput).value = "Who is Tom Cruise?"
        await pilot.press("enter")
        await until(pilot, lambda: len(app.timeline.live) >= 3)
        # (pilot.press waits for the app to be idle, i.e. for the reply to end: post keys instead.)
        assert app.busy and app.query_one(HistoryInput).disabled  # locked while streaming
        app.simulate_key("ctrl+r")  # greyed out while streaming: nothing happens
        app.simulate_key("ctrl+d")
        app.simulate_key("escape")
        await until(pilot, lambda: app.transcript.entries and not app.busy)
        assert not app.query(Comparison) and not app.query(Divider)
        r = app.transcript.entries[0].result
        assert r.stopped and 0 < len(r.reply) < session_module.MAX_REPLY
        assert "(stopped)" in app.query_one(BotReply).content.plain
        # The state stayed consistent: the reply's newline was fed, as after a full reply.
        assert app.session.chars_seen == len("Who is Tom Cruise?") + 7 + len(r.reply) + 1


@pytest.mark.asyncio
async def test_ctrl_l_clears_the_screen_not_the_memory(tiny):
    app = ChatApp(tiny)
    async with app.run_test() as pilot:
        await loaded(pilot)
        await ask(pilot, "Who is Tom Cruise?")
        norms = app.session.norms()
        await pilot.press("ctrl+l")
        await pilot.pause()
        assert not app.query(BotReply) and app.session.norms() == norms


@pytest.mark.asyncio
async def test_f1_opens_and_closes_help(tiny):
    app = ChatApp(tiny)
    async with app.run_test() as pilot:
        await loaded(pilot)
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.asyncio
async def test_other_cells(tmp_path, tiny_tokenizer, cell, monkeypatch):
    monkeypatch.setattr(session_module, "MAX_REPLY", 40)
    path = save_tiny(tmp_path / f"{cell}.safetensors", tiny_tokenizer, cell=cell, layers=1)
    app = ChatApp(path)
    async with app.run_test() as pilot:
        await loaded(pilot)
        await ask(pilot, "Who is Tom Cruise?")
        chart, bars = app.query_one(NormChart), app.query_one(GateBars)
        if cell == "lstm":
            assert chart.is_lstm and len(chart.current_c) == 1 and chart.current_c[0] > 0
            assert set(bars.values[0]) == {"input", "forget", "output"}
            assert "‖c‖" in chart.render().plain
        else:
            assert bars.names == () and "no gates" in bars.render().plain


@pytest.mark.parametrize("size", [(80, 24), (200, 60), (60, 20)])
@pytest.mark.asyncio
async def test_layouts_and_resizing_mid_reply(tiny, size):
    app = ChatApp(tiny)
    async with app.run_test(size=size) as pilot:
        await loaded(pilot)
        panel, chat = app.query_one(StatePanel), app.query_one(ChatLog)
        assert panel.region.width > 0 and chat.region.width > 0 and chat.region.height > 0
        if size[0] < 70:  # stacked: the panel goes under the chat
            assert panel.region.y > chat.region.y
        else:
            assert panel.region.x > chat.region.x
        app.query_one(HistoryInput).value = "Who is Tom Cruise?"
        await pilot.press("enter")
        await pilot.resize_terminal(100, 30)
        await pilot.resize_terminal(*size)
        await until(pilot, lambda: app.transcript.entries and not app.busy)
        assert app.query_one(UnitHeatmap).render().plain.strip()


# -- threads ------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_the_worker_never_touches_widgets(tiny, monkeypatch):
    """Every widget change happens on the event-loop thread; the model runs on another one."""
    main = threading.get_ident()
    touched: set[int] = set()
    worker_threads: set[int] = set()

    def spy(cls, name):
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            touched.add(threading.get_ident())
            return original(self, *args, **kwargs)
        monkeypatch.setattr(cls, name, wrapper)

    for cls, name in [(Widget, "refresh"), (Widget, "mount"), (Widget, "remove"),
                      (Static, "update")]:
        spy(cls, name)
    real_run_turn = app_module.run_turn

    def recording_run_turn(*args, **kwargs):
        worker_threads.add(threading.get_ident())
        return real_run_turn(*args, **kwargs)
    monkeypatch.setattr(app_module, "run_turn", recording_run_turn)

    app = ChatApp(tiny)
    async with app.run_test() as pilot:
        await loaded(pilot)
        await ask(pilot, "Who is Tom Cruise?")
        await pilot.press("ctrl+d")
        await until(pilot, lambda: app.query(Comparison) and not app.busy)
    assert worker_threads and main not in worker_threads  # generation ran in a thread
    assert touched == {main}  # ...and no widget was touched from it


def test_streaming_module_knows_no_textual():
    """Review as a test: the code the worker runs cannot reach a widget, it never imports one."""
    tree = ast.parse(Path(streaming.__file__).read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("textual")]


def test_progress_messages_collapse_within_a_turn():
    a, b, c = ReplyProgress(1, ()), ReplyProgress(1, ()), ReplyProgress(2, ())
    assert a.can_replace(b)  # a newer snapshot of the same reply supersedes an older one
    assert not b.can_replace(c)  # never across turns
    assert not a.can_replace(ReplyFinished(1, None))  # and the end of a turn is never dropped


def test_run_turn_stops_and_keeps_the_state_consistent(tiny):
    """Stopping after one character still feeds the newline; the cosine compares turn ends."""
    session = ChatSession.load(tiny)
    seen = []
    r = streaming.run_turn(session, "Hi", on_progress=seen.append, should_stop=lambda: True)
    assert r.stopped and len(r.reply) == 1 and len(seen) == 1
    assert session.chars_seen == len("Hi") + 7 + 1 + 1  # prompt, one character, the newline
    full = ChatSession.load(tiny)
    r2 = streaming.run_turn(full, "Hi", previous_end=r.end_state)
    assert r2.cosine is not None and -1.0 <= r2.cosine <= 1.0
    assert r2.norms_in == (0.0, 0.0) and r2.reply == ChatSession.load(tiny).ask("Hi")


def test_timeline_columns_keep_boundaries():
    t = Timeline()
    tick = lambda v: streaming.Tick("x", (v,), (), (), torch.zeros(2))  # noqa: E731
    t.begin_turn(carried=True)
    t.set_live(tuple(tick(float(i)) for i in range(100)))
    t.begin_turn(carried=True)
    t.set_live(tuple(tick(1.0) for _ in range(50)))
    t.commit()
    t.mark_reset()
    cols = columns(t.recent(), 20, lambda x: x.norms[0])
    assert len(cols) == 20
    assert [c.kind for c in cols if isinstance(c, Boundary)] == ["turn", "reset"]
    assert isinstance(cols[-1], Boundary)


# -- snapshots ----------------------------------------------------------------------------------
async def _tom_cruise_dialogue(pilot) -> None:
    await loaded(pilot)
    pilot.app.query_one(HistoryInput).cursor_blink = False
    await ask(pilot, "Who is Tom Cruise?")
    await ask(pilot, "Where does he live?")


@pytest.mark.parametrize("size", [(80, 24), (160, 45)], ids=["80x24", "160x45"])
def test_snapshot_main_screen(snap_compare, shipped, size):
    """The main screen after the seed's first two turns, at the smallest supported size and a
    large one. Regenerate after a change to the UI or to the shipped checkpoint (see the top)."""
    assert snap_compare(ChatApp(shipped), terminal_size=size, run_before=_tom_cruise_dialogue)
