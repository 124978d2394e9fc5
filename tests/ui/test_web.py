"""`contextbot chat --web`, for real: the command as a subprocess, a headless Chromium on its page.

The browser test needs /usr/bin/chromium, /usr/bin/chromedriver and selenium (`make browser`
installs them; `make test-all` runs it first) and skips, saying which is missing, without them.
The page draws the terminal on a canvas, so the text is read from xterm.js's buffer
(contextbot/ui/webshot.py, `Page`); the keys go to xterm.js's own input, as a person's would.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from contextbot.ui import web, webshot


@pytest.mark.slow
@pytest.mark.shipped
def test_a_browser_chats_through_the_web_server_and_sees_the_memory():
    if (why := webshot.browser_missing()) is not None:
        pytest.skip(f"no browser to drive: {why}")
    start = time.monotonic()
    port = webshot.free_port()
    with webshot.Served(port) as served:  # stdin /dev/null, stdout a pipe: no terminal at all
        assert served.url == f"http://localhost:{port}"

        # The page asks for nothing beyond this server (no CDN, no web font service).
        page_html = urllib.request.urlopen(served.url, timeout=10).read().decode()
        assert not re.findall(r"(?:src|href)=\"https?://", page_html)
        assert "fonts.googleapis" not in page_html

        with webshot.Page(served.url) as page:
            page.wait_for("memory: carried", 120)  # the status line, once the model has loaded
            page.ask("Who is Tom Cruise?")
            screen = page.ask("Where does he live?")
            resources = page.driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)")
        assert "He is an American actor." in screen
        assert "He lives in Beverly Hills." in screen, screen
        # The panel beside it: the memory readout names the referent the state carries, and
        # the carryover table has a row for the second turn, which started from a carried state.
        assert "he → Tom Cruise" in screen, screen
        assert "Carryover into each turn" in screen
        assert re.search(r"^\s*2\s+\d+\.\d\d\s", _panel(screen), re.M), screen
        assert all(r.startswith(served.url + "/") for r in resources), resources

        rc, out = served.stop()  # SIGINT, as Ctrl-C
    assert rc in (0, 130), out
    assert "Traceback" not in out and "Exception" not in out, out
    print(f"web test: {time.monotonic() - start:.1f} s")


def _panel(screen: str) -> str:
    """The right-hand part of each row (the state panel, right of its left border ▏)."""
    return "\n".join(row.split("▏", 1)[1] for row in screen.splitlines() if "▏" in row)


def test_a_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("localhost", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "contextbot", "chat", "--web", "--port", str(port)],
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert r.stderr == (f"contextbot: error: port {port} is in use on localhost; "
                        "choose another with --port\n")
    assert r.stdout == ""


@pytest.mark.parametrize("argv, message", [
    (["--port", "8000"], "--port needs --web"),
    (["--host", "0.0.0.0"], "--host needs --web"),
    (["--web", "--port", "0"], "--port must be from 1 to 65535, not 0"),
    (["--web", "--port", "70000"], "--port must be from 1 to 65535, not 70000"),
])
def test_bad_web_flags_are_one_line(argv, message):
    r = subprocess.run([sys.executable, "-m", "contextbot", "chat", *argv], capture_output=True,
                       text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stderr) == (2, f"contextbot: error: {message}\n")


def test_the_served_page_needs_nothing_from_the_internet():
    page = web.page_template()
    assert not re.findall(r"(?:src|href)=\"https?://", page)
    assert "/static/fonts/RobotoMono-VariableFont_wght.ttf" in page
    import textual_serve  # which serves its static/ folder at /static/
    assert (web.Path(textual_serve.__file__).parent / "static/fonts/RobotoMono-VariableFont_wght.ttf").is_file()


def test_the_served_command_is_chat_with_the_resolved_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = web.served_command(web.Path("my model.safetensors"))
    assert command.endswith(f"-m contextbot chat --checkpoint '{tmp_path / 'my model.safetensors'}'")
