"""The reference: the cell's equations, computed readably from a layer's own weights, one token
at a time, with every gate kept.

`nn.GRU` and `nn.LSTM` run fused kernels that never expose their gates. To *show* what the memory
is doing, `step` recomputes each step from the layer's weights with the cell's equations
(below), and tests/model/test_reference.py checks that the state it gets equals what the PyTorch
module computes. Every fast implementation in this package computes these same equations (the
package's docstring is the map); this is the one written to be read.

GRU:
    r = σ(W_ir x + b_ir + W_hr h + b_hr)        reset: how much of h to use in the proposal
    z = σ(W_iz x + b_iz + W_hz h + b_hz)        update: how much of h to keep unchanged
    n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))   the proposed new content
    h' = (1 − z) ⊙ n + z ⊙ h

LSTM:
    i = σ(·), f = σ(·), g = tanh(·), o = σ(·)   each of W_i x + b_i + W_h h + b_h
    c' = f ⊙ c + i ⊙ g                          forget some memory, write some new
    h' = o ⊙ tanh(c')                           show part of the memory

Vanilla RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh), no gates.

The weights hold every gate of a layer in one matrix, one block of `hidden` rows per gate, in
PyTorch's order: the package's `GATE_ORDER` (GRU r, z, n; LSTM i, f, g, o), defined once next to
the map of implementations, for every one of them that slices by it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..network import RecurrentLM, State

#: The gates the UI and `contextbot inspect` show, by name (display order, not packing order).
GATE_NAMES = {"gru": ("update", "reset"), "lstm": ("input", "forget", "output"), "rnn": ()}


@dataclass
class StepTrace:
    """One character through the network, layer by layer."""

    logits: torch.Tensor  # (vocab,)
    state: State  # the new state, shaped like the module's: (layers, 1, hidden)
    gates: list[dict[str, torch.Tensor]]  # per layer: gate name -> (hidden,) activations
    hidden: list[torch.Tensor]  # per layer: the new h, (hidden,)


def _weights(rnn: torch.nn.Module, layer: int):
    return (getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}"),
            getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}"))


@torch.no_grad()
def step(model: RecurrentLM, token: int, state: State | None) -> StepTrace:
    """Feed one token through `model` by hand, returning the gates of every layer."""
    cell, rnn = model.config.cell, model.rnn
    if state is None:
        state = model.zero_state(1, model.embedding.weight.device)
    hs = state[0] if cell == "lstm" else state
    cs = state[1] if cell == "lstm" else None
    x = model.embedding.weight[token]  # (embed,)
    new_h, new_c, gates, hidden = [], [], [], []
    for layer in range(model.config.layers):
        w_ih, w_hh, b_ih, b_hh = _weights(rnn, layer)
        h = hs[layer, 0]
        gi = w_ih @ x + b_ih
        gh = w_hh @ h + b_hh
        if cell == "gru":  # the blocks in GATE_ORDER (the package's)
            i_r, i_z, i_n = gi.chunk(3)
            h_r, h_z, h_n = gh.chunk(3)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            h2 = (1 - z) * n + z * h
            gates.append({"update": z, "reset": r})
        elif cell == "lstm":
            i, f, g, o = (gi + gh).chunk(4)  # GATE_ORDER
            i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
            c2 = f * cs[layer, 0] + i * g
            h2 = o * torch.tanh(c2)
            new_c.append(c2)
            gates.append({"input": i, "forget": f, "output": o})
        else:
            h2 = torch.tanh(gi + gh)
            gates.append({})
        new_h.append(h2)
        hidden.append(h2)
        x = h2  # the next layer reads this layer's output (no dropout at inference)
    h_stack = torch.stack(new_h).unsqueeze(1)  # (layers, 1, hidden)
    new_state: State = (h_stack, torch.stack(new_c).unsqueeze(1)) if cell == "lstm" else h_stack
    return StepTrace(model.head(x), new_state, gates, hidden)


def gate_means(trace: StepTrace) -> list[dict[str, float]]:
    """Each gate averaged over the units of its layer: what the UI's gate bars show."""
    return [{k: float(v.mean()) for k, v in layer.items()} for layer in trace.gates]


def saturation(trace: StepTrace, low: float = 0.1, high: float = 0.9) -> list[dict[str, float]]:
    """The fraction of units whose gate is saturated (below `low` or above `high`), as Karpathy,
    Johnson and Fei-Fei measured it: a saturated gate acts as a switch, not a dial."""
    return [{k: float(((v < low) | (v > high)).float().mean()) for k, v in layer.items()}
            for layer in trace.gates]
