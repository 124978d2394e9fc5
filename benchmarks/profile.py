"""Where one training step of the default recipe spends its time, part by part.

    python -m benchmarks.profile             # ~20 timed steps; writes the table into docs/performance.md
    python -m benchmarks.profile --steps 5 --no-write   # prints the table only

The step is `contextbot train`'s own (loop.train_step), taken apart into the same calls in the
same order, each timed with a clock around it:

- **data**: building the batch: the schedule's chunk for the step, moved to the device;
- **recurrence forward**: embedding, input projection and the recurrence, through RecurrentLM
  with `keep` (the scan on a CPU), as `RecurrentLM.forward` runs them in training;
- **output layer and loss**: the output layer, the weighted cross-entropy, and their backward;
- **referent head**: the referent head, its loss, and their backward;
- **recurrence backward**: the gradient from the hidden states back through the recurrence,
  the input projection and the embedding;
- **optimizer**: zeroing the gradients, clipping, the finiteness check, AdamW's step, and
  detaching the carried state.

The heads run on a detached copy of the recurrence's output so that their backward and the
recurrence's can be timed apart; the gradients are the same as in one backward pass. The whole
step (`train_step` itself, unchanged) is timed over the same number of steps for comparison.
Medians over the timed steps, after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from contextbot.analysis.results import machine as results_machine
from contextbot.files import replace_block
from contextbot.model.network import detach_state, mask_state
from contextbot.paths import SHIPPED as REPO
from contextbot.train import distributed
from contextbot.train.batches import IGNORE
from contextbot.train.loop import Run, batch_loss, learning_rate, prepare, train_step
from contextbot.train.options import TrainOptions

PAGE = REPO / "docs" / "performance.md"
START, END = "<!-- profile:start -->", "<!-- profile:end -->"
PARTS = ("data", "recurrence forward", "recurrence backward", "output layer and loss",
         "referent head", "optimizer")


def recurrence(model, tokens: torch.Tensor, state, keep: torch.Tensor):
    """The part of `RecurrentLM.forward` before the heads: (batch, seq, hidden) and the state."""
    if keep[:, 1:].all():
        if state is not None:
            state = mask_state(state, keep[:, 0])
        return model._recur(model.drop(model.embedding(tokens)), state)
    if tokens.device.type == "cpu":
        return model._scan(tokens, state, keep)
    return model._by_stretches(tokens, state, keep)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_by_parts(run: Run) -> dict[str, float]:
    """One training step as loop.train_step takes it, each part timed; seconds by part."""
    device, o, model = run.world.device, run.o, run.model
    times: dict[str, float] = {}

    def timed(part: str, t: float) -> float:
        _sync(device)
        now = time.perf_counter()
        times[part] = times.get(part, 0.0) + now - t
        return now

    t = time.perf_counter()
    b = run.world.shard(run.schedule.get(run.step))
    for g in run.opt.param_groups:
        g["lr"] = learning_rate(o, run.step)
    x, y = b.inputs.to(device), b.targets.to(device)
    w, keep = b.weights.to(device), b.keep.to(device)
    r = b.referents.to(device) if run.referents is not None else None
    t = timed("data", t)

    out, state = recurrence(model, x, run.state, keep)
    t = timed("recurrence forward", t)

    h = out.detach().requires_grad_()  # the heads' input: their backward stops here
    logits = model.head(model.drop(h))
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(w)
    loss = batch_loss(ce, w, run.world)
    t = timed("output layer and loss", t)
    run.opt.zero_grad(set_to_none=True)  # where train_step does it: before the backward pass
    t = timed("optimizer", t)
    loss.backward()
    t = timed("output layer and loss", t)

    if r is not None:
        who = model.referent_head(h).unflatten(-1, (2, model.config.referents))
        ce_who = F.cross_entropy(who.flatten(0, 2), r.flatten(), ignore_index=IGNORE,
                                 reduction="none").view_as(r)
        loss_who = o.referent_weight * batch_loss(ce_who, (r != IGNORE).float(), run.world)
        loss_who.backward()
        t = timed("referent head", t)

    out.backward(h.grad)
    t = timed("recurrence backward", t)

    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip)
    torch.stack([torch.isfinite(loss.detach()), torch.isfinite(norm)]).tolist()
    run.opt.step()
    run.state = detach_state(state)
    run.step += 1
    float((ce.detach() * (w > 0)).sum())
    timed("optimizer", t)
    return times


def profile(steps: int = 20, warmup: int = 5) -> dict:
    """Median seconds per part of a training step of the default recipe, and of the whole step."""
    with tempfile.TemporaryDirectory() as tmp:
        o = TrainOptions(out=str(Path(tmp) / "profile.safetensors"), valid=None)
        run = prepare(o, distributed.detect())
        model = run.model
        model.train()
        for _ in range(warmup):
            step_by_parts(run)
        by_part: dict[str, list[float]] = {p: [] for p in PARTS}
        for _ in range(steps):
            for part, seconds in step_by_parts(run).items():
                by_part[part].append(seconds)
        whole = []
        for _ in range(steps):
            t = time.perf_counter()
            b = run.world.shard(run.schedule.get(run.step))
            for g in run.opt.param_groups:
                g["lr"] = learning_rate(o, run.step)
            train_step(run, b)
            _sync(run.world.device)
            whole.append(time.perf_counter() - t)
    parts = {p: statistics.median(v) for p, v in by_part.items() if v}
    return {"machine": f"{results_machine()}, {torch.get_num_threads()} threads",
            "date": time.strftime("%Y-%m-%d"), "steps": steps, "batch": o.batch, "seq_len": o.seq_len,
            "cell": o.cell, "hidden": o.hidden, "parts": parts,
            "sum": sum(parts.values()), "whole_step": statistics.median(whole)}


def markdown(p: dict) -> str:
    total = p["sum"]
    lines = [f"Measured by `python -m benchmarks.profile` on {p['machine']}, {p['date']}: "
             f"the default recipe ({p['cell'].upper()} of {p['hidden']} units, {p['batch']} streams of "
             f"{p['seq_len']} characters), median of {p['steps']} steps.", "",
             "| part of a training step | ms | share |", "|---|---|---|"]
    for part in sorted(p["parts"], key=p["parts"].get, reverse=True):
        s = p["parts"][part]
        lines.append(f"| {part} | {s * 1e3:.2f} | {s / total:.0%} |")
    lines.append(f"| sum of the parts | {total * 1e3:.2f} | 100% |")
    lines.append(f"| whole step (`train_step`, timed on its own) | {p['whole_step'] * 1e3:.2f} | |")
    return "\n".join(lines)


def write_page(p: dict, page: Path = PAGE) -> bool:
    """Replace the profile block of docs/performance.md; False if the page or its block is missing."""
    return replace_block(page, START, END, markdown(p))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args(argv)
    p = profile(args.steps, args.warmup)
    print(markdown(p))
    if not args.no_write:
        page = PAGE.relative_to(REPO)
        print(f"{page} updated" if write_page(p) else f"{page} has no profile block", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
