"""README's screenshot (`python -m contextbot.ui.screenshot`, run by `make figures`)."""

from __future__ import annotations

import html

import pytest

from contextbot.ui import screenshot

from ..conftest import SHIPPED_GRU


def screen_text(svg: str) -> str:
    """The SVG's text as plain characters: Rich writes each space as &#160; (a no-break space)."""
    return html.unescape(svg).replace("\xa0", " ")


@pytest.mark.shipped
def test_screenshot_shows_the_carried_answer(tmp_path):
    """The first two seed turns at the smallest supported terminal: the follow-up question is
    answered about Tom Cruise, and the picture shows it."""
    if not SHIPPED_GRU.exists():
        pytest.fail(f"the shipped checkpoint {SHIPPED_GRU} is missing")
    out = screenshot.save(tmp_path / "ui.svg", SHIPPED_GRU, screenshot.SEED_QUESTIONS[:2],
                          size=(80, 24))
    svg = out.read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<svg")
    text = screen_text(svg)
    assert "Where does he live?" in text and "Beverly Hills" in text
