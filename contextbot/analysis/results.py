"""`make results`: evaluate the three shipped checkpoints and write their comparison tables.

    python -m contextbot.analysis.results    # writes docs/results.json, docs/results.md, README.md

Each checkpoint goes through `report.evaluate_checkpoint`, the same evaluation as
`contextbot eval`. The results are written three ways:

- docs/results.json: everything the evaluation returned, per cell, with the checkpoint's
  training time, thread count and parameter count, and the machine it was measured on;
- docs/results.md: the full table (`table(results)`): every category, how often the referent
  head's reading agrees with the replies, pronoun accuracy by exact number of turns of small talk, the seed dialogue, validation bits per character, training
  time and parameters;
- README.md: the short table (`table(results, full=False)`): the categories and the seed
  dialogue only.

In both Markdown files the table sits between the markers `<!-- results:start -->` and
`<!-- results:end -->` and is replaced as a whole, so every figure there comes from this
command. A file without the markers is left alone. To rewrite the tables from an existing
docs/results.json without evaluating again, call `write_tables(json.loads(...))`.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

from . import evaluate
from ..files import replace_block, write_atomic
from ..paths import SHIPPED as REPO
from .report import evaluate_checkpoint

CELLS = ("gru", "lstm", "rnn")
START, END = "<!-- results:start -->", "<!-- results:end -->"
JSON = REPO / "docs" / "results.json"
FULL_TABLE = REPO / "docs" / "results.md"
SHORT_TABLE = REPO / "README.md"


def machine() -> str:
    """One line naming this machine: CPU model, cores, and the torch version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cores), torch {torch.__version__}"


def table(results: dict[str, dict], full: bool = True) -> str:
    """The comparison table in Markdown, one column per cell, then a line saying how it was measured.

    `full=False` keeps the categories and the seed dialogue (README); `full=True` adds accuracy
    by exact distance, validation bits per character, training time and parameters (docs/results.md).
    """
    cells = [c for c in CELLS if c in results]
    head = "| | " + " | ".join(cells) + " | target (gru) |"
    rows = [head, "|---|" + "---:|" * len(cells) + "---|"]
    for key, label in evaluate.CATEGORIES:
        op, t = evaluate.target_for(key)
        vals = " | ".join(f"{results[c]['categories'][key]['accuracy']:.1%}" for c in cells)
        rows.append(f"| {label} | {vals} | {op} {t:.0%} |")
    if full:
        rows.append(f"| {evaluate.AGREEMENT_LABEL} | "
                    + " | ".join(_agreement(results[c]) for c in cells) + " | |")
    distances = sorted({int(d) for c in cells for d in results[c]["by_distance"]}) if full else []
    for d in distances:
        vals = " | ".join(f"{results[c]['by_distance'].get(str(d), {}).get('accuracy', float('nan')):.1%}"
                          for c in cells)
        rows.append(f"| pronoun, exactly {d} turns of small talk back | {vals} | |")
    seed_ok = " | ".join(f"{sum(t['right'] for t in results[c]['seed_dialogue'])}/5" for c in cells)
    rows.append(f"| the seed dialogue, turns right | {seed_ok} | 5/5 |")
    if full:
        rows += _training_rows(results, cells)
    first = results[cells[0]]
    n = first["categories"]["near"]["total"]
    return "\n".join(rows) + (f"\n\n{n} conversations per category, seed {first['seed']}; "
                              f"measured on {first.get('machine') or machine()}.")


def _agreement(result: dict) -> str:
    """The readout's agreement with the replies (evaluate.agreement); "—" where the results
    predate it or the checkpoint has no referent head."""
    accuracy = (result.get("agreement") or {}).get("accuracy")
    return "—" if accuracy is None else f"{accuracy:.1%}"


def _training_rows(results: dict[str, dict], cells: list[str]) -> list[str]:
    rows = []
    rows.append("| validation bits per character | "
                + " | ".join(f"{results[c]['valid_bpc']:.3f}" for c in cells) + " | |")
    rows.append("| training time (minutes; CPU threads) | "
                + " | ".join(f"{results[c]['train_seconds'] / 60:.1f}; {results[c].get('train_threads')}"
                             for c in cells) + " | |")
    rows.append("| parameters | " + " | ".join(f"{results[c]['parameters']:,}" for c in cells) + " | |")
    return rows


def write_tables(results: dict[str, dict]) -> None:
    """The full table into docs/results.md, the short one into README.md (each between markers)."""
    for path, full in ((FULL_TABLE, True), (SHORT_TABLE, False)):
        if path.exists() and not replace_block(path, START, END, table(results, full=full)):
            print(f"{path.relative_to(REPO)} has no results block; left alone", file=sys.stderr)


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
        r["machine"] = machine()
        results[cell] = r
        print(f"{cell}: " + ", ".join(f"{k} {v['accuracy']:.1%}" for k, v in r["categories"].items()),
              file=sys.stderr)
    if not results:
        print("contextbot: error: no checkpoints to evaluate", file=sys.stderr)
        return 2
    write_atomic(JSON, json.dumps(results, indent=1).encode())
    write_tables(results)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
