"""`make bench` (`python -m benchmarks`): every speed and memory figure of the project, in one run.

    python -m benchmarks                 # all of it; writes docs/bench.json and docs/performance.md
    python -m benchmarks --quick         # shorter runs, skips time to accuracy; writes nothing
    python -m benchmarks --only chat     # one part (training, accuracy, chat, memory); the
                                         # others keep their last figures in docs/bench.json
    python -m benchmarks --only accuracy --batch 32   # time to accuracy at another batch;
                                         # writes nothing (it is not the default recipe)

The figures land in docs/bench.json (with the machine they were measured on and the date) and,
as a Markdown table, in docs/performance.md between `<!-- bench:start -->` and
`<!-- bench:end -->`, so every speed or memory number in the docs comes from this command.
The table is rewritten only when docs/bench.json holds all four parts; `markdown(r)` builds it
from a results dict, so the table can be rewritten from docs/bench.json without measuring again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from contextbot.files import replace_block, write_atomic
from contextbot.paths import SHIPPED as REPO
from contextbot.analysis.results import machine as results_machine

from . import accuracy, chat, memory, training

PARTS = ("training", "accuracy", "chat", "memory")
PAGE = REPO / "docs" / "performance.md"  # holds the bench block
OUT = REPO / "docs" / "bench.json"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def machine() -> str:
    """One line naming the machine (CPU model and cores, torch) and the thread count used."""
    return f"{results_machine()}, {torch.get_num_threads()} threads"


def rows(r: dict) -> list[tuple[str, str, str]]:
    """(what, measured, target) for the table, from whichever parts ran."""
    out = []
    if t := r.get("training"):
        out += [
            ("training: contextbot train", f"{t['contextbot_chars_per_sec']:,.0f} chars/s", ""),
            ("training: baseline (PyTorch word_language_model loop)",
             f"{t['baseline_chars_per_sec']:,.0f} chars/s" if "baseline_chars_per_sec" in t else "—", ""),
            ("training: contextbot / baseline",
             f"{t['contextbot_over_baseline']:.2f}x" if "contextbot_over_baseline" in t else "—", ""),
            ("training: per-character tutorial loop", f"{t['tutorial_chars_per_sec']:,.0f} chars/s",
             ""),
            ("training: roofline (matmuls at measured rates)",
             f"{t['roofline_chars_per_sec']:,.0f} chars/s ({t['roofline_gflops']:.0f} GFLOP/s)", ""),
            ("training: share of the roofline", f"{t['fraction_of_roofline']:.0%}", "≥ 65%"),
        ]
    if a := r.get("accuracy"):
        got = (f"{a['seconds'] / 60:.1f} min" if a["reached"]
               else f"not within {a['limit_minutes']:g} min (best {max(p['near'] for p in a['curve']):.0%})"
               if a["curve"] else "no checkpoint scored")
        batch = f" (batch {a['batch']})" if "batch" in a else ""
        out.append((f"time to {a['target']:.0%} on pronouns 0-3 turns back{batch}", got, "≤ 3 min"))
    if c := r.get("chat"):
        lat = c["latency"]
        out += [
            ("chat: reply, median / p95", f"{lat['median_ms']:.2f} / {lat['p95_ms']:.2f} ms", "≤ 1 ms median"),
            ("chat: first character (median)", f"{lat['first_char_median_ms']:.2f} ms", ""),
            ("chat: reply characters per second; time per character read or written",
             f"{lat['chars_per_sec']:,.0f} chars/s; {lat['ms_per_step'] * 1e3:.1f} µs/char", ""),
        ]
        for t in c["turns"]:
            out.append((f"chat: turn {t['turn']} carried / re-fed ({t['history_chars']:,} chars back)",
                        f"{t['carried_ms']:.2f} / {t['refeed_ms']:.2f} ms", ""))
        out.append(("chat: last turn / turn 1, carried", f"{c['last_over_first']:.2f}x", "≤ 1.1x"))
    if m := r.get("memory"):
        out += [("memory: peak RSS, contextbot ask", f"{m['ask_peak_rss_mb']:.0f} MB", ""),
                ("memory: peak RSS, chat app", f"{m['chat_peak_rss_mb']:.0f} MB", "")]
        out += [(f"checkpoint {name}", f"{size / 2 ** 20:.1f} MB", "")
                for name, size in m["checkpoint_bytes"].items()]
    return out


def table(r: dict) -> Table:
    t = Table(title=f"contextbot benchmarks — {r['machine']}")
    for col in ("what", "measured", "target"):
        t.add_column(col)
    for row in rows(r):
        t.add_row(*row)
    return t


def markdown(r: dict) -> str:
    """The bench block of docs/performance.md: where and when it was measured, then the table."""
    lines = [f"Measured by `make bench` on {r['machine']}, {r['date']}.", "",
             "| what | measured | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows(r)]
    return "\n".join(lines)


def write_page(r: dict) -> bool:
    """Replace the bench block of docs/performance.md; False if the page or its block is missing."""
    return replace_block(PAGE, START, END, markdown(r), write=write_atomic)  # this module's, for the tests


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse turns the ValueError into a usage
    error, exit code 2)."""
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--only", action="append", choices=PARTS, help="run only this part (repeatable)")
    p.add_argument("--quick", action="store_true", help="short runs, no time to accuracy, writes nothing")
    p.add_argument("--checkpoint", help="checkpoint for chat and memory (default: the shipped GRU)")
    p.add_argument("--tta-minutes", type=float, default=15.0,
                   help="time limit for time to accuracy (default 15)")
    p.add_argument("--batch", type=_positive, metavar="N",
                   help="time to accuracy with N streams per step instead of the recipe's; writes "
                        "nothing unless --json")
    p.add_argument("--json", metavar="FILE", help=f"where to write the results (default {OUT.relative_to(REPO)})")
    args = p.parse_args(argv)
    parts = args.only or [x for x in PARTS if not (args.quick and x == "accuracy")]
    if args.batch and "accuracy" not in parts:
        p.error("--batch is for the time-to-accuracy part: add --only accuracy (without --quick)")
    console = Console(stderr=True)
    r: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    for part in parts:
        console.print(f"[bold]{part}[/] …")
        start = time.perf_counter()
        if part == "training":
            r[part] = training.run(quick=args.quick)
        elif part == "accuracy":
            r[part] = accuracy.run(minutes=args.tta_minutes, batch=args.batch)
        elif part == "chat":
            r[part] = chat.run(args.checkpoint, quick=args.quick)
        else:
            r[part] = memory.run(args.checkpoint)
        r[part]["measured"] = time.strftime("%Y-%m-%d %H:%M")
        console.print(f"  {time.perf_counter() - start:.0f} s")
    Console().print(table(r))
    if (args.quick or args.batch) and not args.json:
        return 0
    out = Path(args.json) if args.json else OUT
    if not args.json and OUT.exists() and set(parts) != set(PARTS):
        # Some parts re-measured: keep the other parts' last figures (docs/bench.json).
        try:
            r = json.loads(OUT.read_text(encoding="utf-8")) | r
        except (OSError, ValueError):
            pass
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, (json.dumps(r, indent=1) + "\n").encode("utf-8"))
    if not args.json and all(part in r for part in PARTS):
        page = PAGE.relative_to(REPO)
        console.print(f"{page} updated" if write_page(r) else f"{page} has no bench block")
    return 0


if __name__ == "__main__":
    sys.exit(main())
