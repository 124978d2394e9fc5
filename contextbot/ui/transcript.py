"""The session transcript that ctrl+s saves: what was asked, what came back, and what the memory did.

The file is plain JSON so that a notebook can plot the norms or diff two runs:

    {"format": "contextbot-chat", "version": 1, "saved_at": "...",
     "checkpoint": {"path", "sha256", "step", "cell", "layers", "hidden", "parameters"},
     "settings": {"carry", "temperature", "top_k"},
     "turns": [{"question", "reply", "carry", "stopped", "memory_zeroed_before",
                "norms_in", "norms_out", "cosine_to_previous", "norms", "cell_norms",
                "zeroed_reply"}]}

`norms` holds ‖h‖ per layer after every reply character (`cell_norms` the same for an LSTM's c);
`zeroed_reply` is what the same question got from a zeroed state, when ctrl+d asked for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..chat import ChatSession
from .streaming import TurnResult

FORMAT = "contextbot-chat"
VERSION = 1


@dataclass
class Entry:
    """One turn of the transcript, with what happened just before it."""

    result: TurnResult
    memory_zeroed_before: bool = False  # ctrl+r was pressed before this turn
    zeroed_reply: str | None = None  # filled in by ctrl+d


@dataclass
class Transcript:
    entries: list[Entry] = field(default_factory=list)
    pending_reset: bool = False

    def add(self, result: TurnResult) -> Entry:
        entry = Entry(result, memory_zeroed_before=self.pending_reset)
        self.pending_reset = False
        self.entries.append(entry)
        return entry

    def mark_reset(self) -> None:
        self.pending_reset = True

    def last(self) -> Entry | None:
        return self.entries[-1] if self.entries else None

    def to_dict(self, session: ChatSession) -> dict:
        ck = session.checkpoint
        return {
            "format": FORMAT,
            "version": VERSION,
            "saved_at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "checkpoint": {
                "path": str(ck.path) if ck.path else None,
                "sha256": ck.sha256,
                "step": ck.step,
                "cell": ck.config.cell,
                "layers": ck.config.layers,
                "hidden": ck.config.hidden,
                "parameters": ck.model.num_parameters(),
            },
            "settings": {"carry": session.carry, "temperature": session.temperature,
                         "top_k": session.top_k},
            "turns": [_turn(e) for e in self.entries],
        }


def _round(values) -> list[float]:
    return [round(float(v), 5) for v in values]


def _turn(e: Entry) -> dict:
    r = e.result
    return {
        "question": r.question,
        "reply": r.reply,
        "carry": r.carry,
        "stopped": r.stopped,
        "memory_zeroed_before": e.memory_zeroed_before,
        "norms_in": _round(r.norms_in),
        "norms_out": _round(r.norms_out),
        "cosine_to_previous": None if r.cosine is None else round(r.cosine, 5),
        "norms": [_round(n) for n in r.norms],
        "cell_norms": [_round(c) for c in r.cell_norms] if any(r.cell_norms) else None,
        "zeroed_reply": e.zeroed_reply,
    }


def save(transcript: Transcript, session: ChatSession, directory: Path | None = None,
         now: datetime | None = None) -> Path:
    """Write the transcript to a new file, contextbot-chat-YYYYMMDD-HHMMSS.json (with -2, -3...
    when that name is taken), in `directory` (default: the current directory); return its path.

    The file is opened with mode "x", which refuses to overwrite: two saves in the same second
    get two files. OSError (a read-only directory, a full disk) propagates for the caller.
    """
    directory = Path.cwd() if directory is None else Path(directory)
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    text = json.dumps(transcript.to_dict(session), indent=2, ensure_ascii=False) + "\n"
    n = 1
    while True:
        path = directory / (f"contextbot-chat-{stamp}.json" if n == 1 else
                            f"contextbot-chat-{stamp}-{n}.json")
        try:
            with open(path, "x", encoding="utf-8") as f:
                f.write(text)
            return path
        except FileExistsError:
            n += 1
