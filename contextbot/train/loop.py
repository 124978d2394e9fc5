"""`contextbot train`: truncated backpropagation through time over parallel streams.

Three parts, in the order they run:

- `prepare`: read the corpus, train the tokenizer, label who "he" and "she" mean (the referent
  signal, text/referents.py), build the model and its optimizer, and with --resume put back
  everything the checkpoint saved (resume.py).
- `train_step`: one step: forward over a batch from the carried state, the weighted loss plus
  the referent head's loss, backward, clip, optimizer step, and detach the state.
- `fit`: the loop around it: the learning-rate schedule, the log, validation, checkpoints, and
  stopping at --steps, at --minutes, or at Ctrl-C.

Under torchrun the same code runs in every process, each on its share of the streams, with
DistributedDataParallel averaging the gradients; distributed.py holds that plumbing.
"""

from __future__ import annotations

import json
import math
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from ..errors import ContextbotError
from ..files import remove_stale_temporaries
from ..model import checkpoint
from ..model.network import RecurrentLM, State, detach_state
from ..text.corpus import CorpusStats, read_conversations
from ..text.facts import load_facts
from ..text.referents import Referents
from ..text.tokenizer import Tokenizer
from ..text.turns import ANSWER, QUESTION
from . import distributed, resume
from .batches import (
    IGNORE,
    Batch,
    BatchSchedule,
    ConversationBatches,
    Encoded,
    encode_conversation,
)
from .metrics import LN2, evaluate_bpc
from .options import TrainOptions, check_batch


def train(o: TrainOptions, console: Console | None = None,
          on_checkpoint: Callable[[int, RecurrentLM], bool] | None = None) -> dict | None:
    """Train (or resume) and return the summary that `--json` prints.

    `on_checkpoint(step, model)`, if given, runs after every periodic checkpoint with the clock
    stopped (its time counts in no figure); returning True stops training there. The benchmarks
    use it to measure time to accuracy.

    Under torchrun this is one rank of a DistributedDataParallel job (see distributed.py): only
    rank 0 prints, evaluates, writes the checkpoint and returns the summary; the others return None.
    """
    console = console or Console(stderr=True)
    world = distributed.detect()  # one process on its own, or one of torchrun's ranks
    run = prepare(o, world)
    if run.note:  # said once training starts, so that a run that fails in set-up prints only its error
        console.print(run.note, highlight=False, soft_wrap=True)
    if world.is_main and (stale := remove_stale_temporaries(run.out)):
        console.print(f"note: removed {len(stale)} temporary file(s) that a killed run left beside {run.out}",
                      highlight=False, soft_wrap=True)
    return fit(run, console, on_checkpoint)


# -- prepare -------------------------------------------------------------------------------------

@dataclass
class Run:
    """One training run: what `prepare` builds, and what `fit` and `train_step` move on."""

    o: TrainOptions
    world: distributed.World
    out: Path
    tok: Tokenizer
    corpus_sha256: str
    schedule: BatchSchedule | ConversationBatches  # step -> Batch
    valid: list[Encoded] | None  # the validation conversations; None: no validation
    referents: Referents | None  # None: no referent signal
    model: RecurrentLM
    net: nn.Module  # the model, or under torchrun its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    step: int = 0  # steps taken, by all runs of this model together
    state: State | None = None  # the carried hidden state, (layers, batch, hidden) each
    seconds_before: float = 0.0  # training time of the runs this one resumes
    note: str | None = None  # warnings to print once training starts, a line each
    saved_step: int | None = None  # the step of the last checkpoint in `out` from this model, if any
    finite: bool = True  # whether the last step's loss and gradient norm were finite (this rank's)
    loss_finite: bool = True  # the loss alone


