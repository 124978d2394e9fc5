"""Memory: peak resident set size of `contextbot ask` and of the chat app, and checkpoint sizes.

Each program runs as the only child of a small Python parent, and its peak RSS is the kernel's
`ru_maxrss` for that parent's children, so the benchmark's own memory never counts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from contextbot.paths import SHIPPED as REPO

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


# The program's parent: a small Python that starts it and reports its peak. Forking the program
# straight from the benchmark would count the benchmark's own memory: the kernel's ru_maxrss of a
# forked child includes the pages it shared with its parent until exec, so after the training
# parts (600 MB) both programs "peaked" at 600 MB.
PROBE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stderr=subprocess.DEVNULL); "
         "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss(cmd: list[str]) -> tuple[int, str]:
    """(peak RSS in bytes, stdout) of a command run as the only child of a small parent; raises
    if it fails."""
    r = subprocess.run([sys.executable, "-c", PROBE, *cmd], capture_output=True, text=True, check=True)
    *lines, last = r.stdout.rstrip("\n").split("\n")
    code, kb = last.split()
    if code != "0":
        raise RuntimeError(f"{' '.join(cmd[:3])} failed with status {code}")
    return int(kb) * 1024, "\n".join(lines)  # Linux reports kilobytes


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
