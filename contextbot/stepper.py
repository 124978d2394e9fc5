"""One character at a time, fast: the generation step of a chat reply, in a dozen tensor calls.

Generating a reply feeds the model one token per call. For one token the arithmetic is tiny
(a 256-unit GRU needs about half a million multiply-adds), so the time goes to the framework:
`nn.GRU.forward` checks its arguments, flattens its weights and dispatches a general kernel,
`nn.Embedding` and `nn.Linear` each add a module call, and all of that costs several times the
arithmetic. `Stepper` does the same computation with the equations written out (the ones in
gates.py) on the module's own weights, and two savings:

- **the input projection is a lookup.** The first layer only ever sees an embedding row, so
  W_ih · embedding[token] + b_ih is precomputed for every token once: a (vocab, gates × hidden)
  table. A step starts with one row of it instead of an embedding call and a matrix product.
- **no module machinery.** `torch.addmv` does W·h + b in one call; the gates are slices.

The result equals `nn.GRU` / `nn.LSTM` / `nn.RNN` up to float rounding (tests/test_stepper.py
checks 1e-5). The model stays stateless: the caller passes the state in and gets the new one.
"""

from __future__ import annotations

import torch

from .model import RecurrentLM, State


class Stepper:
    """A fast single-token forward pass for one conversation (batch 1), for inference only."""

    def __init__(self, model: RecurrentLM):
        c = model.config
        self.cell, self.layers, self.hidden = c.cell, c.layers, c.hidden
        rnn = model.rnn
        with torch.inference_mode():
            w = [(getattr(rnn, f"weight_ih_l{k}"), getattr(rnn, f"weight_hh_l{k}"),
                  getattr(rnn, f"bias_ih_l{k}"), getattr(rnn, f"bias_hh_l{k}")) for k in range(c.layers)]
            # Layer 0's input projection for every token at once: (vocab, gates * hidden).
            self.table = torch.addmm(w[0][2], model.embedding.weight, w[0][0].t())
        self.weights = w
        self.head_w, self.head_b = model.head.weight, model.head.bias

    def step(self, token: int, state: State) -> tuple[torch.Tensor, State]:
        """Feed one token: (logits over the vocabulary, the new state shaped like the module's).

        Call it under `torch.inference_mode()` (ChatSession does, once per turn): entering the
        mode on every character would cost more than a quarter of the step's own time."""
        lstm = self.cell == "lstm"
        hs = state[0] if lstm else state
        cs = state[1] if lstm else None
        new_h, new_c = [], []
        x = None
        for k in range(self.layers):
            w_ih, w_hh, b_ih, b_hh = self.weights[k]
            h = hs[k, 0]
            gi = self.table[token] if k == 0 else torch.addmv(b_ih, w_ih, x)
            gh = torch.addmv(b_hh, w_hh, h)
            if self.cell == "gru":
                n_h = self.hidden
                rz = torch.sigmoid(gi[:2 * n_h] + gh[:2 * n_h])
                n = torch.tanh(torch.addcmul(gi[2 * n_h:], rz[:n_h], gh[2 * n_h:]))
                x = torch.lerp(n, h, rz[n_h:])  # (1 - z) * n + z * h
            elif lstm:
                i, f, g, o = (gi + gh).chunk(4)
                c2 = torch.sigmoid(f) * cs[k, 0] + torch.sigmoid(i) * torch.tanh(g)
                x = torch.sigmoid(o) * torch.tanh(c2)
                new_c.append(c2)
            else:
                x = torch.tanh(gi + gh)
            new_h.append(x)
        logits = torch.addmv(self.head_b, self.head_w, x)
        if self.layers == 1:  # the common case, without a stack
            h_out = x.view(1, 1, -1)
            return logits, ((h_out, new_c[0].view(1, 1, -1)) if lstm else h_out)
        h_out = torch.stack(new_h).unsqueeze(1)
        return logits, ((h_out, torch.stack(new_c).unsqueeze(1)) if lstm else h_out)