def prepare(o: TrainOptions, world: distributed.World) -> Run:
    """Everything the loop needs, all checked before the first step; with --resume, as the
    checkpoint left it (and with the checkpoint's recipe in `o`).

    Every rank sets up on its own; then they join the process group together, or all stop
    (distributed.joined), so that no rank waits forever for one that failed here.
    """
    out = Path(o.out)
    with distributed.joined(world):
        o.validate()
        convs, stats = load_corpus(o.corpus)
        valid_convs = list(read_conversations(o.valid)) if o.valid else None
        saved = resume.load(out, o, stats.sha256) if o.resume else None
        check_batch(o, len(convs))  # before any stream is laid out
        world.check(o.batch)  # --batch is the total: every rank takes batch / world.size streams
        tok = saved.tokenizer if saved is not None else train_tokenizer(convs, o)
        referents, facts = find_referents(o, convs)
        if saved is not None:
            resume.check_referents(out, saved, referents.key() if referents is not None else "", facts)
        encoded = [encode_conversation(c, tok, o.answer_weight, referents) for c in convs]
        valid = [encode_conversation(c, tok, 1.0) for c in valid_convs] if valid_convs is not None else None
        schedule = batch_schedule(encoded, o, world.device)

        torch.manual_seed(o.seed)  # the same initial weights on every rank
        config = o.model_config(tok.vocab_size, referents.classes if referents is not None else 0)
        model = RecurrentLM(config).to(world.device)
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        step, state = (0, None) if saved is None else resume.restore(out, saved, model, opt, o.batch, world)
        world.seed_rng(o.seed, saved.train_tensors if saved is not None else None)
    net = world.wrap(model)  # DDP under torchrun: backward all-reduces the gradients
    model.train()
    notes = [o.valid_note] if o.valid_note else []
    if o.referent_weight > 0 and referents is None:
        notes.append(f"note: no facts file names anyone in {o.corpus} (looked for {facts}; pass --facts): "
                     "training without the referent signal")
    return Run(o=o, world=world, out=out, tok=tok, corpus_sha256=stats.sha256, schedule=schedule,
               valid=valid, referents=referents, model=model, net=net, opt=opt, step=step, state=state,
               seconds_before=saved.train_options.get("seconds", 0.0) if saved is not None else 0.0,
               note="\n".join(notes) if notes and world.is_main else None,
               saved_step=saved.step if saved is not None else None)


def load_corpus(path: str) -> tuple[list, CorpusStats]:
    """The corpus's conversations, and its statistics (its sha256 ties a checkpoint to it)."""
    stats = CorpusStats()
    convs = list(read_conversations(path, stats))
    return convs, stats


def train_tokenizer(convs: list, o: TrainOptions) -> Tokenizer:
    """A tokenizer trained on the corpus's lines, written as the turn format writes them."""
    lines = (line for c in convs for q, a in c.turns for line in (f"{QUESTION}{q}", f"{ANSWER}{a}"))
    return Tokenizer.train(lines, kind=o.tokenizer, vocab_size=o.vocab_size)


def find_referents(o: TrainOptions, convs: list) -> tuple[Referents | None, str | Path]:
    """The people the referent loss knows, from --facts or the facts.json beside the corpus (where
    `corpus build` puts it); None where the loss is off, or where no facts file names anyone in
    the corpus. Also returns the facts file looked for, for the messages."""
    facts = o.facts or Path(o.corpus).with_name("facts.json")
    if o.referent_weight > 0 and (o.facts or Path(facts).is_file()):
        referents = Referents(load_facts(facts))
        if referents.names_any(convs):
            return referents, facts
    return None, facts


def batch_schedule(encoded: list[Encoded], o: TrainOptions, device: torch.device):
    """Which batches training walks: whole conversations (`--seq-len 0`), or streams of chunks.

    Streams hold conversations back to back, and the scan (model/recurrence/scan.py) resets the
    state mid-chunk where one ends. PyTorch's fused kernels cannot reset mid-chunk, but some keep
    up with the scan even with part of their work spent on padding: cuDNN on a GPU, and oneDNN's
    LSTM on the CPU. Those get streams padded to whole chunks (`align`), so every reset falls on a
    chunk's first token and the fused kernel runs.
    """
    if o.seq_len == 0:
        return ConversationBatches(encoded, o.batch, o.seed)
    align = device.type == "cuda" or o.cell == "lstm"
    return BatchSchedule(encoded, o.batch, o.seq_len, o.seed, align=align)


# -- one step ------------------------------------------------------------------------------------

