"""`contextbot train`: truncated BPTT over parallel streams, with exact resume.

One readable loop: batch, reset the state where conversations start, forward, weighted loss (plus
the referent head's loss, referents.py), backward, clip, step, detach, log, evaluate, checkpoint,
stop. Everything a resumed run needs to
continue bit for bit on CPU (Adam's moments, the carried state, the RNG, the step) is saved in the
checkpoint; the batch for a step is a pure function of (seed, step), so it need not be saved.

Under torchrun the same loop runs in every process, each on its share of the streams, with
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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ..model import checkpoint
from . import distributed
from ..paths import DEFAULT_TRAIN, DEFAULT_VALID
from ..text.corpus import CorpusStats, read_conversations
from .metrics import LN2, evaluate_bpc
from .batches import IGNORE, BatchSchedule, ConversationBatches, Encoded, encode_conversation
from ..errors import ContextbotError
from ..files import remove_stale_temporaries
from ..text.facts import load_facts
from ..model.network import ModelConfig, RecurrentLM, State, detach_state
from ..text.referents import Referents
from ..text.tokenizer import Tokenizer



@dataclass
class TrainOptions:
    """The recipe. These defaults are the shipped GRU's recipe (see README, "Training")."""

    corpus: str = str(DEFAULT_TRAIN)
    valid: str | None = str(DEFAULT_VALID)
    out: str = "checkpoints/model.safetensors"
    cell: str = "gru"
    hidden: int = 256
    layers: int = 1
    embed: int = 64
    dropout: float = 0.0
    batch: int = 16  # 16 streams of 192 characters: 99% on pronoun questions sooner (README, Training)
    seq_len: int = 192
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 30
    weight_decay: float = 0.0
    clip: float = 1.0
    answer_weight: float = 3.0
    referent_weight: float = 1.0  # the auxiliary "who is he / she" loss (referents.py); 0 = off
    facts: str | None = None  # the people that loss knows; None: facts.json beside the corpus
    chrono_tmax: float = 400.0
    chrono_fraction: float = 1.0
    chrono_spread: str = "log"
    steps: int = 4000
    minutes: float | None = None
    seed: int = 0
    checkpoint_every: int = 250
    eval_every: int = 500
    tokenizer: str = "char"
    vocab_size: int = 2000
    resume: bool = False
    json: bool = False

    # Options that shape the model or the data: fixed by the checkpoint when resuming.
    RECIPE = ("cell", "hidden", "layers", "embed", "dropout", "batch", "seq_len", "lr",
              "min_lr_ratio", "warmup", "weight_decay", "clip", "answer_weight", "referent_weight",
              "chrono_tmax", "chrono_fraction", "chrono_spread", "seed", "tokenizer", "vocab_size")

    def recipe(self) -> dict:
        return {k: getattr(self, k) for k in self.RECIPE}

    def validate(self) -> None:
        if self.seq_len < 0:
            raise ContextbotError("--seq-len must be at least 1, or 0 for whole conversations")
        for name in ("hidden", "layers", "embed", "batch", "steps", "checkpoint_every",
                     "eval_every", "warmup", "vocab_size"):
            if getattr(self, name) < 1:
                raise ContextbotError(f"--{name.replace('_', '-')} must be at least 1")
        if not self.lr > 0:
            raise ContextbotError("--lr must be positive")
        if self.minutes is not None and not self.minutes > 0:
            raise ContextbotError("--minutes must be positive")
        if not 0 <= self.dropout < 1:
            raise ContextbotError("--dropout must be in [0, 1)")
        if not self.referent_weight >= 0:
            raise ContextbotError("--referent-weight must be at least 0")


