"""README's screenshot of the terminal UI, taken without a terminal.

    python -m contextbot.ui.screenshot docs/ui.svg            # what `make figures` runs
    python -m contextbot.ui.screenshot OUT.svg --checkpoint my/model.safetensors

`ChatApp` runs headless under Textual's `App.run_test`, in a virtual terminal of `SIZE` columns
and rows. The script then does what a user would: it waits for the model to load, types each
question into the box, presses enter, and waits until the reply has finished streaming before the
next one. When the last reply is done, `App.export_screenshot` renders the screen as SVG text:
the chat on the left, the state panel on the right, exactly as they were drawn.

The default questions are the seed's dialogue, so the picture shows the carried state doing its
job: "Where does he live?" is answered about Tom Cruise and "Where does she live?" about Megan Fox.
Greedy replies make the text the same on every run; the SVG is written atomically.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import ContextbotError
from ..files import write_atomic

#: The seed's dialogue: two people, and a pronoun question about each.
SEED_QUESTIONS = ("Who is Tom Cruise?", "Where does he live?",
                  "Who is Megan Fox?", "Where does she live?")
#: Columns and rows of the virtual terminal: wide enough for the chat and the whole state panel.
SIZE = (120, 36)


async def _until(pilot, condition: Callable[[], bool], timeout: float) -> None:
    """Let the app run until `condition()` holds; a ContextbotError if it takes over `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not pilot.app.is_running:
            raise ContextbotError("the chat app stopped before the screenshot was taken")
        if time.monotonic() > deadline:
            raise ContextbotError(f"the chat app did not answer within {timeout:g} s")
        await pilot.pause(0.02)


async def screenshot(checkpoint: str | Path | None = None,
                     questions: Sequence[str] = SEED_QUESTIONS,
                     size: tuple[int, int] = SIZE, timeout: float = 120.0) -> str:
    """Ask `questions` in a headless `ChatApp` and return the final screen as SVG text.

    `checkpoint` is a path, or None for the default ($CONTEXTBOT_CHECKPOINT, else the shipped
    GRU). `timeout` bounds each wait (loading, and each reply). A checkpoint that fails to load
    is a ContextbotError with the app's own message.
    """
    from .app import ChatApp  # Textual and the model code load only when a screenshot is taken
    from .history_input import HistoryInput

    app = ChatApp(checkpoint)
    async with app.run_test(size=size) as pilot:
        await _until(pilot, lambda: app.session is not None or app.load_error is not None, timeout)
        if app.load_error is not None:
            raise ContextbotError(app.load_error)
        box = app.query_one(HistoryInput)
        box.cursor_blink = False  # a blinking cursor would be on or off at random in the picture
        for question in questions:
            done = len(app.transcript.entries)
            box.value = question
            app.simulate_key("enter")  # as a user would; pilot.press would also wait for idle
            # The turn is done once the transcript holds it and the input is unlocked again.
            await _until(pilot, lambda: len(app.transcript.entries) > done and not app.busy,
                         timeout)
        await pilot.pause()
        return app.export_screenshot()


def save(out: str | Path, checkpoint: str | Path | None = None,
         questions: Sequence[str] = SEED_QUESTIONS, size: tuple[int, int] = SIZE) -> Path:
    """Take the screenshot and write it to `out`; returns the path."""
    out = Path(out)
    svg = asyncio.run(screenshot(checkpoint, questions, size))
    write_atomic(out, svg.encode("utf-8"))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m contextbot.ui.screenshot",
                                description="Write an SVG screenshot of `contextbot chat` after "
                                            "the seed dialogue.")
    p.add_argument("out", metavar="OUT.svg", help="the SVG file to write")
    p.add_argument("--checkpoint", help="checkpoint (default: $CONTEXTBOT_CHECKPOINT or "
                                        "checkpoints/gru.safetensors)")
    args = p.parse_args(argv)
    try:
        path = save(args.out, args.checkpoint)
    except ContextbotError as exc:
        print(f"contextbot: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