def train_step(run: Run, b: Batch) -> float:
    """One step of truncated BPTT on this rank's streams of the batch, from the carried state.
    Returns the loss on the language model's real targets, in nats summed, for the log."""
    device, o = run.world.device, run.o
    x, y = b.inputs.to(device), b.targets.to(device)  # (batch, seq) token ids
    w, keep = b.weights.to(device), b.keep.to(device)  # (batch, seq); keep: 0 where a conversation starts

    if run.referents is None:
        logits, run.state = run.net(x, run.state, keep=keep)  # (batch, seq, vocab)
    else:  # also who "he" and "she" mean, read off the state: (batch, seq, 2, classes)
        logits, run.state, who = run.net(x, run.state, referents=True, keep=keep)
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(w)
    loss = batch_loss(ce, w, run.world)  # the weighted mean over all ranks' streams
    if run.referents is not None:
        r = b.referents.to(device)  # (batch, seq, 2) classes, IGNORE where unlabelled
        ce_who = F.cross_entropy(who.flatten(0, 2), r.flatten(), ignore_index=IGNORE,
                                 reduction="none").view_as(r)
        loss = loss + o.referent_weight * batch_loss(ce_who, (r != IGNORE).float(), run.world)

    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), o.clip)
    # A diverged step (NaN or infinite loss or gradient norm) is noted here, in one read from the
    # device, and `fit` stops the run before anything is saved.
    loss_ok, norm_ok = torch.stack([torch.isfinite(loss.detach()), torch.isfinite(norm)]).tolist()
    run.loss_finite, run.finite = loss_ok, loss_ok and norm_ok
    run.opt.step()
    run.state = detach_state(run.state)  # truncated BPTT: keep the values, cut the graph
    run.step += 1
    return float((ce.detach() * (w > 0)).sum())


def batch_loss(ce: torch.Tensor, w: torch.Tensor, world: distributed.World) -> torch.Tensor:
    """The weighted mean loss over the whole batch, Σ w·ce / Σ w; ce and w are (batch, seq).

    Under DDP a rank holds only its share of the streams and DDP *averages* the ranks' gradients,
    so each rank divides by the weight of all ranks' streams and multiplies by the number of
    ranks: the averaged gradient is then the single-process one (derivation: distributed.py).
    """
    return (ce * w).sum() / world.all_sum(w.sum()).clamp_min(1e-8) * world.size


def learning_rate(o: TrainOptions, step: int) -> float:
    """Linear warm-up, then cosine decay from lr to lr * min_lr_ratio at `steps`."""
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    t = min(1.0, (step - o.warmup) / max(1, o.steps - o.warmup))
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


# -- fit -----------------------------------------------------------------------------------------

def fit(run: Run, console: Console,
        on_checkpoint: Callable[[int, RecurrentLM], bool] | None = None) -> dict | None:
    """Step until --steps, --minutes, on_checkpoint or Ctrl-C says stop; validate and save on the
    way and at the end. Returns the summary on rank 0, None on the others."""
    o, world = run.o, run.world
    clock, log = Clock(o.minutes), Log()
    progress = progress_bar(console, o, world)
    task = progress.add_task("train", total=o.steps, completed=run.step, info="")
    stop = False
    try:
        with progress, CtrlC(enabled=not world.active) as ctrl_c:
            while run.step < o.steps and not stop and not ctrl_c.requested:
                b = world.shard(run.schedule.get(run.step))  # this rank's streams (all of them alone)
                for g in run.opt.param_groups:
                    g["lr"] = learning_rate(o, run.step)
                nats = train_step(run, b)

                # The whole job's loss and characters; one rank out of time stops every rank, and
                # one rank's non-finite loss or gradient stops every rank, at the same step.
                nats, chars, late_ranks, bad_loss, bad_grad = world.sum(
                    nats, float(b.chars.sum()), float(clock.late()), float(not run.loss_finite),
                    float(not run.finite))
                if bad_loss > 0 or not math.isfinite(nats):
                    diverged(run, "the loss is")
                if bad_grad > 0:
                    diverged(run, "the gradient norm is")
                stop = late_ranks > 0
                log.add(nats, chars)
                if world.is_main and run.valid and (run.step % o.eval_every == 0 or run.step == o.steps):
                    log.valid_bpc = evaluate_bpc(run.model, run.valid, world.device)
                    progress.console.print(log.validation_line(run.step, clock), highlight=False)
                progress.update(task, completed=run.step, info=log.line(clock))
                if run.step % o.checkpoint_every == 0:
                    save(run, clock)
                    stop = stop or call_back(on_checkpoint, run, clock)
    except KeyboardInterrupt:
        # Mid-step (a second Ctrl-C, or any Ctrl-C under torchrun, where the other ranks may be
        # anywhere or gone): what is in memory may mix two steps. The last checkpoint stands.
        if world.is_main:
            again = "the same torchrun command and --resume" if world.active else resume_command(o, run.out)
            console.print(f"interrupted during step {run.step + 1}; {run.out} holds the last checkpoint. "
                          f"Resume with: {again}", highlight=False, soft_wrap=True)
        raise SystemExit(130)

    save(run, clock)  # stopped between two steps, Ctrl-C too: a consistent state to save
    seconds = clock.elapsed()
    world.leave()  # no more collectives: rank 0 alone evaluates and reports
    if ctrl_c.requested:
        console.print(f"interrupted at step {run.step}; saved {run.out}. Resume with: "
                      f"{resume_command(o, run.out)}", highlight=False, soft_wrap=True)  # one line: a command to copy
        raise SystemExit(130)
    if not world.is_main:
        return None
    if run.valid and log.valid_bpc is None:
        log.valid_bpc = evaluate_bpc(run.model, run.valid, world.device)
    result = summary(run, log, seconds)
    if not o.json:
        console.print(f"saved {run.out} at step {run.step} ({seconds:.0f} s, "
                      f"{result['chars_per_sec']:,.0f} chars/s, valid {result['valid_bpc']} bpc)")
    return result


