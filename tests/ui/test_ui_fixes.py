"""Things a user of `contextbot chat` tripped on, each pinned by a test.

- without a terminal (stdin, stdout or stderr not a TTY) the UI waited forever: now one line;
- `--checkpoint` naming a directory, a device or a pipe is refused before the UI opens;
- ctrl+s says where it saved, with the full path, and .gitignore covers such files;
- F1's help fits 80×24 whole;
- ctrl+d is greyed out after ctrl+r (the memory that gave the last answer is gone);
- the norm charts' range includes the current value printed beside it (‖h‖ and an LSTM's ‖c‖).
"""

from __future__ import annotations

import fnmatch
import builtins
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from textual.containers import VerticalScroll
from textual.widgets import Footer

from contextbot import chat as session_module
from contextbot.cli import main
from contextbot.ui import app as app_module
from contextbot.ui.app import ChatApp
from contextbot.ui.conversation import ChatLog, Comparison
from contextbot.ui.help import HELP, MAX_LINES, MAX_WIDTH, NO_MEMORY_HELP, HelpScreen, help_text
from contextbot.ui.panel import NormChart, range_label
from contextbot.ui.streaming import Tick
from contextbot.ui.timeline import Boundary

from .conftest import ask, loaded, save_tiny, until

ROOT = Path(__file__).resolve().parents[2]


