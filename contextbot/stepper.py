"""One character at a time, fast: a chat turn's recurrence written out in NumPy.

A chat turn feeds the model one token per step: the question's characters, then each generated
one. For one token the arithmetic is small (a 256-unit GRU needs about half a million
multiply-adds), so the time goes to overhead, not arithmetic. `nn.GRU.forward` checks its
arguments, flattens its weights and dispatches a general kernel; `nn.Embedding` and `nn.Linear`
each add a module call; and even a bare PyTorch operation costs a few microseconds to dispatch.
`Stepper` does the same computation with the equations written out (the ones in gates.py) on the
module's own weights, with three savings:

- **the input projection is a lookup.** The first layer only ever sees an embedding row, so
  W_ih · embedding[token] + b_ih is precomputed for every token once: a (vocab, gates × hidden)
  table. A step starts with one row of it instead of an embedding call and a matrix product.
- **NumPy for the small operations.** A NumPy operation on a 256-vector costs about a microsecond,
  a third of a PyTorch one; the two matrix-vector products go to the same BLAS either way. The
  arrays are views of the module's weights (no copy), and the state goes back to the session as a
  tensor sharing the array's memory.
- **no output layer while reading.** The question's characters need the state, not a prediction,
  so `feed` skips the vocabulary projection until the last character.

The result equals `nn.GRU` / `nn.LSTM` / `nn.RNN` up to float rounding (tests/test_stepper.py
checks 1e-5). The model stays stateless: the caller passes the state in and gets the new one.
Weights must live on the CPU (a checkpoint loads there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .model import RecurrentLM, State


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x) = (1 + tanh(x / 2)) / 2: the same function as 1 / (1 + e^-x), in fewer NumPy calls."""
    y = np.tanh(x * 0.5)
    y *= 0.5
    y += 0.5
    return y


class Stepper:
    """A fast forward pass for one conversation (batch 1), for inference on the CPU."""

    def __init__(self, model: RecurrentLM):
        c = model.config
        self.cell, self.layers, self.hidden = c.cell, c.layers, c.hidden
        rnn = model.rnn

        def array(t: torch.Tensor) -> np.ndarray:
            return t.detach().numpy()  # a view: the module's own memory

        with torch.no_grad():
            # Layer 0's input projection for every token at once: (vocab, gates * hidden).
            table = model.input_table()
        self.table = table.numpy()
        self.weights = [tuple(array(getattr(rnn, f"{name}_l{k}"))
                              for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
                        for k in range(c.layers)]
        self.head_w, self.head_b = array(model.head.weight), array(model.head.bias)

    def step(self, token: int, state: State) -> tuple[torch.Tensor, State]:
        """Feed one token: (logits over the vocabulary, the new state shaped like the module's)."""
        return self.feed((token,), state)

    def feed(self, tokens: Sequence[int], state: State) -> tuple[torch.Tensor, State]:
        """Feed several tokens, one after another: (logits after the last one, the new state).
        Like `step` repeated, without computing the logits that nobody reads."""
        h, c = self._arrays(state)
        for token in tokens:
            h, c = self._recur(token, h, c)
        return torch.from_numpy(self.head_w @ h[-1, 0] + self.head_b), self._state(h, c)

    def _arrays(self, state: State) -> tuple[np.ndarray, np.ndarray | None]:
        if self.cell == "lstm":
            return state[0].numpy(), state[1].numpy()
        return state.numpy(), None

    def _state(self, h: np.ndarray, c: np.ndarray | None) -> State:
        return (torch.from_numpy(h), torch.from_numpy(c)) if c is not None else torch.from_numpy(h)

    def _recur(self, token: int, hs: np.ndarray, cs: np.ndarray | None):
        """One step of every layer on (layers, 1, hidden) arrays; returns new arrays."""
        n_h = self.hidden
        new_h = np.empty_like(hs)
        new_c = np.empty_like(cs) if cs is not None else None
        x = None
        for k in range(self.layers):
            w_ih, w_hh, b_ih, b_hh = self.weights[k]
            h = hs[k, 0]
            gi = self.table[token] if k == 0 else w_ih @ x + b_ih
            gh = w_hh @ h
            gh += b_hh
            if self.cell == "gru":
                rz = _sigmoid(gi[:2 * n_h] + gh[:2 * n_h])
                n = gh[2 * n_h:]
                n *= rz[:n_h]
                n += gi[2 * n_h:]
                n = np.tanh(n, out=n)
                x = new_h[k, 0]
                np.subtract(h, n, out=x)  # h' = (1 - z) n + z h = n + z (h - n)
                x *= rz[n_h:]
                x += n
            elif self.cell == "lstm":
                g = gi + gh
                i, f, o = _sigmoid(g[:n_h]), _sigmoid(g[n_h:2 * n_h]), _sigmoid(g[3 * n_h:])
                c = new_c[k, 0]
                np.multiply(f, cs[k, 0], out=c)
                c += i * np.tanh(g[2 * n_h:3 * n_h])
                x = new_h[k, 0]
                np.multiply(o, np.tanh(c), out=x)
            else:
                x = new_h[k, 0]
                np.add(gi, gh, out=x)
                np.tanh(x, out=x)
        return new_h, new_c
