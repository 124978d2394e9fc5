"""The recurrent language model: embedding -> RNN / GRU / LSTM -> linear to the vocabulary.

The model holds no conversation state. `forward(tokens, state)` takes the state the caller
carries and returns the new one, exactly like PyTorch's word_language_model; whoever talks to
the model (training, `ChatSession`) owns the hidden state. The weights are `nn.GRU`'s (or
`nn.LSTM`'s, `nn.RNN`'s), but the recurrence over them runs in several implementations, each
where it is fastest; `contextbot.model.recurrence`'s docstring is the map. Here, `forward` picks
one for training and validation (`_recur`, `_scan`, `_by_stretches`), and two public methods
serve inference in batches: `forward_small` (chat-sized calls) and `forward_packed` (sequences of
different lengths at once).

The three cells, in brief (recurrence/reference.py writes them out, and
`recurrence.GATE_ORDER` is how the weights pack the gates):

- **rnn**: h_t = tanh(W x_t + U h_{t-1} + b). One matrix decides everything, so a gradient
  flowing back through many steps is multiplied by U again and again and fades (vanishes).
- **gru**: an *update* gate z decides how much of h_{t-1} to keep, a *reset* gate r how much
  of it to use when proposing the candidate n:
  r = σ(W_r x + U_r h + b_r), z = σ(W_z x + U_z h + b_z),
  n = tanh(W_n x + r ⊙ (U_n h + b_hn)), h_t = (1 − z) ⊙ n + z ⊙ h_{t-1}.
  With z near 1 the state is copied unchanged, and so is its gradient.
- **lstm**: a separate cell c with *forget*, *input* and *output* gates:
  c_t = f ⊙ c_{t-1} + i ⊙ g, h_t = o ⊙ tanh(c_t).

**Chrono initialisation** (Tallec and Ollivier, 2018): a gate that starts near 0.5 forgets half
of its memory each step, so at first nothing survives more than a few characters and the model
never discovers long dependencies. Setting the keep-gate bias to log(U(1, T_max − 1)) gives each
unit a characteristic memory time between 1 and T_max steps from the very first update. We give
that to a share of the units (`chrono_fraction`) and leave the rest fast: with chrono on every unit
the model is slow to learn spelling, because nearly every unit barely moves.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence, pad_packed_sequence

from ..errors import ContextbotError
from .recurrence import gate_rows
from .recurrence.scan import Scan

CELLS = ("rnn", "gru", "lstm")

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; stored as JSON in every checkpoint."""

    vocab_size: int
    cell: str = "gru"
    embed: int = 64
    hidden: int = 256
    layers: int = 1
    dropout: float = 0.0
    chrono_tmax: float = 400.0  # 0 disables chrono initialisation
    chrono_fraction: float = 1.0  # share of units given chrono memory times; the rest start fast
    chrono_spread: str = "log"  # memory times spread "log"-uniformly, or "uniform" as in the paper
    referents: int = 0  # classes of the referent probe head (training's auxiliary signal); 0: none

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ContextbotError(f"unknown cell {self.cell!r} (choose from {', '.join(CELLS)})")
        if not isinstance(self.referents, int) or self.referents < 0:
            raise ContextbotError("model config: referents must be a non-negative integer")
        for name in ("vocab_size", "embed", "hidden", "layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ContextbotError(f"model config: {name} must be a positive integer")
        if self.chrono_spread not in ("log", "uniform"):
            raise ContextbotError("model config: chrono_spread must be 'log' or 'uniform'")
        if not 0.0 <= self.dropout < 1.0:
            raise ContextbotError("model config: dropout must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ContextbotError(f"model config has unknown fields: {', '.join(sorted(unknown))}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ContextbotError(f"model config is incomplete: {exc}") from None


class RecurrentLM(nn.Module):
    """A character-level (or piece-level) recurrent language model."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embed)
        rnn_cls = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[c.cell]
        self.rnn = rnn_cls(c.embed, c.hidden, num_layers=c.layers, batch_first=True,
                           dropout=c.dropout if c.layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden, c.vocab_size)
        # Training only: reads who "he" and "she" mean off the hidden state (referents.py).
        self.referent_head = nn.Linear(c.hidden, 2 * c.referents) if c.referents else None
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default initialisation, then chrono initialisation of the gate biases."""
        c = self.config
        if c.chrono_tmax <= 1 or c.cell == "rnn":
            return
        h = c.hidden
        with torch.no_grad():
            for layer in range(c.layers):
                b_ih = getattr(self.rnn, f"bias_ih_l{layer}")
                b_hh = getattr(self.rnn, f"bias_hh_l{layer}")
                # log(U(1, T_max - 1)): a memory time between 1 and T_max characters per unit.
                if c.chrono_spread == "log":
                    # Memory times T spread evenly over octaves from 1 to T_max (bias log T), so
                    # there are fast units for spelling, medium ones for the last sentence and
                    # slow ones for the conversation.
                    keep = torch.empty(h).uniform_(0.0, math.log(c.chrono_tmax - 1.0), generator=generator)
                else:
                    keep = torch.log(torch.empty(h).uniform_(1.0, c.chrono_tmax - 1.0, generator=generator))
                # Only a share of the units get long memory times; the others keep PyTorch's
                # near-zero bias and learn the fast, character-level patterns quickly.
                keep[int(h * c.chrono_fraction):] = 0.0
                if c.cell == "gru":
                    # The update gate z keeps h_{t-1}.
                    z = gate_rows("gru", "z", h)
                    b_ih[z] = keep
                    b_hh[z] = 0.0
                else:
                    # The forget gate f keeps c_{t-1}; the input gate i starts at -keep.
                    f, i = gate_rows("lstm", "f", h), gate_rows("lstm", "i", h)
                    b_ih[f] = keep
                    b_hh[f] = 0.0
                    b_ih[i] = -keep
                    b_hh[i] = 0.0

    def zero_state(self, batch: int = 1, device: torch.device | str = "cpu") -> State:
        """The state a conversation starts from: all zeros, (layers, batch, hidden)."""
        c = self.config
        h = torch.zeros(c.layers, batch, c.hidden, device=device, dtype=self.head.weight.dtype)
        return (h, torch.zeros_like(h)) if c.cell == "lstm" else h

    def forward(self, tokens: torch.Tensor, state: State | None = None, *, referents: bool = False,
                keep: torch.Tensor | None = None):
        """tokens (batch, seq) -> logits (batch, seq, vocab), and the state after the last token.

        `keep` (batch, seq) of 0 and 1, as training and validation pass it: 0 where a new
        conversation starts, so the state is zeroed just before that token is read. A reset after
        the first token runs the recurrence, on the CPU, through `scan.Scan`, which can reset
        mid-chunk and has a hand-written backward; on another device (a GPU), through PyTorch's
        kernel once per stretch between resets (`_by_stretches`). Otherwise PyTorch's own kernel
        runs once (`_recur`). All compute the same function with the same weights
        (tests/model/test_scan.py; the map of every implementation: `contextbot.model.recurrence`).

        With `referents=True` (training), also the referent head's logits, (batch, seq, 2, classes):
        who "he" and "she" mean after each token, read off the hidden state."""
        if keep is not None and keep[:, 1:].all():
            # Resets only before the first token (whole conversations, or streams padded to
            # whole chunks): PyTorch's kernel can do that, and on a GPU it is cuDNN's.
            if state is not None:
                state = mask_state(state, keep[:, 0])
            keep = None
        if keep is None:
            x = self.drop(self.embedding(tokens))  # (batch, seq, embed)
            out, state = self._recur(x, state)  # (batch, seq, hidden)
        elif tokens.device.type == "cpu":
            out, state = self._scan(tokens, state, keep)
        else:
            out, state = self._by_stretches(tokens, state, keep)
        logits = self.head(self.drop(out))
        if referents:
            if self.referent_head is None:
                raise ValueError("this model has no referent head")
            who = self.referent_head(out).unflatten(-1, (2, self.config.referents))
            return logits, state, who
        return logits, state

    def forward_small(self, tokens: torch.Tensor, state: State | None = None):
        """`forward` for chat-sized calls (a token or a few per stream): the same results, with
        PyTorch's oneDNN kernels switched off around the call. oneDNN's recurrent kernel (the
        LSTM's above all) pays a set-up cost on every call that, for a single token, is far larger
        than the arithmetic, while the plain kernel it falls back to has none to speak of."""
        enabled = torch._C._get_mkldnn_enabled()  # the public flags() also resets TF32 and warns
        torch._C._set_mkldnn_enabled(False)
        try:
            return self(tokens, state)
        finally:
            torch._C._set_mkldnn_enabled(enabled)

    def forward_packed(self, sequences: list[torch.Tensor],
                       state: State | None = None) -> tuple[torch.Tensor, State]:
        """Feed token sequences of different lengths at once, sequence b on top of column b of
        `state` (layers, n, hidden): (the logits after each sequence's last token, (n, vocab);
        the state after each one's last token, shaped like `state`).

        The same as feeding each sequence alone (tests/model/test_network.py), in one call of
        PyTorch's kernel over a packed sequence, which stops each sequence's recurrence at its own
        end: no padding is read, so no state runs past its sequence. For inference: the
        evaluation's batched talk (`chat.BatchSession`) feeds every conversation's prompt this way,
        the probe (analysis/probe.py) every conversation's turn."""
        packed = pack_sequence(list(sequences), enforce_sorted=False)
        x = PackedSequence(self.drop(self.embedding(packed.data)), packed.batch_sizes,
                           packed.sorted_indices, packed.unsorted_indices)
        out, state = self.rnn(x, state)
        padded, lengths = pad_packed_sequence(out, batch_first=True)  # in the sequences' order
        last = padded[torch.arange(len(lengths)), lengths - 1]  # (n, hidden)
        return self.head(self.drop(last)), state

    def _scan(self, tokens: torch.Tensor, state: State | None, keep: torch.Tensor) -> tuple[torch.Tensor, State]:
        """The recurrence layer by layer through scan.Scan, resetting where keep (batch, seq) is 0."""
        c = self.config
        if state is None:
            state = self.zero_state(tokens.shape[0], tokens.device)
        hs, cs = (state if c.cell == "lstm" else (state, None))
        keep = keep.t()  # (seq, batch): Scan's layout, time first
        seq, batch = keep.shape
        last_h, last_c = [], []
        x = None  # a layer's input, (features, seq, batch)
        for layer in range(c.layers):
            w_ih, b_ih = getattr(self.rnn, f"weight_ih_l{layer}"), getattr(self.rnn, f"bias_ih_l{layer}")
            if layer == 0 and not (self.training and c.dropout > 0):
                # A token's input projection W e + b depends on the token alone: project the
                # whole vocabulary's embeddings once, (gates·hidden, vocab), and pick columns.
                table = self.input_table().t().contiguous()
                gi = table.index_select(1, tokens.t().flatten().long())
            else:
                if layer == 0:
                    x = self.drop(self.embedding(tokens)).permute(2, 1, 0)  # (embed, seq, batch)
                elif c.dropout > 0:
                    x = self.rnn_dropout(x)
                gi = torch.addmm(b_ih.unsqueeze(1), w_ih, x.reshape(x.shape[0], -1))
            w_hh, b_hh = getattr(self.rnn, f"weight_hh_l{layer}"), getattr(self.rnn, f"bias_hh_l{layer}")
            out, c_last = Scan.apply(c.cell, gi.view(-1, seq, batch), hs[layer],
                                     cs[layer] if cs is not None else None, w_hh, b_hh, keep)
            # out: (seq, hidden, batch)
            last_h.append(out[-1].t())
            last_c.append(c_last)
            x = out.transpose(0, 1)  # (hidden, seq, batch), the next layer's input
        h = torch.stack(last_h)
        new_state = (h, torch.stack(last_c)) if c.cell == "lstm" else h
        # (batch, seq, hidden), in one copy: the heads then read it as it lies
        return x.permute(2, 1, 0).contiguous(), new_state

    def _by_stretches(self, tokens: torch.Tensor, state: State | None, keep: torch.Tensor) -> tuple[torch.Tensor, State]:
        """Resets mid-chunk on any device: PyTorch's kernel (cuDNN on a GPU) over each stretch of
        steps between two steps where some stream starts afresh, zeroing those streams' state in
        between. One call per stretch: fine for a GPU, slower than the scan on a CPU."""
        if state is None:
            state = self.zero_state(tokens.shape[0], tokens.device)
        x = self.drop(self.embedding(tokens))  # (batch, seq, embed)
        starts = (keep[:, 1:] == 0).any(0).nonzero().flatten().add(1).tolist()
        bounds = [0, *starts, tokens.shape[1]]
        outs = []
        for a, b in zip(bounds, bounds[1:]):
            out, state = self._recur(x[:, a:b], mask_state(state, keep[:, a]))
            outs.append(out)
        return torch.cat(outs, 1), state

    def _recur(self, x: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """PyTorch's recurrent kernel over x (batch, seq, embed), except where cuDNN would apply
        the dropout between stacked layers itself: cuDNN draws that dropout from a random state of
        its own, which no checkpoint can save, so `--resume` could not continue a run exactly.
        There (training a stacked model with dropout off the CPU) the layers run one call each,
        with F.dropout between them, drawing from PyTorch's generator, which checkpoints save."""
        c = self.config
        if not self._drops_between_layers(x):
            return self.rnn(x, state)
        if state is None:
            state = self.zero_state(x.shape[0], x.device)
        kernel = {"gru": torch._VF.gru, "lstm": torch._VF.lstm, "rnn": torch._VF.rnn_tanh}[c.cell]
        last = []
        for layer in range(c.layers):
            if layer:
                x = self.rnn_dropout(x)
            weights = [getattr(self.rnn, f"{n}_l{layer}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            hx = tuple(s[layer:layer + 1] for s in state) if c.cell == "lstm" else state[layer:layer + 1]
            with warnings.catch_warnings():
                # One layer's weights are not the module's flat cuDNN buffer: cuDNN copies them.
                warnings.filterwarnings("ignore", message="RNN module weights are not part of single")
                # (input, hx, weights, has_biases, layers, dropout, train, bidirectional, batch_first)
                x, *new = kernel(x, hx, weights, True, 1, 0.0, True, False, True)
            last.append(new)
        if c.cell == "lstm":
            return x, (torch.cat([h for h, _ in last]), torch.cat([cc for _, cc in last]))
        return x, torch.cat([h for h, in last])

    def _drops_between_layers(self, x: torch.Tensor) -> bool:
        """Whether nn.RNN would apply dropout between layers through cuDNN here (see _recur)."""
        c = self.config
        return self.training and c.dropout > 0 and c.layers > 1 and x.device.type != "cpu"

    def input_table(self) -> torch.Tensor:
        """Layer 0's input projection of every token, (vocab, gates·hidden): W_ih e + b_ih for each
        embedding row e. Chat (stepper.py) and training's scan look tokens up in it."""
        return torch.addmm(self.rnn.bias_ih_l0, self.embedding.weight, self.rnn.weight_ih_l0.t())

    def rnn_dropout(self, x: torch.Tensor) -> torch.Tensor:
        """The dropout nn.RNN applies between stacked layers (not after the last one)."""
        return F.dropout(x, self.config.dropout, self.training)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_state(state: State) -> State:
    """Cut the graph between truncated-BPTT chunks: keep the values, drop the history."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def mask_state(state: State, keep: torch.Tensor) -> State:
    """Zero the state of the streams where `keep` (batch,) is 0: a new conversation starts there."""
    k = keep.view(1, -1, 1)
    if isinstance(state, tuple):
        return tuple(s * k for s in state)
    return state * k


def hidden_of(state: State) -> torch.Tensor:
    """The h part of a state, (layers, batch, hidden): for an LSTM, h rather than the cell c."""
    return state[0] if isinstance(state, tuple) else state


def layer_norms(state: State) -> tuple[float, ...]:
    """‖h‖ per layer for the first (or only) stream of a state."""
    # Chat asks for this after every character, so it is done in NumPy (for a vector this small,
    # torch.linalg.vector_norm's dispatch costs more than the sum), skipping detach() and cpu()
    # when there is nothing to detach or move: each is a call that costs more than it does here.
    h = hidden_of(state)
    if h.requires_grad or not h.is_cpu:
        h = h.detach().cpu()
    return tuple([float(np.dot(row, row)) ** 0.5 for row in h.numpy()[:, 0]])

