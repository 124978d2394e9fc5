"""The turn format: how one chat turn is written, in the corpus, in training and in chat.

Everything that builds, parses or feeds a turn uses this module, so the format is written once:

    Q: Who is Tom Cruise?
    A: He is an American actor.

A conversation is turns one after another; in a corpus file a blank line separates
conversations. In chat a turn feeds the *prompt*, `Q: {question}\\nA: `, on top of the carried
state, generates the reply one token at a time until the end of the line, and then feeds that
newline too: the bot's own reply becomes part of what the state remembers, exactly as it was in
training, where the model read whole conversations in this format.
"""

from __future__ import annotations

QUESTION = "Q: "  # a question line starts with this
ANSWER = "A: "  # an answer line starts with this
END = "\n"  # a line ends with this; generating it ends the reply


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


def parse_line(line: str) -> tuple[str, str] | None:
    """("Q", question) or ("A", answer) for a corpus line; None for any other line."""
    if line.startswith(QUESTION):
        return "Q", line[len(QUESTION):]
    if line.startswith(ANSWER):
        return "A", line[len(ANSWER):]
    return None
