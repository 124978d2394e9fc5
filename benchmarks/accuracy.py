"""Time to accuracy: how long the default recipe takes, from nothing, to answer pronoun questions.

Trains with `contextbot train`'s defaults on the shipped corpus and, at every checkpoint, scores
the eval's "pronoun, 0-3 turns after the introduction" category on fresh conversations (the
eval's seed, never used in training). The clock stops while it scores, so the figure is training
time alone. It stops at the first checkpoint at or above the target, or at the time limit.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from rich.console import Console

from contextbot.analysis import evaluate
from contextbot.chat import ChatSession
from contextbot.paths import DEFAULT_FACTS
from contextbot.text.facts import load_facts
from contextbot.train.loop import train
from contextbot.train.options import TrainOptions


def near_items(n: int) -> list[evaluate.Item]:
    rng = random.Random(evaluate.EVAL_SEED)
    entities = load_facts(DEFAULT_FACTS)
    return [evaluate.make_item("near", rng, entities) for _ in range(n)]


def run(target: float = 0.99, minutes: float = 15.0, every: int = 50, items: int = 200,
        batch: int | None = None) -> dict:
    """Train until the 0-3-turns category reaches `target`; report the curve and the time.
    `batch` replaces the recipe's streams per step (the comparison in docs/experiments.md)."""
    conversations = near_items(items)
    curve: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        o = TrainOptions(out=str(Path(tmp) / "tta.safetensors"), valid=None, json=True,
                         checkpoint_every=every, minutes=minutes)
        o.batch = batch or o.batch

        def score(step: int, model) -> bool:
            session = ChatSession.load(o.out)
            by_cat = evaluate.run(session, conversations).by_category
            seconds = session.checkpoint.train_options["seconds"]
            curve.append({"step": step, "seconds": seconds, "near": by_cat["near"].accuracy})
            return by_cat["near"].accuracy >= target

        summary = train(o, Console(stderr=True, quiet=True), on_checkpoint=score)
    reached = next((p for p in curve if p["near"] >= target), None)
    return {"target": target, "batch": o.batch, "reached": reached is not None,
            "seconds": reached["seconds"] if reached else None,
            "limit_minutes": minutes, "curve": curve, "chars_per_sec": summary["chars_per_sec"]}
