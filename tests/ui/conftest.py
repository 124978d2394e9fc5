"""Builders and Pilot helpers shared by the UI tests: a tiny checkpoint, and `until`, `loaded`,
`ask`, which drive the app as a user would and wait for it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from contextbot import chat as session_module
from contextbot.model import checkpoint as ckpt_io
from contextbot.ui.history_input import HistoryInput

from ..conftest import make_model


def save_tiny(path: Path, tok, cell: str = "gru", layers: int = 2) -> Path:
    """A tiny untrained model saved like a real checkpoint."""
    ckpt_io.save(path, make_model(tok, cell, layers=layers), tok, step=7)
    return path


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", tiny_tokenizer)


@pytest.fixture
def tiny(tiny_path, monkeypatch) -> Path:
    """The tiny checkpoint, with replies cut at 40 characters (an untrained model rarely stops)."""
    monkeypatch.setattr(session_module, "MAX_REPLY", 40)
    return tiny_path


async def until(pilot, condition, timeout: float = 60.0) -> None:
    """Let the app run until `condition()` holds (workers finish, messages get handled)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if not pilot.app.is_running:
            raise AssertionError("the app stopped")
        if time.monotonic() > deadline:
            app = pilot.app
            raise AssertionError(f"timed out waiting for the app: busy={app.busy} turn={app.turn} "
                                 f"entries={len(app.transcript.entries)} live={len(app.timeline.live)} "
                                 f"workers={[(w.name, w.state) for w in app.workers]}")
        await pilot.pause(0.02)


async def loaded(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: app.session is not None or app.load_error is not None)
    await pilot.pause()


async def ask(pilot, text: str) -> str:
    """Submit a question as a user would (enter in the box) and wait for the whole reply."""
    app = pilot.app
    n = len(app.transcript.entries)
    app.query_one(HistoryInput).value = text
    app.simulate_key("enter")  # like pilot.press, without waiting for the app to fall idle
    await until(pilot, lambda: len(app.transcript.entries) > n and not app.busy)
    await pilot.pause()
    return app.transcript.entries[-1].result.reply
