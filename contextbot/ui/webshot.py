"""`contextbot chat --web` in a headless Chromium: tests/ui/test_web.py and README's picture of it.

    python -m contextbot.ui.webshot --screenshot docs/ui-web.png   # what `make figures` runs
    python -m contextbot.ui.webshot --screenshot OUT.png --checkpoint my/model.safetensors

`Served` runs `contextbot chat --web` as a subprocess; `Page` opens its address in a headless
Chromium (Selenium and the system's chromedriver), types into the page as a person would, and
reads the terminal's text from xterm.js's own buffer (the page draws on a canvas, so the DOM
holds none). `screenshot` asks the seed dialogue (contextbot/ui/screenshot.py's, as in
docs/ui.svg) and saves the page as PNG. contextbot/ui/web.py is the server itself.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

from ..errors import ContextbotError
from ..files import write_atomic
from .screenshot import SEED_QUESTIONS
from .web import DEFAULT_HOST

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Flags for a headless Chromium on a machine with a closed network: no GPU, no sandbox (root in
#: a container), and none of the background connections (updates, sync, QUIC) it would attempt.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")

#: Runs in the page before textual.js: keeps each xterm.js Terminal that textual.js creates, so
#: that the text can be read from its buffer (textual.js keeps it in a closure, and draws it on a
#: canvas). textual.js's terminal object sets `websocket_url` and then `terminal` on itself; a
#: setter on Object.prototype sees that assignment and stores the value as a plain property.
CAPTURE_TERMINAL = """
window.__contextbotTerminals = [];
Object.defineProperty(Object.prototype, 'terminal', {
  configurable: true,
  set(value) {
    Object.defineProperty(this, 'terminal', {value, writable: true, configurable: true, enumerable: true});
    if ('websocket_url' in this && value && value.buffer) window.__contextbotTerminals.push(value);
  },
});
"""
#: The visible rows of the first terminal, as text ('' until it exists).
READ_SCREEN = """
const t = (window.__contextbotTerminals || [])[0];
if (!t) return '';
const b = t.buffer.active, rows = [];
for (let y = 0; y < t.rows; y++) {
  const line = b.getLine(b.viewportY + y);
  rows.push(line ? line.translateToString(true) : '');
}
return rows.join('\\n');
"""


def browser_missing() -> str | None:
    """Why a page cannot be driven here (None when it can): Chromium, its driver, or Selenium."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (make browser, or apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (make browser, or pip install selenium)"
    return None


class Page:
    """A headless Chromium on a served chat: type into it, read its terminal, take a picture."""

    def __init__(self, url: str, size: tuple[int, int] = (1280, 800)):
        import tempfile

        if (why := browser_missing()) is not None:  # before selenium: a one-line error
            raise ContextbotError(why)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        self._profile = tempfile.TemporaryDirectory(prefix="contextbot-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self._profile.name}")
        options.add_argument(f"--window-size={size[0]},{size[1]}")
        try:
            self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        except Exception:
            self._profile.cleanup()
            raise
        try:  # the page's size exactly (the window's would include what a window adds)
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
                "width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False})
            self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                                        {"source": CAPTURE_TERMINAL})
            self.driver.get(url)
        except Exception:
            self.close()
            raise

    def screen(self) -> str:
        """The terminal's visible text, one line a row."""
        return self.driver.execute_script(READ_SCREEN) or ""

    def wait_for(self, text: str, timeout: float = 60.0, absent: str | None = None) -> str:
        """Wait until the screen shows `text` (and not `absent`); returns the screen."""
        import time
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen and (absent is None or absent not in screen):
                return screen
            if time.monotonic() > deadline:
                raise ContextbotError(f"the page did not show {text!r} within {timeout:g} s; "
                                      f"it shows:\n{screen}")
            time.sleep(0.1)

    def type(self, keys: str) -> None:
        """Type into the terminal, as a person at the keyboard (\\n is Enter)."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys
        box = self.driver.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")
        box.send_keys(keys.replace("\n", Keys.ENTER))

    def ask(self, question: str, timeout: float = 60.0) -> str:
        """Ask one question and wait for the reply to end; returns the screen."""
        turn = _turn_of(self.screen())
        self.type(question + "\n")
        return self.wait_for(f"turn {turn + 1} ", timeout, absent="replying")

    def png(self) -> bytes:
        return self.driver.get_screenshot_as_png()

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            self._profile.cleanup()

    def __enter__(self) -> Page:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _turn_of(screen: str) -> int:
    """The turn count of the status line ("memory: carried · turn 2 · ..."), 0 before any."""
    found = re.findall(r"\bturn (\d+) ", screen)
    return int(found[-1]) if found else 0


def free_port(host: str = DEFAULT_HOST) -> int:
    """A port that nothing listens on now, chosen by the system."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Served:
    """`contextbot chat --web` as a subprocess, for the test and the screenshot.

    `url` is the address it printed. `stop()` sends SIGINT, as Ctrl-C would, and returns the
    exit code and everything the server wrote.
    """

    def __init__(self, port: int, checkpoint: str | Path | None = None, timeout: float = 60.0):
        import queue
        import subprocess
        import threading
        command = [sys.executable, "-m", "contextbot", "chat", "--web", "--port", str(port)]
        if checkpoint is not None:
            command += ["--checkpoint", str(checkpoint)]
        # No terminal anywhere: stdin is /dev/null, the output a pipe.
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, errors="replace")
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        try:
            first = self._lines.get(timeout=timeout)
        except queue.Empty:
            first = None
        found = re.search(r"open (http://\S+) in a browser", first or "")
        if found is None:
            rc, out = self.stop()
            raise ContextbotError(f"chat --web did not start (exit {rc}): {out.strip()}")
        self.url = found.group(1)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def stop(self, timeout: float = 30.0) -> tuple[int, str]:
        import signal
        import subprocess
        import time
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        time.sleep(0.1)  # the reader thread takes the last lines
        return self.process.returncode, "".join(self.output)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def screenshot(out: str | Path, checkpoint: str | Path | None = None,
               size: tuple[int, int] = (1280, 880)) -> Path:
    """Serve the chat, ask the seed dialogue in a headless Chromium, and save the page as PNG."""
    out = Path(out)
    with Served(free_port(), checkpoint) as served, Page(served.url, size) as page:
        page.wait_for("memory: carried", 120)
        for question in SEED_QUESTIONS:
            page.ask(question, 120)
        import time
        time.sleep(0.5)  # the last frame
        write_atomic(out, page.png())
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m contextbot.ui.webshot",
                                description="A PNG of `contextbot chat --web` in a headless "
                                            "Chromium after the seed dialogue.")
    p.add_argument("--screenshot", metavar="OUT.png", required=True, help="the PNG file to write")
    p.add_argument("--checkpoint", help="checkpoint (default: $CONTEXTBOT_CHECKPOINT or "
                                        "checkpoints/gru.safetensors)")
    args = p.parse_args(argv)
    try:
        path = screenshot(args.screenshot, args.checkpoint)
    except ContextbotError as exc:
        print(f"contextbot: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
