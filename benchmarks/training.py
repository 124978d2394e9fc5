"""Training throughput: `contextbot train` beside a per-character tutorial loop and the roofline.

Three numbers at the same sizes (the default recipe's cell, hidden size, embedding, batch and
sequence length):

- **contextbot train**: characters per second of the real training loop (`train.train`), padding
  excluded: a padded position costs arithmetic but teaches nothing, so it counts as waste.
- **tutorial loop**: the way char-rnn.pytorch and many tutorials train, calling the recurrent
  layer once per character inside a Python loop, then one backward pass.
- **baseline**: the same model trained the way PyTorch's word_language_model example trains:
  `nn.GRU` (or `nn.LSTM`) called once per chunk over the corpus's text as one token stream cut
  into `batch` columns, the state carried and detached between chunks, no resets (`baseline_*`).
- **roofline**: the fastest the machine could train this model if every matrix multiply of a
  training step ran at the rate this machine reaches *for that shape* (measured in the same run)
  and nothing else cost any time. The fraction of it that `contextbot train` reaches says how much
  is left on the table in the recurrent kernels, the framework and Python.

FLOPs are counted for the matrix multiplies only (2 per multiply-add): forward, plus twice that
for backward (the gradient with respect to the inputs and to the weights).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from contextbot.model.network import ModelConfig, RecurrentLM
from contextbot.train.loop import train
from contextbot.train.options import TrainOptions

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def matmul_shapes(c: ModelConfig, batch: int, seq_len: int) -> list[tuple[str, int, int, int, int]]:
    """(name, m, k, n, count) of every forward matrix multiply in one training step.

    The input projections of a layer run once over all batch x seq_len positions (cuDNN-style);
    the recurrent one runs seq_len times on (batch, hidden); the head once over all positions.
    """
    g = GATES[c.cell] * c.hidden
    rows = batch * seq_len
    shapes = []
    for layer in range(c.layers):
        n_in = c.embed if layer == 0 else c.hidden
        shapes.append((f"input projection l{layer}", rows, n_in, g, 1))
        shapes.append((f"recurrent l{layer}", batch, c.hidden, g, seq_len))
    shapes.append(("head", rows, c.hidden, c.vocab_size, 1))
    if c.referents:
        shapes.append(("referent head", rows, c.hidden, 2 * c.referents, 1))
    return shapes


def flops_per_token(c: ModelConfig) -> float:
    """Matrix-multiply FLOPs to train on one token: 3 x (2 x multiply-adds of the forward pass)."""
    g = GATES[c.cell] * c.hidden
    fwd = sum(2 * g * ((c.embed if layer == 0 else c.hidden) + c.hidden) for layer in range(c.layers))
    fwd += 2 * c.hidden * c.vocab_size + 2 * c.hidden * 2 * c.referents  # the heads
    return 3.0 * fwd


def matmul_rate(m: int, k: int, n: int, seconds: float = 0.3) -> float:
    """FLOP/s of torch.mm at (m, k) x (k, n), best of a few timed batches, in the current
    thread setting."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        torch.mm(a, b)
    reps = 1
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        dt = (time.perf_counter() - t) / reps
        best = min(best, dt)
        if dt * reps < 0.01:
            reps *= 2
    return 2.0 * m * k * n / best


def roofline(c: ModelConfig, batch: int, seq_len: int) -> dict:
    """Tokens per second if every matmul of a training step ran at its measured rate.

    Backward multiplies have the transposed shapes; we time the forward shape and charge the
    backward at the same rate (3 x the forward time), which is what the FLOP count assumes.
    """
    seconds, shapes = 0.0, []
    for name, m, k, n, count in matmul_shapes(c, batch, seq_len):
        rate = matmul_rate(m, k, n)
        flops = 2.0 * m * k * n * count
        seconds += 3 * flops / rate
        shapes.append({"name": name, "shape": [m, k, n], "gflops": round(rate / 1e9, 1)})
    tokens = batch * seq_len
    total_flops = flops_per_token(c) * tokens
    return {"tokens_per_sec": tokens / seconds, "gflops": total_flops / seconds / 1e9, "shapes": shapes}


def contextbot_train(steps: int, options: TrainOptions | None = None) -> dict:
    """`contextbot train` for `steps` steps on the shipped corpus, without validation; the
    summary's characters per second counts real characters only (padding excluded)."""
    with tempfile.TemporaryDirectory() as tmp:
        o = options or TrainOptions()
        o.steps, o.valid, o.json = steps, None, True
        o.checkpoint_every = 10 ** 9
        o.out = str(Path(tmp) / "bench.safetensors")
        summary = train(o, Console(stderr=True, quiet=True))
    return summary


