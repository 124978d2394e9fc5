"""`visible` and `clean_question` (contextbot/text/terminal.py): the text a terminal gets, both ways.

`visible` is the one function every place that shows model text goes through; these tests pin
what it does with each class of character: controls (C0, DEL, C1), format characters (bidi
overrides and isolates, zero-width marks, tag characters), lone surrogates and the line and
paragraph separators are replaced by U+FFFD one for one; everything else is kept.
"""

from __future__ import annotations

import subprocess
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contextbot import chat
from contextbot.text import terminal
from contextbot.text.terminal import MAX_QUESTION, REPLACEMENT, clean_question, visible

C0 = [chr(c) for c in range(0x20) if c != 0x09] + ["\x7f"]
C1 = [chr(c) for c in range(0x80, 0xA0)]  # U+009B is CSI, U+009D OSC on some terminals
BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e",  # embeddings and overrides
        "\u2066", "\u2067", "\u2068", "\u2069",  # isolates
        "\u200e", "\u200f", "\u061c"]  # marks
HIDDEN = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\U000e0041", "\U000e007f"]
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff", "\udcff"]
SEPARATORS = ["\u2028", "\u2029"]
UNSAFE = C0 + C1 + BIDI + HIDDEN + SURROGATES + SEPARATORS

KEPT = ["a", "Z", " ", "\t", "é", "e\u0301", "ß", "中文", "😀", "👍🏽", "\ue000", "\U0010fffd",
        "‖h‖", "│▌█", "…", "“quoted”", "[b]not markup[/b]", "\ufffd"]

ATTACKS = {  # what a checkpoint could reply, and what the terminal must get instead
    "\x1b]0;PWNED\x07": "\ufffd]0;PWNED\ufffd",  # OSC 0: the window title
    "\x1b]2;PWNED\x1b\\": "\ufffd]2;PWNED\ufffd\\",  # OSC 2, ended by ST
    "\x1b]52;c;UFdORUQ=\x07": "\ufffd]52;c;UFdORUQ=\ufffd",  # OSC 52: the clipboard
    "\x1b[2J\x1b[H": "\ufffd[2J\ufffd[H",  # CSI: clear the screen
    "\x1b[31mred\x1b[0m": "\ufffd[31mred\ufffd[0m",  # CSI: colour
    "\x9b2J": "\ufffd2J",  # C1 CSI
    "\x9d0;PWNED\x9c": "\ufffd0;PWNED\ufffd",  # C1 OSC ... ST
    "abc\u202edef": "abc\ufffddef",  # right-to-left override
    "x\u2067y\u2069z": "x\ufffdy\ufffdz",  # isolates
    "pay\u200bpal": "pay\ufffdpal",  # zero width space
    "one\ntwo\r\nthree": "one\ufffdtwo\ufffd\ufffdthree",  # one reply, one line
    "one\u2028two\u2029three\x85four": "one\ufffdtwo\ufffdthree\ufffdfour",
}


def is_unsafe(ch: str) -> bool:
    return ch != "\t" and unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Zl", "Zp"}


@pytest.mark.parametrize("ch", UNSAFE, ids=lambda c: f"U+{ord(c):04X}")
def test_every_unsafe_class_becomes_the_replacement_character(ch):
    assert visible(ch) == REPLACEMENT
    assert visible(f"a{ch}b") == f"a{REPLACEMENT}b"


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_text_is_kept(text):
    assert visible(text) == text


@pytest.mark.parametrize("attack", ATTACKS)
def test_escape_sequences_are_shown_not_obeyed(attack):
    assert visible(attack) == ATTACKS[attack]


def test_every_c1_control_and_every_format_character_is_replaced():
    """The whole classes, not a list of examples: all of U+0080-U+009F, and every code point
    Unicode puts in category Cf."""
    assert all(visible(chr(c)) == REPLACEMENT for c in range(0x80, 0xA0))
    cf = [chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) == "Cf"]
    assert len(cf) > 100 and visible("".join(cf)) == REPLACEMENT * len(cf)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec=None), max_size=200))
def test_visible_is_safe_one_for_one_and_idempotent(text):
    shown = visible(text)
    assert len(shown) == len(text)  # one character in, one out: positions line up
    assert not [ch for ch in shown if is_unsafe(ch)]
    assert all(s == t or (s == REPLACEMENT and is_unsafe(t)) for s, t in zip(shown, text))
    assert visible(shown) == shown
    shown.encode("utf-8")  # no lone surrogate left: any UTF-8 terminal can take it


def test_the_names_stay_public_in_chat():
    assert chat.visible is visible and chat.clean_question is clean_question
    assert chat.MAX_QUESTION == MAX_QUESTION == terminal.MAX_QUESTION


def test_clean_question_drops_controls_and_refuses_long_input():
    assert clean_question("Who\x1b[31m is\u202e Tom\x00?\n") == "Who[31m is Tom?"
    assert clean_question("\x9b2JWho\u200b is\tTom?") == "2JWho is Tom?"
    assert clean_question("  \x1b \u2066 ") == ""
    with pytest.raises(ValueError, match="too long"):
        clean_question("x" * (MAX_QUESTION + 1))
    with pytest.raises(ValueError, match="must be a string"):
        clean_question(b"bytes")  # type: ignore[arg-type]


def test_the_terminal_module_loads_no_torch():
    code = ("import sys, contextbot.text.terminal; "
            "print(sorted(m for m in ('torch', 'numpy', 'numba') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(codec=None), max_size=200))
def test_typed_keeps_no_control_or_format_character(text):
    kept = terminal.typed(text)
    assert not [ch for ch in kept if unicodedata.category(ch).startswith("C")]
    assert terminal.typed(kept) == kept
    if len(kept.strip()) <= MAX_QUESTION:
        assert clean_question(text) == kept.strip()