def call_back(on_checkpoint: Callable[[int, RecurrentLM], bool] | None, run: Run, clock: Clock) -> bool:
    """`on_checkpoint(step, model)`, with the clock stopped; True: stop training. Only in a
    single process, where stopping early cannot leave other ranks waiting."""
    if on_checkpoint is None or run.world.size > 1:
        return False
    with clock.stopped():
        return bool(on_checkpoint(run.step, run.model))


def diverged(run: Run, what: str) -> None:
    """Stop a run that has diverged, every rank together (the caller's test is on values all
    ranks share), without saving: the checkpoint on disk stays the last good one. Rank 0 says so
    in one line; the other ranks exit quietly."""
    run.world.leave()
    if not run.world.is_main:
        raise SystemExit(2)
    if run.saved_step is not None:
        kept = f"{run.out} still holds the last good checkpoint (step {run.saved_step})"
    else:
        kept = f"nothing was saved to {run.out}"
    raise ContextbotError(f"step {run.step}: {what} not finite (the run diverged; try a lower --lr); {kept}")


def all_finite(run: Run) -> tuple[bool, str]:
    """Whether this rank's weights, optimizer state and carried state are all finite, and if not,
    which of them is not."""
    parts = (("the weights are", list(run.model.parameters())),
             ("the optimizer state is", list(resume.optimizer_tensors(run.opt).values())),
             ("the carried state is", list(resume.state_tensors(run.state).values())))
    for what, tensors in parts:
        if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors):
            return False, what
    return True, ""


def save(run: Run, clock: Clock) -> None:
    """Write the checkpoint: weights, tokenizer, and all that --resume needs (resume.py). Every
    rank takes part, since the gathers are collectives; rank 0 writes. Weights, optimizer state
    or carried state that are not finite are never written: the run stops (on every rank) and the
    last good checkpoint stays."""
    world = run.world
    finite, what = all_finite(run)
    if world.sum(float(not finite))[0] > 0:
        diverged(run, what or "another process's state is")
    tensors = (resume.optimizer_tensors(run.opt) | resume.state_tensors(world.gather_state(run.state))
               | world.gather_rng())
    if not world.is_main:
        return
    meta = resume.metadata(run.o, referents=run.referents.key() if run.referents is not None else "",
                           referent_names=[e.name for e in run.referents.entities] if run.referents is not None else None,
                           seconds=run.seconds_before + clock.elapsed(),  # all runs of this model together
                           device=world.device, processes=world.size)
    checkpoint.save(run.out, run.model, run.tok, step=run.step, corpus_sha256=run.corpus_sha256,
                    train_options=meta, train_tensors=tensors)
    run.saved_step = run.step


