"""`make results`: evaluate the three shipped checkpoints and write README's comparison table.

    python -m contextbot.results            # writes docs/results.json and the README table

The table in README.md sits between the markers `<!-- results:start -->` and
`<!-- results:end -->` and is replaced as a whole, so every figure in it comes from this command.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

from . import evaluate
from ..files import write_atomic
from ..paths import SHIPPED as REPO
from .report import evaluate_checkpoint

CELLS = ("gru", "lstm", "rnn")
START, END = "<!-- results:start -->", "<!-- results:end -->"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores), torch {torch.__version__}"


def table(results: dict[str, dict]) -> str:
    cells = [c for c in CELLS if c in results]
    head = "| | " + " | ".join(cells) + " | target (gru) |"
    rows = [head, "|---|" + "---:|" * len(cells) + "---|"]
    for key, label in evaluate.CATEGORIES:
        op, t = evaluate.target_for(key)
        vals = " | ".join(f"{results[c]['categories'][key]['accuracy']:.1%}" for c in cells)
        rows.append(f"| {label} | {vals} | {op} {t:.0%} |")
    distances = sorted({int(d) for c in cells for d in results[c]["by_distance"]})
    for d in distances:
        vals = " | ".join(f"{results[c]['by_distance'].get(str(d), {}).get('accuracy', float('nan')):.1%}"
                          for c in cells)
        rows.append(f"| pronoun, exactly {d} turns of small talk back | {vals} | |")
    seed_ok = " | ".join(f"{sum(t['right'] for t in results[c]['seed_dialogue'])}/5" for c in cells)
    rows.append(f"| the seed dialogue, turns right | {seed_ok} | 5/5 |")
    rows.append("| validation bits per character | "
                + " | ".join(f"{results[c]['valid_bpc']:.3f}" for c in cells) + " | |")
    rows.append("| training time (minutes; CPU threads) | "
                + " | ".join(f"{results[c]['train_seconds'] / 60:.1f}; {results[c].get('train_threads')}"
                             for c in cells) + " | |")
    rows.append("| parameters | " + " | ".join(f"{results[c]['parameters']:,}" for c in cells) + " | |")
    n = results[cells[0]]["categories"]["near"]["total"]
    return "\n".join(rows) + (f"\n\n{n} conversations per category, seed {results[cells[0]]['seed']}; "
                              f"measured on {machine()}.")


def main() -> int:
    from ..model.checkpoint import load
    results = {}
    for cell in CELLS:
        path = REPO / "checkpoints" / f"{cell}.safetensors"
        if not path.exists():
            print(f"skipping {cell}: {path} does not exist", file=sys.stderr)
            continue
        r = evaluate_checkpoint(path)
        ck = load(path)
        r["train_seconds"] = ck.train_options.get("seconds", 0.0)
        r["parameters"] = ck.model.num_parameters()
        r["train_threads"] = ck.train_options.get("threads")
        results[cell] = r
        print(f"{cell}: " + ", ".join(f"{k} {v['accuracy']:.1%}" for k, v in r["categories"].items()),
              file=sys.stderr)
    if not results:
        print("contextbot: error: no checkpoints to evaluate", file=sys.stderr)
        return 2
    write_atomic(REPO / "docs" / "results.json", json.dumps(results, indent=1).encode())
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START in text and END in text:
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        text = f"{before}{START}\n{table(results)}\n{END}{after}"
        write_atomic(readme, text.encode("utf-8"))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
