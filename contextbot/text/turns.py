"""The turn: how one chat turn is written (in the corpus, in training, in chat) and how it is driven.

Everything that builds, parses or feeds a turn uses this module, so the format is written once:

    Q: Who is Tom Cruise?
    A: He is an American actor.

A conversation is turns one after another; in a corpus file a blank line separates
conversations. Training reads whole conversations in this format, so in chat a turn is the same
text, fed and generated on top of the carried state (`drive`):

1. feed the *prompt*, `Q: {question}\\nA: ` (`prompt`);
2. generate the reply one token at a time, each fed back in, until a line-end token (not fed) or
   `MAX_REPLY` tokens;
3. feed the newline (`END`) that closes the reply's line, even if the reader of the reply stopped
   early: the bot's own reply becomes part of what the state remembers, exactly as it was in
   training, and the next turn starts at the beginning of a line.

`drive` is that protocol, written once for any way of running the model: it takes a `feed` and a
`pick` callable and never touches a tensor (this package does not import torch). The readable
paths use it: `ChatSession` (a sampled turn, and the replay of a greedy one), and `contextbot
inspect`'s trace (`analysis/trace.py`). Two fast paths run the same protocol in their own loops:
`Stepper.answer` (a greedy turn in one compiled call) and `BatchSession` (many conversations at
once, for the evaluation); tests/model/test_stepper.py and tests/analysis/test_evaluate.py hold
them to it, and tests/test_chat.py holds `drive` to `ChatSession`. Training (train/batches.py) and
the probe (analysis/probe.py) feed a turn with its right answer in place of a generated one: the
same tokens, encoded by `turn_ids`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

QUESTION = "Q: "  # a question line starts with this
ANSWER = "A: "  # an answer line starts with this
END = "\n"  # a line ends with this; generating it ends the reply

MAX_REPLY = 300  # tokens; a reply stops here even without a line end

# What `drive` tells `feed` it is feeding: the prompt, one token of the reply, the closing newline.
PROMPT_PART, REPLY_PART, END_PART = "question", "reply", "end"


def prompt(question: str) -> str:
    """What a turn feeds before the reply: `Q: {question}\\nA: `."""
    return f"{QUESTION}{question}{END}{ANSWER}"


def reply(answer: str) -> str:
    """What a turn's reply adds to the conversation: the answer and its line end."""
    return f"{answer}{END}"


def turn(question: str, answer: str) -> str:
    """A whole turn as the corpus writes it: prompt, then reply."""
    return prompt(question) + reply(answer)


def conversation(turns) -> str:
    """A conversation of (question, answer) pairs in the corpus format."""
    return "".join(turn(q, a) for q, a in turns)


#: Characters a turn feeds besides the question: `Q: `, the newline and `A: `.
PROMPT_EXTRA = len(prompt(""))
#: The end of the prompt after the question: the state at its last character makes the answer.
PROMPT_TAIL = END + ANSWER
#: Characters a whole turn (prompt and reply) has besides its question and answer.
TURN_EXTRA = len(turn("", ""))


def parse_line(line: str) -> tuple[str, str] | None:
    """("Q", question) or ("A", answer) for a corpus line (without its line end); None for any
    other line."""
    if line.startswith(QUESTION):
        return "Q", line[len(QUESTION):]
    if line.startswith(ANSWER):
        return "A", line[len(ANSWER):]
    return None


# -- tokens ---------------------------------------------------------------------------------------
def turn_ids(tok, question: str, answer: str) -> tuple[list[int], list[int]]:
    """A turn as token ids, encoded as chat feeds and generates it: (the prompt's, the reply's).

    The two halves are encoded separately, not as one string: a tokenizer with multi-character
    pieces could otherwise join the prompt's `A: ` and the answer's first characters into pieces
    that chat, which feeds the prompt and then generates, never sees."""
    return tok.encode(prompt(question)), tok.encode(reply(answer))


# -- driving a turn -------------------------------------------------------------------------------
def drive(tok, question: str, feed: Callable[[Sequence[int], str], Any],
          pick: Callable[[Any], int], limit: int) -> Iterator[tuple[int | None, str]]:
    """One turn by the protocol (the module's docstring), for any way of running the model.

    `feed(tokens, part)` runs the model over `tokens` on top of the state its owner keeps and
    returns the logits after the last one (whatever `pick` reads); `part` says what they are:
    PROMPT_PART (the whole prompt, in one call), REPLY_PART (one generated token) or END_PART
    (the newline that closes the turn; its logits are not read). `pick(logits)` chooses the next
    token: an argmax for a greedy turn, a draw for a sampled one.

    Yields (token, text) for each token of the reply once it has been fed, `text` being what it
    adds to the reply (empty while a character spelled in several byte tokens is incomplete);
    then, if the reply ended in an incomplete character, (None, its replacement text). The
    newline is fed when the iteration ends, however it ends: a reader that stops early (a UI's
    Escape; `close()`) leaves the state after what it was shown plus the newline. `question`
    must be cleaned already (`chat.clean_question`).
    """
    logits = feed(tok.encode(prompt(question)), PROMPT_PART)
    decoder = tok.decoder()
    try:
        for _ in range(limit):
            token = pick(logits)
            if token in tok.line_end_ids:
                break
            logits = feed([token], REPLY_PART)
            yield token, decoder.push(token)
        rest = decoder.flush()
        if rest:
            yield None, rest
    finally:
        feed([tok.newline_id], END_PART)