def tutorial_loop(c: ModelConfig, batch: int, seq_len: int, steps: int) -> float:
    """Characters per second of a per-character training loop at the same sizes (random data)."""
    torch.manual_seed(0)
    model = RecurrentLM(c)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(0, c.vocab_size, (batch, seq_len + 1))
    times = []
    for s in range(steps + 1):
        t = time.perf_counter()
        state, loss = None, 0.0
        for i in range(seq_len):  # one call of the recurrent layer per character
            logits, state = model(x[:, i:i + 1], state)
            loss = loss + F.cross_entropy(logits[:, 0], x[:, i + 1])
        opt.zero_grad()
        (loss / seq_len).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if s:  # the first step warms the allocator up
            times.append(time.perf_counter() - t)
    return batch * seq_len / (sum(times) / len(times))


class BaselineLM(nn.Module):
    """The word_language_model example's model, one character per token: an embedding, PyTorch's
    recurrent layer, dropout around it, and an output layer."""

    def __init__(self, cell: str, vocab: int, embed: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM, "rnn": nn.RNN}[cell]
        self.embedding = nn.Embedding(vocab, embed)
        self.rnn = rnn(embed, hidden, num_layers=layers, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor, state):
        """x (seq, batch), time first as in the example -> logits (seq, batch, vocab), state."""
        out, state = self.rnn(self.drop(self.embedding(x)), state)
        return self.head(self.drop(out)), state


def batchify(text: str, batch: int) -> tuple[torch.Tensor, int]:
    """The text as one stream of character ids, cut into `batch` columns as the example's
    `batchify` does (the tail that does not fill a row is dropped): (len // batch, batch), and
    the number of distinct characters."""
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    ids = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    n = ids.numel() // batch
    return ids[:n * batch].view(batch, n).t().contiguous(), len(chars)


def baseline_chars_per_sec(o: TrainOptions | None = None, steps: int = 60, warmup: int = 3,
                           text: str | None = None, vocab_size: int | None = None) -> float:
    """Characters per second of a word_language_model-style loop at the recipe's sizes (cell,
    hidden, embed, layers, dropout, batch streams, seq_len chunks), optimizer (AdamW at the
    recipe's lr and weight decay, clipping at its clip), on the recipe's corpus (or `text`), in
    the current thread setting. The first `warmup` steps are not timed. `vocab_size` widens the
    embedding and output layer to contextbot's vocabulary (its tokenizer's pieces), so that both
    loops do the same arithmetic per character; by default, the text's distinct characters."""
    o = o or TrainOptions()
    if text is None:
        text = Path(o.corpus).read_text(encoding="utf-8")
    seq = o.seq_len or 192
    data, vocab = batchify(text, o.batch)
    if data.shape[0] < 2:
        raise ValueError("the text is too short for one chunk per stream")
    torch.manual_seed(o.seed)
    model = BaselineLM(o.cell, max(vocab, vocab_size or 0), o.embed, o.hidden, o.layers, o.dropout)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    state, i, chars, seconds = None, 0, 0, 0.0
    for s in range(warmup + steps):
        if i + 1 >= data.shape[0]:  # an epoch done: start the stream again from a fresh state
            i, state = 0, None
        n = min(seq, data.shape[0] - 1 - i)
        t = time.perf_counter()
        x, y = data[i:i + n], data[i + 1:i + 1 + n]  # the example's get_batch
        if state is not None:  # the example's repackage_hidden: keep the values, cut the graph
            state = tuple(h.detach() for h in state) if isinstance(state, tuple) else state.detach()
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip)
        opt.step()
        loss.item()  # the example reads the loss every step for its log
        if s >= warmup:
            seconds += time.perf_counter() - t
            chars += x.numel()
        i += n
    return chars / seconds


def run(quick: bool = False) -> dict:
    """All training-throughput figures at the default recipe's sizes."""
    o = TrainOptions()
    summary = contextbot_train(15 if quick else 60)
    c = o.model_config(summary["config"]["vocab_size"], summary["config"]["referents"])
    seq = o.seq_len if o.seq_len else 600  # whole conversations: about 600 characters each
    roof = roofline(c, o.batch, seq)
    tut = tutorial_loop(c, o.batch, seq, 1 if quick else 3)
    base = baseline_chars_per_sec(o, steps=15 if quick else 60, vocab_size=c.vocab_size)
    fpt = flops_per_token(c)
    cps = summary["chars_per_sec"]
    return {
        "config": summary["config"] | {"seq_len": o.seq_len},
        "flops_per_char": fpt,
        "contextbot_chars_per_sec": cps,
        "contextbot_gflops": cps * fpt / 1e9,
        "tutorial_chars_per_sec": tut,
        "baseline_chars_per_sec": base,
        "contextbot_over_baseline": cps / base,
        "roofline_chars_per_sec": roof["tokens_per_sec"],
        "roofline_gflops": roof["gflops"],
        "matmul_shapes": roof["shapes"],
        "fraction_of_roofline": cps / roof["tokens_per_sec"],
        "threads": torch.get_num_threads(),
    }
