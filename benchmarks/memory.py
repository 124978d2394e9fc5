"""Memory: peak resident set size of `contextbot ask` and of the chat app, and checkpoint sizes.

Each program runs in a child process of its own, and its peak RSS is the kernel's `ru_maxrss`
for that child (os.wait4), so the benchmark's own memory never counts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from contextbot.corpus import REPO

# The chat app, headless (Textual's run_test), asked one question as a user would.
CHAT_SCRIPT = """
import asyncio, sys
from contextbot.ui.app import ChatApp
from contextbot.ui.history_input import HistoryInput

async def main():
    app = ChatApp(sys.argv[1])
    async with app.run_test(size=(120, 40)) as pilot:
        while app.session is None and app.load_error is None:
            await pilot.pause(0.05)
        if app.load_error is not None:
            raise SystemExit(app.load_error)
        app.query_one(HistoryInput).value = "Who is Tom Cruise?"
        app.simulate_key("enter")
        while not app.transcript.entries or app.busy:
            await pilot.pause(0.05)
        print(app.transcript.entries[-1].result.reply)

asyncio.run(main())
"""


def peak_rss(cmd: list[str]) -> tuple[int, str]:
    """(peak RSS in bytes, stdout) of a command run as a child process; raises if it fails."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: stdout into the pipe, then become the command
        os.dup2(w, 1)
        os.close(r)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.execvp(cmd[0], cmd)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"{' '.join(cmd[:3])} failed with status {status}")
    return usage.ru_maxrss * 1024, out  # Linux reports kilobytes


def run(checkpoint: str | None = None) -> dict:
    ckpt = checkpoint or str(REPO / "checkpoints" / "gru.safetensors")
    exe = str(Path(sys.executable).with_name("contextbot"))
    ask_rss, ask_out = peak_rss([exe, "ask", "--checkpoint", ckpt, "Who is Tom Cruise?",
                                        "Where does he live?"])
    chat_rss, chat_out = peak_rss([sys.executable, "-c", CHAT_SCRIPT, ckpt])
    sizes = {p.name: p.stat().st_size for p in sorted((REPO / "checkpoints").glob("*.safetensors"))}
    return {"ask_peak_rss_mb": ask_rss / 2 ** 20, "ask_reply": ask_out.strip().splitlines(),
            "chat_peak_rss_mb": chat_rss / 2 ** 20, "chat_reply": chat_out.strip(),
            "checkpoint_bytes": sizes}
