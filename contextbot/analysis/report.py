"""Printing `contextbot eval`: a rich table for people, JSON for machines."""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from . import evaluate
from ..paths import DEFAULT_FACTS, DEFAULT_VALID
from ..text.corpus import read_conversations
from ..train.batches import encode_conversation
from ..text.facts import load_facts
from ..chat import ChatSession
from ..text.terminal import console_for, visible
from ..train.metrics import evaluate_bpc


def valid_bpc(session: ChatSession, path) -> float:
    enc = [encode_conversation(c, session.tokenizer, 1.0) for c in read_conversations(path)]
    return evaluate_bpc(session.model, enc, session.device)


def evaluate_checkpoint(path=None, seed=None, per_category=200, facts=None, valid=None) -> dict:
    """Everything `contextbot eval --json` prints, as a dict."""
    session = ChatSession.load(path)
    entities = load_facts(facts or DEFAULT_FACTS)
    items = evaluate.generate(entities, seed if seed is not None else evaluate.EVAL_SEED, per_category)
    t0 = time.perf_counter()
    by_cat, by_dist, by_phrasing, agreed = evaluate.run(session, items)
    ck = session.checkpoint
    return {
        "checkpoint": str(ck.path),
        "sha256": ck.sha256,
        "config": ck.config.to_dict(),
        "step": ck.step,
        "seed": seed if seed is not None else evaluate.EVAL_SEED,
        "valid_bpc": round(valid_bpc(session, valid or DEFAULT_VALID), 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "categories": {k: _category(k, label, by_cat[k], evaluate.not_applicable(k, entities))
                       for k, label in evaluate.CATEGORIES},
        "by_distance": {str(d): {"right": r.right, "total": r.total, "accuracy": round(r.accuracy, 4)}
                        for d, r in by_dist.items()},
        "unseen_by_phrasing": {q: {"right": r.right, "total": r.total, "accuracy": round(r.accuracy, 4)}
                               for q, r in by_phrasing.items()},
        "agreement": _agreement(agreed),
        "seed_dialogue": evaluate.seed_dialogue(session),
    }


def _agreement(result: evaluate.Agreement | None) -> dict:
    """The readout's agreement with the replies (evaluate.agreement says what is judged). For a
    checkpoint trained without the referent signal, accuracy is null and `not_applicable` says why."""
    if result is None:
        return {"label": evaluate.AGREEMENT_LABEL, "right": 0, "total": 0, "left_out": 0,
                "accuracy": None, "not_applicable": "trained without the referent signal (no referent head)",
                "disagreements": []}
    return {"label": evaluate.AGREEMENT_LABEL, "right": result.right, "total": result.total,
            "left_out": result.left_out,
            "accuracy": round(result.accuracy, 4) if result.total else None,
            "not_applicable": None if result.total else "no pronoun question it could judge",
            "disagreements": result.examples}


def _category(key: str, label: str, result: evaluate.Result, not_applicable: str | None) -> dict:
    """One category's entry. A category that the facts file's people cannot make (eval's
    `not_applicable`, e.g. a switch with one man and one woman) has no conversations: its
    accuracy and `meets` are null and `not_applicable` says why."""
    return {"label": label, "right": result.right, "total": result.total,
            "accuracy": None if not_applicable else round(result.accuracy, 4),
            "target": "%s %.2f" % evaluate.target_for(key),
            "meets": None if not_applicable else evaluate.meets(key, result.accuracy),
            "not_applicable": not_applicable,
            "wrong_examples": result.examples}


def print_report(r: dict, console: Console) -> None:
    cfg = r["config"]
    # The checkpoint's path is the user's text: a Text, so that "[...]" in it is not read as markup.
    table = Table(title=Text(f"{visible(r['checkpoint'])}  ({cfg['cell']}, {cfg['layers']}x{cfg['hidden']}, "
                             f"step {r['step']})"))
    table.add_column("category")
    table.add_column("right", justify="right")
    table.add_column("of", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column("target", justify="right")
    skipped = []
    for k, c in r["categories"].items():
        if c.get("not_applicable"):
            skipped.append(c)
            table.add_row(c["label"], "-", "-", "n/a", "n/a")
            continue
        mark = "[green]✓[/]" if c["meets"] else "[red]✗[/]"
        table.add_row(c["label"], str(c["right"]), str(c["total"]), f"{c['accuracy']:.1%}",
                      f"{c['target']} {mark}")
    a = r.get("agreement")
    if a is not None:
        if a["accuracy"] is None:
            table.add_row(a["label"], "-", "-", "n/a", "—")
        else:
            table.add_row(a["label"], str(a["right"]), str(a["total"]), f"{a['accuracy']:.1%}", "—")
    console.print(table)
    if a is not None and a["accuracy"] is not None:
        console.print(f"{a['label']}: the head's likeliest referent for the pronoun, at the end of the "
                      "prompt, is the one person in play whose name or asked fact the reply contains "
                      f"(pronoun questions about a known person, carried state; {a['left_out']} left out "
                      "whose fact another person in play shares or whose reply is about no one "
                      "in play)", highlight=False, markup=False)
    elif a is not None:
        console.print(f"{a['label']}: n/a, {a['not_applicable']}", highlight=False, markup=False)
    for c in skipped:
        console.print(f"not applicable: {escape(c['label'])} ({escape(c['not_applicable'])})",
                      highlight=False, soft_wrap=True)
    dist = "  ".join(f"{d}: {v['accuracy']:.0%}" for d, v in r["by_distance"].items())
    console.print(f"accuracy by small-talk turns since the introduction: {dist}")
    if r["unseen_by_phrasing"]:
        console.print("unseen phrasings, one by one:")
        for q, v in r["unseen_by_phrasing"].items():
            console.print(f"  {v['accuracy']:>5.0%} ({v['right']}/{v['total']})  {escape(q)}", highlight=False)
    console.print(f"validation: {r['valid_bpc']:.3f} bits per character")
    console.print("seed dialogue:")
    for t in r["seed_dialogue"]:
        mark = "[green]✓[/]" if t["right"] else "[red]✗[/]"
        # The reply is the model's: made printable (no escape sequences) and never read as markup.
        console.print(f"  {mark} Q: {escape(visible(t['question']))}\n      A: {escape(visible(t['reply']))}",
                      highlight=False)


def run_eval(args) -> int:
    r = evaluate_checkpoint(args.checkpoint, args.seed, args.per_category, args.facts, args.valid)
    if args.json:
        sys.stdout.write(json.dumps(r) + "\n")
    else:
        print_report(r, console_for())
    return 0