class CtrlC:
    """Ctrl-C while training: finish the step under way, then save and stop.

    Python's own handler raises KeyboardInterrupt wherever the loop happens to be: after
    `opt.step()` but before `step += 1`, or after the forward pass has moved the carried state on.
    A checkpoint saved there mixes two steps, and `--resume` would not continue exactly. So the
    first Ctrl-C only sets `requested`, which the loop reads between steps; a second one
    interrupts at once, and the last checkpoint written stands. Under torchrun every rank must stop
    at the same step, so there the old behaviour stays (`enabled=False`).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def __enter__(self) -> "CtrlC":
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


def learning_rate(o: TrainOptions, step: int) -> float:
    """Linear warm-up, then cosine decay from lr to lr * min_lr_ratio at `steps`."""
    if step < o.warmup:
        return o.lr * (step + 1) / o.warmup
    t = min(1.0, (step - o.warmup) / max(1, o.steps - o.warmup))
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def batch_loss(ce: torch.Tensor, w: torch.Tensor, world: distributed.World) -> torch.Tensor:
    """The weighted mean loss over the whole batch, Σ w·ce / Σ w; ce and w are (batch, seq).

    Under DDP a rank holds only its share of the streams and DDP *averages* the ranks' gradients,
    so each rank divides by the weight of all ranks' streams and multiplies by the number of
    ranks: the averaged gradient is then the single-process one (derivation: distributed.py).
    """
    return (ce * w).sum() / world.all_sum(w.sum()).clamp_min(1e-8) * world.size


def batch_schedule(encoded: list[Encoded], o: TrainOptions, device: torch.device):
    """Which batches training walks: whole conversations (`--seq-len 0`), or streams of chunks.

    Streams hold conversations back to back, reset mid-chunk by the scan (scan.py), unless
    PyTorch has a fused kernel for the cell that keeps up with the scan even with a fifth of the
    work going on padding: cuDNN on a GPU, and oneDNN's LSTM on the CPU (measured on 2 cores:
    0.35 s a step padded, against 0.58 through the scan before its compiled kernels; since them,
    18-21k real characters a second either way). Those get streams aligned to whole chunks.
    """
    if o.seq_len == 0:
        return ConversationBatches(encoded, o.batch, o.seed)
    align = device.type == "cuda" or o.cell == "lstm"
    return BatchSchedule(encoded, o.batch, o.seq_len, o.seed, align=align)


def load_corpus(path: str) -> tuple[list, CorpusStats]:
    stats = CorpusStats()
    convs = list(read_conversations(path, stats))
    return convs, stats


def _optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for i, s in opt.state_dict()["state"].items():
        for k, v in s.items():
            out[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    if len(state) != len(sd["param_groups"][0]["params"]):
        raise ContextbotError("checkpoint has no complete optimizer state to resume from")
    sd["state"] = state
    opt.load_state_dict(sd)


def _state_tensors(state: State | None) -> dict[str, torch.Tensor]:
    if state is None:
        return {}
    if isinstance(state, tuple):
        return {"state_h": state[0], "state_c": state[1]}
    return {"state_h": state}


def _saved_recipe(out: Path, saved: dict) -> dict:
    """The recipe a checkpoint was trained with, checked before it is used: only recipe options,
    each of its default's type (a file from elsewhere must not set --out, or hidden="abc")."""
    recipe = saved.get("recipe")
    if not isinstance(recipe, dict):
        raise ContextbotError(f"{out}: checkpoint has no training state to resume from")
    defaults = TrainOptions()
    for k, v in recipe.items():
        d = getattr(defaults, k) if k in TrainOptions.RECIPE else None
        if d is None or not (type(v) is type(d) or (type(d) is float and type(v) is int)):
            raise ContextbotError(f"{out}: the training recipe in the checkpoint is damaged ({k}={v!r})")
    return recipe


