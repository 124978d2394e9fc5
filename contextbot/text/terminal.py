"""Text between a terminal and the model, made safe in both directions. No PyTorch.

- `clean_question` (and `typed`): what a person typed or pasted, before the model reads it;
- `visible`: what the model (or a file from a stranger) says, before a person sees it;
- `console_for`: a rich Console for printing tables that cuts nothing when output is piped.

Every place that shows model text to a person goes through `visible`: `contextbot ask`, `eval`,
`inspect`, and every widget of the terminal UI. Any model can spell any byte (the tokenizer's byte
fallback), so a checkpoint from a stranger could otherwise reply with escape sequences that
retitle, clear or reprogram the terminal, write to the clipboard (OSC 52), with bidi controls
that reorder the text around them, or with a newline spelled as a byte that breaks `contextbot
ask`'s one reply a line.
"""

from __future__ import annotations

import os
import sys
import unicodedata

from rich.console import Console

MAX_QUESTION = 1000  # characters; longer input is refused

#: What `visible` shows in place of a character that must not reach a terminal.
REPLACEMENT = "\ufffd"

#: Categories `visible` replaces: controls (C0, DEL and C1: U+009B is CSI, U+009D OSC on some
#: terminals), format characters (bidi overrides and isolates, zero-width marks, the BOM, soft
#: hyphen: they reorder or hide text), lone surrogates (no terminal encoding can carry them), and
#: the line and paragraph separators (U+2028, U+2029: a line break to some readers).
UNSAFE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def typed(text: str) -> str:
    """What a person typed or pasted, as it may be shown and edited: newlines and tabs become
    spaces, and control and format characters (escape sequences, bidi marks, NUL, lone
    surrogates: every category C) are dropped. The question box applies it to a paste."""
    text = "".join(" " if ch in "\t\n\r\v\f" else ch for ch in text)
    return "".join(ch for ch in text if not unicodedata.category(ch).startswith("C"))


def clean_question(text: str) -> str:
    """Drop control and format characters (escape sequences, bidi marks, NUL); newlines and tabs
    become spaces (`typed`), and the ends are stripped. Raise ValueError if what is left is too
    long."""
    if not isinstance(text, str):
        raise ValueError("a question must be a string")
    text = typed(text).strip()
    if len(text) > MAX_QUESTION:
        raise ValueError(f"question is too long ({len(text)} characters; at most {MAX_QUESTION})")
    return text


def visible(text: str) -> str:
    """The bot's text made safe to show: every character that could act on a terminal, reorder
    or hide text becomes U+FFFD (�); tab is kept, everything else is shown as it is.

    One character in, one character out, so the result lines up with the text it came from, and
    what was replaced stays in sight rather than vanishing. Replaced: control characters (C0 but
    tab, DEL, C1), format characters (category Cf: bidi overrides and isolates, zero-width marks,
    the BOM), lone surrogates (category Cs, from undecodable bytes), and the line and paragraph
    separators. Private-use and unassigned code points, emoji and combining marks are kept: they
    draw as glyphs (or boxes) and cannot move the cursor. (A zero-width joiner is a format
    character too, so an emoji sequence joined by one shows the joins as �.) Idempotent.

    The counterpart of `clean_question`, for output. The session returns the reply exactly as
    generated (its text is what the state was fed); whoever shows it to a person passes it
    through here, and a file written for programs (JSON) may keep the exact text.
    """
    return "".join(REPLACEMENT if ch != "\t" and unicodedata.category(ch) in UNSAFE else ch
                   for ch in text)


WIDE = 100_000  # columns of a console that is not a terminal: a table as wide as its content


def console_for(stderr: bool = False) -> Console:
    """A rich Console that cuts nothing when it is not a terminal.

    Rich lays tables out to the terminal's width, and to 80 columns when output goes to a file or
    a pipe, where it would fold and cut the replies. There, unless $COLUMNS says otherwise, the
    console is wide: each table is as wide as its content and each line of text stays one line.
    """
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one
        terminal = False
    wide = not terminal and not os.environ.get("COLUMNS", "").strip().isdigit()
    return Console(stderr=stderr, width=WIDE if wide else None)
