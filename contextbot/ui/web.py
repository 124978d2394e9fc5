"""`contextbot chat --web`: the same chat app in a browser, served by textual-serve.

    contextbot chat --web                      # http://localhost:8000, this machine only
    contextbot chat --web --port 8080 --host 0.0.0.0   # every network interface: the classroom

textual-serve is a small aiohttp server. Each browser tab that opens the page gets its own
process, a shell command run with `TEXTUAL_DRIVER` set to Textual's web driver, which speaks to
the page over a websocket; the page draws the app with xterm.js (bundled in the package's
`static/js/textual.js`, with its CSS and the Roboto Mono font). Here the command is
`python -m contextbot chat --checkpoint PATH`, with the checkpoint the user chose, resolved, so
every tab talks to the same model, each with its own memory. `cmd_chat` sees the web driver in
the environment (`served_by_web`) and does not ask for a terminal.

Nothing is downloaded at run time. textual-serve's page links one stylesheet from Google Fonts;
`page_template` drops that link and declares the bundled font instead, and it makes the page's
URLs relative to the address the browser used (textual-serve writes absolute ones from the host
it was given, which a browser elsewhere cannot reach when that host is 0.0.0.0).

contextbot/ui/webshot.py drives the page from a headless Chromium, for tests/ui/test_web.py and
README's picture of it.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import sys
from pathlib import Path

from ..errors import ContextbotError

DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8000
#: The Textual driver textual-serve names in each served process's environment.
WEB_DRIVER = "textual.drivers.web_driver:WebDriver"
#: Hosts that mean "every interface": the URL to print names this machine instead.
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def served_by_web() -> bool:
    """Whether this process is a chat that textual-serve started for a browser tab."""
    return os.environ.get("TEXTUAL_DRIVER", "").startswith("textual.drivers.web_driver")


def served_command(checkpoint: Path) -> str:
    """The shell command textual-serve runs for each browser tab."""
    return shlex.join([sys.executable, "-m", "contextbot", "chat",
                       "--checkpoint", str(Path(checkpoint).resolve())])


def url_for(host: str, port: int) -> str:
    """The address to open: `host`, or this machine's name when listening on every interface."""
    name = socket.gethostname() if host in WILDCARD_HOSTS else host
    if ":" in name:  # an IPv6 address
        name = f"[{name}]"
    return f"http://{name}:{port}"


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, a port out of range or one that `host` cannot listen on now."""
    if not 1 <= port <= 65535:
        raise ContextbotError(f"--port must be from 1 to 65535, not {port}")
    try:
        addresses = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ContextbotError(f"--host {host}: cannot listen there ({getattr(exc, 'strerror', None) or exc})") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as s:
            if os.name == "posix":  # as aiohttp does: a port just freed may be bound again
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as exc:
                raise ContextbotError(_bind_error(host, port, exc)) from None


def _bind_error(host: str, port: int, exc: OSError) -> str:
    import errno
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} is in use on {host or 'every interface'}; choose another with --port"
    if exc.errno == errno.EACCES:
        return f"port {port}: permission denied (ports below 1024 need privileges); choose another with --port"
    return f"cannot listen on {host}:{port} ({exc.strerror or exc})"


def page_template() -> str:
    """textual-serve's page, with nothing fetched from elsewhere and relative URLs.

    The shipped page links Roboto Mono from fonts.googleapis.com; the same font is in the
    package's static/fonts, declared here instead. Static files are asked for at /static/, and
    the websocket at the address the browser used, whatever host the server was given.
    """
    import textual_serve
    page = (Path(textual_serve.__file__).parent / "templates" / "app_index.html").read_text("utf-8")
    page = re.sub(r"<link\b[^>]*\bhref=\"https?://[^\"]*\"[^>]*/?>", "", page)
    page = page.replace("{{ config.static.url }}", "/static/")
    font = ('<link rel="preload" href="/static/fonts/RobotoMono-VariableFont_wght.ttf" as="font" '
            'type="font/ttf" crossorigin />\n'
            "    <style>@font-face { font-family: 'Roboto Mono'; font-weight: 100 700; "
            "src: url('/static/fonts/RobotoMono-VariableFont_wght.ttf') format('truetype'); }\n"
            "    @font-face { font-family: 'Roboto Mono'; font-style: italic; font-weight: 100 700; "
            "src: url('/static/fonts/RobotoMono-Italic-VariableFont_wght.ttf') format('truetype'); }"
            "</style>\n  </head>")
    page = page.replace("</head>", font, 1)
    websocket = ("<script>for (const t of document.querySelectorAll('.textual-terminal')) "
                 "t.dataset.sessionWebsocketUrl = (location.protocol === 'https:' ? 'wss://' : "
                 "'ws://') + location.host + '/ws';</script>\n  </body>")
    page = page.replace("</body>", websocket, 1)
    if re.search(r"(src|href)=\"https?://", page) or "/ws';" not in page:
        raise ContextbotError("textual-serve's page has changed; contextbot cannot serve it "
                              "without fetching from the internet (pin textual-serve to 1.1)")
    return page


def serve(checkpoint: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    """Serve the chat on host:port until Ctrl-C (or SIGTERM); returns the exit code, 0."""
    import asyncio
    import signal
    import tempfile

    try:
        from textual_serve.server import Server
    except ImportError:
        raise ContextbotError("chat --web needs textual-serve: pip install 'textual-serve>=1.1'") from None
    check_port(host, port)
    url = url_for(host, port)

    class ChatServer(Server):
        """textual-serve's server, with a one-line banner, and every tab's chat ended on exit."""

        sessions: set[asyncio.Task] = set()  # the open tabs (a new class each serve())

        def initialize_logging(self) -> None:  # errors only: no line per request
            import logging
            logging.basicConfig(level="WARNING", format="contextbot chat --web: %(message)s")

        async def handle_websocket(self, request):
            """One browser tab: its chat runs as long as this does."""
            task = asyncio.current_task()
            self.sessions.add(task)
            try:
                return await super().handle_websocket(request)
            finally:
                self.sessions.discard(task)

        async def on_shutdown(self, app) -> None:
            """Ctrl-C: each tab's chat is told to quit, and waited for, while the event loop
            still runs (aiohttp would otherwise wait for open websockets, then leave the
            processes to a closed loop)."""
            open_tabs = list(self.sessions)
            for task in open_tabs:
                task.cancel()  # textual-serve then closes the websocket and quits the process
            if open_tabs:
                await asyncio.wait(open_tabs, timeout=10)

        async def on_startup(self, app) -> None:  # no banner yet: the port is not bound
            pass

        def serve(self, debug: bool = False) -> None:
            """textual-serve 1.1's `Server.serve` (its `_make_app` included), but the address is
            printed once it is listened on (aiohttp calls `print` then), so whoever reads it can
            connect at once. tests/ui/test_web.py runs it for real."""
            from aiohttp import web as aiohttp_web
            self.debug = debug
            self.initialize_logging()
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.add_signal_handler(signal.SIGINT, self.request_exit)
                loop.add_signal_handler(signal.SIGTERM, self.request_exit)
            except NotImplementedError:  # Windows: Ctrl-C is a KeyboardInterrupt
                pass
            where = ("this machine only" if host not in WILDCARD_HOSTS and _loopback(host)
                     else "anyone who can reach this machine")
            aiohttp_web.run_app(self._make_app(), host=self.host, port=self.port,
                                handle_signals=False, loop=loop, shutdown_timeout=15,
                                print=lambda *_: print(f"contextbot chat: open {url} in a "
                                                       f"browser ({where}); Ctrl-C stops",
                                                       flush=True))

    with tempfile.TemporaryDirectory(prefix="contextbot-web-") as templates:
        Path(templates, "app_index.html").write_text(page_template(), encoding="utf-8")
        server = ChatServer(served_command(checkpoint), host=host or "0.0.0.0", port=port,
                            title="contextbot", public_url=url, templates_path=templates)
        try:
            server.serve()
        except OSError as exc:  # taken between the check and the bind
            raise ContextbotError(_bind_error(host, port, exc)) from None
    return 0


def _loopback(host: str) -> bool:
    try:
        import ipaddress
        return all(ipaddress.ip_address(a[4][0]).is_loopback
                   for a in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False