def _check_training_state(out: Path, t: dict[str, torch.Tensor], model: RecurrentLM, batch: int) -> None:
    """Check the saved optimizer moments, carried state and RNG against the model now, so that a
    damaged file is one line here rather than a crash somewhere in the first step."""
    params = list(model.parameters())
    c = model.config
    for key, v in t.items():
        want, dtype = None, None
        if key.startswith("optim."):
            i, _, name = key[len("optim."):].partition(".")
            if not i.isdigit() or int(i) >= len(params):
                raise ContextbotError(f"{out}: the training state has an unknown tensor {key}")
            want = () if name == "step" else tuple(params[int(i)].shape)
        elif key in ("state_h", "state_c"):
            want = (c.layers, batch, c.hidden)
        elif key in ("rng", "rng_cuda", "rng_ranks", "rng_cuda_ranks"):  # see World.gather_rng
            row = distributed.CUDA_RNG_SHAPE if "cuda" in key else tuple(torch.get_rng_state().shape)
            ranks = key.endswith("_ranks")  # one row a rank
            want, dtype = ((v.shape[0] if v.dim() == 2 else -1, *row) if ranks else row), torch.uint8
        if want is not None and (tuple(v.shape) != want or (dtype is not None and v.dtype != dtype)
                                 or (v.is_floating_point() and not torch.isfinite(v).all())):
            raise ContextbotError(f"{out}: the training state is damaged ({key} has shape "
                                  f"{tuple(v.shape)} {v.dtype}, the run needs {want})")


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
    device = world.device
    out = Path(o.out)

    # Every rank sets up on its own; then they join the process group together, or all stop.
    with distributed.joined(world):
        o.validate()

        # -- data -----------------------------------------------------------------------------
        convs, stats = load_corpus(o.corpus)
        resumed = None
        if o.resume:
            if not out.exists():
                raise ContextbotError(f"{out}: nothing to resume (no such checkpoint)")
            resumed = checkpoint.load(out)
            recipe = _saved_recipe(out, resumed.train_options)
            recipe.setdefault("referent_weight", 0.0)  # checkpoints from before the referent signal
            if resumed.metadata.get("corpus_sha256") != stats.sha256:
                raise ContextbotError(f"{out}: was trained on a different corpus than {o.corpus}")
            for k, v in recipe.items():
                setattr(o, k, v)
            o.validate()
            tok = resumed.tokenizer
        else:
            lines = (f"{p}{t}" for c in convs for q, a in c.turns for p, t in (("Q: ", q), ("A: ", a)))
            tok = Tokenizer.train(lines, kind=o.tokenizer, vocab_size=o.vocab_size)
        world.check(o.batch)  # --batch is the total: every rank takes batch / world.size streams
        referents = None
        facts = o.facts or Path(o.corpus).with_name("facts.json")  # where `corpus build` puts it
        if o.referent_weight > 0 and (o.facts or Path(facts).is_file()):
            referents = Referents(load_facts(facts))
            if not referents.names_any(convs):
                referents = None
        referents_key = referents.key() if referents is not None else ""
        if resumed is not None and resumed.train_options.get("referents", referents_key) != referents_key:
            raise ContextbotError(f"{out}: was trained with other people for the referent signal than {facts} "
                                  "names (or in another order): resume with the --facts it was trained with")
        # Said once training starts, so that a run that fails in set-up prints only its error.
        note = (f"note: no facts file names anyone in {o.corpus} (looked for {facts}; pass --facts): "
                "training without the referent signal"
                if o.referent_weight > 0 and referents is None and world.is_main else None)
        encoded = [encode_conversation(c, tok, o.answer_weight, referents) for c in convs]
        valid_encoded = None
        if o.valid:
            valid_encoded = [encode_conversation(c, tok, 1.0) for c in read_conversations(o.valid)]
        schedule = batch_schedule(encoded, o, device)

        # -- model and optimizer --------------------------------------------------------------
        torch.manual_seed(o.seed)  # the same initial weights on every rank
        config = ModelConfig(vocab_size=tok.vocab_size, cell=o.cell, embed=o.embed, hidden=o.hidden,
                             layers=o.layers, dropout=o.dropout, chrono_tmax=o.chrono_tmax,
                             chrono_fraction=o.chrono_fraction, chrono_spread=o.chrono_spread,
                             referents=referents.classes if referents is not None else 0)
        model = RecurrentLM(config).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        start, state = 0, None
        if resumed is not None:
            if config != resumed.config:
                raise ContextbotError(f"{out}: the training recipe disagrees with the model in the checkpoint")
            _check_training_state(out, resumed.train_tensors, model, o.batch)
            model.load_state_dict(resumed.model.state_dict())
            _restore_optimizer(opt, resumed.train_tensors)
            start = resumed.step
            t = resumed.train_tensors
            if "state_h" in t:
                state = (t["state_h"].to(device), t["state_c"].to(device)) if "state_c" in t else t["state_h"].to(device)
                state = world.shard_state(state)  # every stream's state was saved: take ours
        world.seed_rng(o.seed, resumed.train_tensors if resumed is not None else None)
    if note:
        console.print(note, highlight=False, soft_wrap=True)
    net = world.wrap(model)  # DDP under torchrun: backward all-reduces the gradients
    model.train()

    seconds_before = resumed.train_options.get("seconds", 0.0) if resumed is not None else 0.0

    def save(step: int) -> None:
        # Every rank takes part (the gathers are collectives); rank 0 writes.
        tensors = _optimizer_tensors(opt) | _state_tensors(world.gather_state(state)) | world.gather_rng()
        if not world.is_main:
            return
        seconds = seconds_before + time.perf_counter() - t0  # all runs of this model together
        checkpoint.save(out, model, tok, step=step, corpus_sha256=stats.sha256,
                        train_options={"recipe": o.recipe(), "steps": o.steps, "corpus": o.corpus,
                                       "referents": referents_key,
                                       "seconds": round(seconds, 1), "device": str(device),
                                       "threads": torch.get_num_threads(),
                                       "processes": world.size},
                        train_tensors=tensors)

    if world.is_main and (stale := remove_stale_temporaries(out)):
        console.print(f"note: removed {len(stale)} temporary file(s) that a killed run left beside {out}",
                      highlight=False, soft_wrap=True)

    # -- the loop -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    deadline = t0 + o.minutes * 60 if o.minutes else None
    step, chars_seen, recent, valid_bpc, out_of_time = start, 0, [], None, False
    progress = Progress(TextColumn("step {task.completed:.0f}/{task.total:.0f}"), BarColumn(),
                        TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                        console=console, transient=False,
                        disable=not world.is_main or (o.json and not console.is_terminal))
    task = progress.add_task("train", total=o.steps, completed=start, info="")
    try:
        with progress, CtrlC(enabled=not world.active) as ctrl_c:
            while step < o.steps and not out_of_time and not ctrl_c.requested:
                b = world.shard(schedule.get(step))  # this rank's streams (all of them alone)
                x, y = b.inputs.to(device), b.targets.to(device)
                w, keep = b.weights.to(device), b.keep.to(device)  # keep: 0 where a conversation starts
                for g in opt.param_groups:
                    g["lr"] = learning_rate(o, step)

                if referents is None:
                    logits, state = net(x, state, keep=keep)  # (batch, seq, vocab)
                else:  # also who "he" and "she" mean, read off the state: (batch, seq, 2, classes)
                    logits, state, who = net(x, state, referents=True, keep=keep)
                ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(w)
                loss = batch_loss(ce, w, world)  # the weighted mean over all ranks' streams
                if referents is not None:
                    r = b.referents.to(device)
                    ce_who = F.cross_entropy(who.flatten(0, 2), r.flatten(), ignore_index=IGNORE,
                                             reduction="none").view_as(r)
                    loss = loss + o.referent_weight * batch_loss(ce_who, (r != IGNORE).float(), world)

                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip)
                opt.step()
                state = detach_state(state)  # truncated BPTT: keep the values, cut the graph
                step += 1

                # The whole job's loss and characters; one rank out of time stops every rank.
                late = deadline is not None and time.perf_counter() >= deadline
                nats, n_chars, late_ranks = world.sum(float((ce.detach() * (w > 0)).sum()),
                                                      float(b.chars.sum()), float(late))
                out_of_time = late_ranks > 0
                chars_seen += n_chars
                recent = (recent + [nats / max(n_chars, 1) / LN2])[-50:]
                elapsed = time.perf_counter() - t0
                if world.is_main and valid_encoded and (step % o.eval_every == 0 or step == o.steps):
                    valid_bpc = evaluate_bpc(model, valid_encoded, device)
                    progress.console.print(
                        f"step {step}: train {sum(recent) / len(recent):.3f} bpc, valid "
                        f"{valid_bpc:.3f} bpc, {chars_seen / elapsed:,.0f} chars/s", highlight=False)
                info = (f"loss {sum(recent) / len(recent):.3f} bpc  "
                        f"{chars_seen / elapsed:,.0f} chars/s"
                        + (f"  valid {valid_bpc:.3f} bpc" if valid_bpc is not None else ""))
                progress.update(task, completed=step, info=info)
                if step % o.checkpoint_every == 0:
                    save(step)
                    if on_checkpoint is not None and world.size == 1:
                        paused = time.perf_counter()
                        out_of_time = out_of_time or bool(on_checkpoint(step, model))
                        paused = time.perf_counter() - paused
                        t0 += paused  # stop the clock while the callback ran
                        deadline = deadline + paused if deadline is not None else None
    except KeyboardInterrupt:
        # Mid-step (a second Ctrl-C, or any Ctrl-C under torchrun, where the other ranks may be
        # anywhere or gone): what is in memory may mix two steps. The last checkpoint stands.
        if world.is_main:
            again = ("the same torchrun command and --resume" if world.active else
                     shlex.join(["contextbot", "train", "--corpus", o.corpus, "--out", str(out),
                                 "--steps", str(o.steps), "--resume"]))
            console.print(f"interrupted during step {step + 1}; {out} holds the last checkpoint. "
                          f"Resume with: {again}", highlight=False, soft_wrap=True)
        raise SystemExit(130)
    interrupted = ctrl_c.requested  # stopped between two steps: a consistent state to save
    save(step)
    seconds = time.perf_counter() - t0
    world.leave()  # no more collectives: rank 0 alone evaluates and reports
    if interrupted:
        again = shlex.join(["contextbot", "train", "--corpus", o.corpus, "--out", str(out),
                            "--steps", str(o.steps), "--resume"])
        console.print(f"interrupted at step {step}; saved {out}. Resume with: {again}",
                      highlight=False, soft_wrap=True)  # one line: a command to copy
        raise SystemExit(130)
    if not world.is_main:
        return None
    if valid_encoded and valid_bpc is None:
        valid_bpc = evaluate_bpc(model, valid_encoded, device)
    summary = {
        "steps": step, "chars": int(chars_seen), "seconds": round(seconds, 2),
        "chars_per_sec": round(chars_seen / max(seconds, 1e-9), 1),
        "train_bpc": round(sum(recent) / len(recent), 4) if recent else None,
        "valid_bpc": round(valid_bpc, 4) if valid_bpc is not None else None,
        "config": {"cell": o.cell, "vocab_size": tok.vocab_size, "embed": o.embed,
                   "hidden": o.hidden, "layers": o.layers, "batch": o.batch, "seq_len": o.seq_len,
                   "referents": config.referents},
    }
    if not o.json:
        console.print(f"saved {out} at step {step} ({seconds:.0f} s, "
                      f"{summary['chars_per_sec']:,.0f} chars/s, valid {summary['valid_bpc']} bpc)")
    return summary