class FakeStream:
    """A stand-in for sys.stdin/stdout/stderr that answers isatty() as told."""

    def __init__(self, tty: bool, real):
        self._tty, self._real = tty, real

    def isatty(self) -> bool:
        return self._tty

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def no_ui(monkeypatch):
    """Fail the test if the UI would open."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("the UI opened")
    monkeypatch.setattr(app_module.ChatApp, "run", refuse)


def terminals(monkeypatch, **tty: bool) -> None:
    """Make sys.stdin/stdout/stderr terminals or not (all terminals unless told)."""
    for name in ("stdin", "stdout", "stderr"):
        monkeypatch.setattr(sys, name, FakeStream(tty.get(name, True), getattr(sys, name)))


def one_line_error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("contextbot: error: ") and len(err.strip().splitlines()) == 1, err
    return err


# -- no terminal -------------------------------------------------------------------------------------
@pytest.mark.parametrize("missing", ["stdin", "stdout", "stderr"])
def test_chat_without_a_terminal_says_so(tiny_path, capsys, monkeypatch, no_ui, missing):
    terminals(monkeypatch, **{missing: False})
    err = one_line_error(capsys, ["chat", "--checkpoint", str(tiny_path)])
    assert "chat needs a terminal; use 'contextbot ask'" in err


def test_chat_without_a_terminal_does_not_hang(tiny_path):
    """The real thing: stdin from /dev/null, output to pipes. It used to wait forever."""
    r = subprocess.run([sys.executable, "-m", "contextbot", "chat", "--checkpoint", str(tiny_path)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 2 and not r.stdout
    assert r.stderr == "contextbot: error: chat needs a terminal; use 'contextbot ask'\n"


# -- --checkpoint that is not a file -------------------------------------------------------------------
def test_chat_refuses_a_checkpoint_that_is_not_a_regular_file(tmp_path, capsys, monkeypatch, no_ui):
    terminals(monkeypatch)  # even at a terminal: refused before the UI opens
    assert "is a directory" in one_line_error(capsys, ["chat", "--checkpoint", str(tmp_path)])
    link = tmp_path / "link.safetensors"
    link.symlink_to(tmp_path, target_is_directory=True)
    assert "is a directory" in one_line_error(capsys, ["chat", "--checkpoint", str(link)])
    assert "not a regular file" in one_line_error(capsys, ["chat", "--checkpoint", os.devnull])
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)  # opening it to read would block until a writer came
    assert "not a regular file" in one_line_error(capsys, ["chat", "--checkpoint", str(fifo)])
    assert "no such checkpoint" in one_line_error(capsys, ["chat", "--checkpoint",
                                                          str(tmp_path / "nope" / "m.safetensors")])
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "no such checkpoint" in one_line_error(capsys, ["chat", "--checkpoint",
                                                          str(blocker / "m.safetensors")])


def test_chat_refuses_an_unreadable_checkpoint(tiny_path, tmp_path, capsys, monkeypatch, no_ui):
    """A file the user may not read. Simulated, since the tests may run as root, who reads any
    file: opening that one path fails as it would for a user without the permission."""
    terminals(monkeypatch)
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(tiny_path.read_bytes())
    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    assert "cannot read (Permission denied)" in one_line_error(capsys, ["chat", "--checkpoint", str(locked)])


def test_chat_opens_the_ui_for_a_good_checkpoint_at_a_terminal(tiny_path, monkeypatch):
    terminals(monkeypatch)
    opened = []
    monkeypatch.setattr(app_module.ChatApp, "run", lambda self: opened.append(self.checkpoint_path))
    assert main(["chat", "--checkpoint", str(tiny_path)]) == 0
    assert opened == [tiny_path]


# -- ctrl+s ------------------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_ctrl_s_says_where_it_saved_with_the_full_path(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = ChatApp(tiny)
    notes = []
    async with app.run_test() as pilot:
        await loaded(pilot)
        app.notify = lambda message, **kw: notes.append(message)
        await ask(pilot, "Who is Tom Cruise?")
        for _ in range(2):  # twice in the same second: two files, each named in full
            await pilot.press("ctrl+s")
            await pilot.pause()
            path = app.last_saved
            assert path.is_absolute() and path.parent == tmp_path and path.exists()
            assert str(path) in notes[-1] and "1 turn " in notes[-1]
            hints = [s.content.plain for s in app.query_one(ChatLog).query(".hint")]
            assert str(path) in hints[-1]  # in the log too, where it stays in view
        assert len(set(tmp_path.glob("contextbot-chat-*.json"))) == 2


def test_saved_transcripts_are_ignored_by_git():
    patterns = [ln.strip() for ln in (ROOT / ".gitignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for name in ("contextbot-chat-20250101-120000.json", "contextbot-chat-20250101-120000-2.json"):
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name


# -- F1 ----------------------------------------------------------------------------------------------
def test_the_help_text_is_small_enough_to_fit():
    from rich.text import Text
    for page in (HELP, NO_MEMORY_HELP):  # with the Memory section, and without (no head)
        lines = Text.from_markup(page).plain.splitlines()
        assert len(lines) <= MAX_LINES and max(len(ln) for ln in lines) <= MAX_WIDTH


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
@pytest.mark.asyncio
async def test_f1_help_fits_the_screen_without_scrolling(tiny, size):
    from rich.text import Text
    app = ChatApp(tiny)
    async with app.run_test(size=size) as pilot:
        await loaded(pilot)
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        box = app.screen.query_one(VerticalScroll)
        assert box.max_scroll_y == 0 and box.max_scroll_x == 0  # nothing hidden below or right
        assert box.region.height <= size[1] and box.region.width <= size[0]
        screen = "\n".join(strip.text for strip in app.screen._compositor.render_strips())
        page = help_text(memory=app.readout is not None)  # (test_memory.py: with a head)
        for line in Text.from_markup(page).plain.splitlines():
            assert line.rstrip() in screen, line  # every line of the help, on screen at once
        assert "contextbot: a chat with a visible memory" in screen  # the title, in the border
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, HelpScreen)


# -- ctrl+d after ctrl+r -------------------------------------------------------------------------------
def compare_greyed(app) -> bool:
    """Whether the footer draws ctrl+d greyed out (FooterKey's -disabled class)."""
    key = next(k for k in app.screen.query_one(Footer).query("FooterKey") if k.action == "compare")
    return key.has_class("-disabled")


@pytest.mark.asyncio
async def test_ctrl_d_is_greyed_after_ctrl_r_until_the_next_question(tiny):
    app = ChatApp(tiny)
    async with app.run_test(size=(120, 30)) as pilot:
        await loaded(pilot)
        assert app.check_action("compare", ()) is None and compare_greyed(app)  # nothing asked
        await ask(pilot, "Who is Tom Cruise?")
        await pilot.pause()
        assert app.check_action("compare", ()) is True and not compare_greyed(app)
        await pilot.press("ctrl+r")
        await pilot.pause()
        await pilot.pause()
        assert app.check_action("compare", ()) is None  # the memory that answered is gone...
        assert compare_greyed(app)  # ...and the footer shows it greyed, at once
        await pilot.press("ctrl+d")
        await pilot.pause()
        assert not app.query(Comparison) and not app.busy  # nothing happens
        app.action_compare()  # not even when called directly
        await pilot.pause()
        assert not app.query(Comparison) and not app.busy
        await ask(pilot, "Where does he live?")
        await pilot.pause()
        assert app.check_action("compare", ()) is True and not compare_greyed(app)
        await pilot.press("ctrl+d")
        await until(pilot, lambda: app.query(Comparison) and not app.busy)
        assert app.query_one(Comparison).question == "Where does he live?"


# -- the norm chart's range ------------------------------------------------------------------------------
RANGE = re.compile(r"‖([hc])‖ L(\d) (\d+\.\d+) · range (\d+\.\d+)–(\d+\.\d+)")


def ranges(chart: NormChart) -> list[tuple[str, float, float, float]]:
    found = RANGE.findall(chart.render().plain)
    return [(kind + layer, float(now), float(lo), float(hi)) for kind, layer, now, lo, hi in found]


def test_the_range_includes_the_current_value_however_far_off():
    tick = lambda h, c: Tick("x", (h,), (c,), (), torch.zeros(2))  # noqa: E731
    chart = NormChart()
    chart.n_layers, chart.is_lstm = 1, True
    items = [Boundary("turn")] + [tick(1.0 + i / 100, 2.0 + i / 100) for i in range(50)]
    for now_h, now_c in [(5.0, 9.0), (0.0, 0.5), (1.25, 2.255), (1.26, 2.31)]:
        chart.show(items, (now_h,), (now_c,))
        found = ranges(chart)
        assert [k for k, *_ in found] == ["h1", "c1"]
        for kind, now, lo, hi in found:
            assert lo <= now <= hi, (kind, now, lo, hi)


def test_range_label_rounds_outwards():
    assert range_label(1.26, 1.34) == "1.2–1.4"
    assert range_label(1.2, 1.3) == "1.2–1.3"
    assert range_label(0.04, 0.06) == "0.0–0.1"


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.asyncio
async def test_the_panel_range_includes_the_current_norm(tmp_path, tiny_tokenizer, monkeypatch, cell):
    """Between replies the current ‖h‖ and ‖c‖ are the state's after the reply's newline, which no
    column of the chart holds; the printed range includes them all the same."""
    monkeypatch.setattr(session_module, "MAX_REPLY", 40)
    app = ChatApp(save_tiny(tmp_path / f"{cell}.safetensors", tiny_tokenizer, cell=cell, layers=2))
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        for question in ("Who is Tom Cruise?", "Where does he live?", "Hi"):
            await ask(pilot, question)
            found = ranges(app.query_one(NormChart))
            assert len(found) == (4 if cell == "lstm" else 2)
            for kind, now, lo, hi in found:
                assert lo <= now <= hi, (question, kind, now, lo, hi)
        await pilot.press("ctrl+r")  # zeroed: the current value is 0, far below the chart
        await pilot.pause()
        for kind, now, lo, hi in ranges(app.query_one(NormChart)):
            assert now == 0.0 and lo == 0.0, (kind, now, lo, hi)