def summary(run: Run, log: Log, seconds: float) -> dict:
    """What `--json` prints."""
    o = run.o
    return {
        "steps": run.step, "chars": int(log.chars), "seconds": round(seconds, 2),
        "chars_per_sec": round(log.chars / max(seconds, 1e-9), 1),
        "train_bpc": round(log.train_bpc, 4) if log.recent else None,
        "valid_bpc": round(log.valid_bpc, 4) if log.valid_bpc is not None else None,
        "config": {"cell": o.cell, "vocab_size": run.tok.vocab_size, "embed": o.embed,
                   "hidden": o.hidden, "layers": o.layers, "batch": o.batch, "seq_len": o.seq_len,
                   "referents": run.model.config.referents},
    }


def resume_command(o: TrainOptions, out: Path) -> str:
    """The command that continues this run, for the user to copy: every flag that is not in the
    checkpoint's recipe and that the run needs (the data, the output, when to stop, evaluate and
    save, the summary), quoted for the shell. The recipe comes from the checkpoint."""
    argv = ["contextbot", "train", "--corpus", o.corpus, "--valid", o.valid or "none"]
    if o.facts:
        argv += ["--facts", o.facts]
    argv += ["--out", str(out), "--steps", str(o.steps)]
    if o.minutes is not None:
        argv += ["--minutes", repr(o.minutes)]
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    for name in ("checkpoint_every", "eval_every"):
        if getattr(o, name) != defaults[name]:
            argv += ["--" + name.replace("_", "-"), str(getattr(o, name))]
    if o.json:
        argv.append("--json")
    return shlex.join(argv + ["--resume"])


def progress_bar(console: Console, o: TrainOptions, world: distributed.World) -> Progress:
    """Rank 0's progress bar; none under --json unless stderr is a terminal."""
    return Progress(TextColumn("step {task.completed:.0f}/{task.total:.0f}"), BarColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                    console=console, transient=False,
                    disable=not world.is_main or (o.json and not console.is_terminal))


class Clock:
    """Training time: stopped while `stopped()` lasts (on_checkpoint's time counts in no figure);
    `late()` once --minutes are up."""

    def __init__(self, minutes: float | None):
        self.start = time.perf_counter()
        self.limit = minutes * 60 if minutes else None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def late(self) -> bool:
        return self.limit is not None and self.elapsed() >= self.limit

    @contextmanager
    def stopped(self) -> Iterator[None]:
        paused = time.perf_counter()
        yield
        self.start += time.perf_counter() - paused  # as if the pause had not happened


@dataclass
class Log:
    """What the log, the progress bar and the summary report."""

    chars: float = 0.0  # real characters trained on (padding excluded), all ranks
    recent: list[float] = field(default_factory=list)  # the last 50 steps' bits per character
    valid_bpc: float | None = None  # the last validation

    def add(self, nats: float, chars: float) -> None:
        self.chars += chars
        self.recent = (self.recent + [nats / max(chars, 1) / LN2])[-50:]

    @property
    def train_bpc(self) -> float:
        return sum(self.recent) / len(self.recent)

    def speed(self, clock: Clock) -> float:
        return self.chars / clock.elapsed()

    def validation_line(self, step: int, clock: Clock) -> str:
        return (f"step {step}: train {self.train_bpc:.3f} bpc, valid {self.valid_bpc:.3f} bpc, "
                f"{self.speed(clock):,.0f} chars/s")

    def line(self, clock: Clock) -> str:
        """The progress bar's text."""
        return (f"loss {self.train_bpc:.3f} bpc  {self.speed(clock):,.0f} chars/s"
                + (f"  valid {self.valid_bpc:.3f} bpc" if self.valid_bpc is not None else ""))


class CtrlC:
    """Ctrl-C while training: finish the step under way, then save and stop.

    Python's own handler raises KeyboardInterrupt wherever the loop happens to be: after
    `opt.step()` but before the step count moves on, or after the forward pass has moved the
    carried state on. A checkpoint saved there mixes two steps, and `--resume` would not continue
    exactly. So the first Ctrl-C only sets `requested`, which the loop reads between steps; a
    second one interrupts at once, and the last checkpoint written stands. Under torchrun every
    rank must stop at the same step, so there the old behaviour stays (`enabled=False`).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def __enter__(self) -> CtrlC:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)


def main_json(summary: dict) -> None:
    """`--json`: the summary as one line on stdout."""
    sys.stdout.write(json.dumps(summary) + "\n")