# Where a cell learns best with other settings than the GRU's defaults (README, "Three cells"):
# the LSTM's language model learns slowly at the GRU's 3e-3 with chrono on every unit (0.86 bits
# per character at step 500, against 0.50 with half chrono at 1e-2; one thread, seed 0), and its
# fused oneDNN kernel is faster on 128-character chunks than on longer ones. It shares the GRU's
# 16 streams per step. The RNN's recipe was found, and its checkpoint trained, at 32 streams of
# 256 characters; the GRU's 16 of 192 are untried on it.
CELL_DEFAULTS = {"lstm": {"lr": 4e-3, "chrono_fraction": 0.5, "seq_len": 128},
                 "rnn": {"batch": 32, "seq_len": 256}}


def options_from_args(args) -> TrainOptions:
    """Build TrainOptions from argparse results, where None means 'use the default' (the cell's
    own, from CELL_DEFAULTS, where it has one)."""
    o = TrainOptions()
    for k, v in CELL_DEFAULTS.get(getattr(args, "cell", None) or o.cell, {}).items():
        setattr(o, k, v)
    for k in asdict(o):
        v = getattr(args, k, None)
        if v is not None:
            setattr(o, k, v)
    return o


def main_json(summary: dict) -> None:
    sys.stdout.write(json.dumps(summary) + "\n")
