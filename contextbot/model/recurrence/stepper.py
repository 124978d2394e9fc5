"""Chat's recurrence: one conversation, one token at a time, as one compiled loop.

A chat turn feeds the model one token per step: the question's characters, then each generated
one. For one token the arithmetic is small (a 256-unit GRU needs about half a million
multiply-adds), so the time goes elsewhere: `nn.GRU.forward` checks its arguments and dispatches a
general kernel, `nn.Embedding` and `nn.Linear` each add a module call, and even a bare PyTorch or
NumPy operation has a dispatch cost. A GRU step written as a dozen array operations spends more on
those calls than on the sums: at this size a call costs more than the arithmetic it runs.

`Stepper` writes the step out once, as plain loops over the module's own weights, and compiles
it to machine code with Numba (`@njit`): reference.py's equations, one pass per layer, gates
sliced in the package's `GATE_ORDER`, with no call into Python or PyTorch between the characters
of a question. Four more savings:

- **the input projection is a lookup.** The first layer only ever sees an embedding row, so
  W_ih · embedding[token] + b_ih is precomputed for every token once: a (vocab, gates × hidden)
  table (`RecurrentLM.input_table`). A step starts with one row of it instead of an embedding call
  and a matrix product.
- **σ and tanh that vectorise.** `tanh` from the C library is one call per element, and a call
  cannot be vectorised; kernels.py's `tanh` is a rational approximation within 3e-7, so the
  compiler runs several units of a gate at a time.
- **no output layer while reading.** The question's characters need the state, not a
  prediction, so `feed` computes the vocabulary projection only after the last character.
- **a whole greedy turn in one call.** `answer` runs the turn protocol (text/turns.py: feed the
  prompt, pick the likeliest token, feed it, and so on to the end of the line, then feed the
  newline) without coming back to Python in between: a return to Python per character (convert
  the state, allocate, wrap the result as tensors, argmax, per-layer norms) costs as much as the
  character's sums. It keeps the state after every character, so a reply streamed to a reader
  who stops part-way can still leave the conversation exactly where the reader stopped
  (`ChatSession` replays it through `turns.drive`). Sampling at a temperature goes through
  `feed`, one character per call, because its random draws are PyTorch's.

What is left per character is reading the weights (a 256-unit GRU's recurrent matrix and its
output layer are about a megabyte of float32), which no rewriting of the loop removes. The result
equals `nn.GRU` / `nn.LSTM` / `nn.RNN` up to float rounding (tests/model/test_stepper.py checks
1e-5, and that `answer` is `feed` then `step` after `step`). The model stays stateless: the caller
passes the state in and gets a new one; the one passed in is never written to. Weights must live
on the CPU (a checkpoint loads there). Building a `Stepper` compiles the loops for its weights'
dtype, once: Numba caches the machine code in the user's cache folder (kernels.py), and `make
setup` does it at install. A token outside the vocabulary raises IndexError, as nn.Embedding does
(the loop itself does not check bounds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numba import njit

from .kernels import JIT, sigmoid, tanh
from ..network import RecurrentLM, State

_CELLS = {"gru": 0, "lstm": 1, "rnn": 2}


@njit(**JIT)
def _matvec(w, x, b, out):
    """out = w @ x + b, one row at a time (each row's dot product runs in vector lanes)."""
    for i in range(w.shape[0]):
        acc = b[i]
        for j in range(x.shape[0]):
            acc += w[i, j] * x[j]
        out[i] = acc


@njit(**JIT)
def _run(cell, tokens, table, w_ih, b_ih, w_hh, b_hh, head_w, head_b, h, c, gi, gh, logits, head=True):
    """Feed `tokens` one after another, updating h and c, (layers, hidden), in place; then, if
    `head`, the logits after the last one (the output layer runs once, not once per token).
    Returns False, having done nothing, if a token is outside the table.

    Layer k > 0 reads the new h of layer k − 1 (w_ih[k − 1], b_ih[k − 1]); layer 0 reads its
    row of `table`. gi and gh are scratch vectors of gates × hidden."""
    layers, n = h.shape
    for t in range(tokens.shape[0]):
        if not 0 <= tokens[t] < table.shape[0]:
            return False  # the caller raises; nothing has been read out of bounds
    for t in range(tokens.shape[0]):
        for k in range(layers):
            if k == 0:
                gi[:] = table[tokens[t]]
            else:
                _matvec(w_ih[k - 1], h[k - 1], b_ih[k - 1], gi)
            _matvec(w_hh[k], h[k], b_hh[k], gh)
            # gi and gh hold the gates' blocks of n rows in GATE_ORDER (the package's)
            if cell == 0:  # GRU: h' = n + z (h − n), n = tanh(i_n + r ⊙ h_n)
                for u in range(n):
                    r = sigmoid(gi[u] + gh[u])
                    z = sigmoid(gi[n + u] + gh[n + u])
                    m = tanh(gi[2 * n + u] + r * gh[2 * n + u])
                    h[k, u] = m + z * (h[k, u] - m)
            elif cell == 1:  # LSTM: c' = f c + i g, h' = o tanh(c')
                for u in range(n):
                    i = sigmoid(gi[u] + gh[u])
                    f = sigmoid(gi[n + u] + gh[n + u])
                    g = tanh(gi[2 * n + u] + gh[2 * n + u])
                    o = sigmoid(gi[3 * n + u] + gh[3 * n + u])
                    c[k, u] = f * c[k, u] + i * g
                    h[k, u] = o * tanh(c[k, u])
            else:  # vanilla RNN: h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
                for u in range(n):
                    h[k, u] = tanh(gi[u] + gh[u])
    if head:
        _matvec(head_w, h[layers - 1], head_b, logits)
    return True


@njit(**JIT)
def _norms(h, out):
    """out[k] = ‖h[k]‖ for each layer k, summed in float64 (more exact than a float32 dot product)."""
    for k in range(h.shape[0]):
        sq = 0.0
        for u in range(h.shape[1]):
            sq += np.float64(h[k, u]) * np.float64(h[k, u])
        out[k] = np.sqrt(sq)


@njit(**JIT)
def _answer(cell, prompt, stops, end, table, w_ih, b_ih, w_hh, b_hh, head_w, head_b, h, c, gi, gh,
            logits, out, hs, cs, norms):
    """A whole greedy turn in one call: feed `prompt`; then, until a token that `stops` marks or
    until `out` is full, pick the likeliest token (the first of equals, as NumPy's argmax), write
    it to `out` and feed it; then feed `end` (the line's end), leaving h and c the state after
    the whole turn. hs[0] and cs[0] keep the state after the prompt, hs[t + 1] and cs[t + 1] the
    state after token t, and norms the ‖h‖ per layer of each (for the UI to show as it streams).
    Returns how many tokens it generated, or -1, having done nothing, if a prompt token is
    outside the table."""
    if not _run(cell, prompt, table, w_ih, b_ih, w_hh, b_hh, head_w, head_b, h, c, gi, gh, logits):
        return -1
    hs[0] = h
    cs[0] = c
    _norms(h, norms[0])
    n = 0
    while n < out.shape[0]:
        best = 0
        for v in range(1, logits.shape[0]):
            if logits[v] > logits[best]:
                best = v
        if stops[best]:
            break
        out[n] = best
        _run(cell, out[n:n + 1], table, w_ih, b_ih, w_hh, b_hh, head_w, head_b, h, c, gi, gh, logits)
        hs[n + 1] = h
        cs[n + 1] = c
        _norms(h, norms[n + 1])
        n += 1
    _run(cell, end, table, w_ih, b_ih, w_hh, b_hh, head_w, head_b, h, c, gi, gh, logits, False)
    return n


class Answer:
    """A greedy turn as `Stepper.answer` computed it: the reply's tokens, and the state after the
    prompt, after each token of the reply, and after the line's end that closes the turn.

    A reply is streamed: a reader (a UI's Escape) may stop part-way, and the conversation must
    then remember only what was shown. So every intermediate state is kept (a few hundred floats
    each), and `state(i)` gives the one after token i; i = -1 is the state after the prompt.
    """

    def __init__(self, stepper: "Stepper", tokens: list[int], hs: np.ndarray, cs: np.ndarray,
                 norms: np.ndarray, end: State):
        self.tokens, self.after_turn = tokens, end
        self._stepper, self._hs, self._cs, self._norms = stepper, hs, cs, norms

    def state(self, i: int) -> State:
        """The state right after token i of the reply (-1: after the prompt)."""
        return self._stepper.as_state(self._hs[self._row(i)], self._cs[self._row(i)])

    def norms(self, i: int) -> tuple[float, ...]:
        """‖h‖ per layer right after token i of the reply (-1: after the prompt)."""
        return tuple(self._norms[self._row(i)].tolist())

    def _row(self, i: int) -> int:
        """Row i + 1 of the kept states; past the reply's end the rows were never written."""
        if not -1 <= i < len(self.tokens):
            raise IndexError(f"token {i} of a reply of {len(self.tokens)}")
        return i + 1


class Stepper:
    """A fast forward pass for one conversation (batch 1), for inference on the CPU."""

    def __init__(self, model: RecurrentLM):
        c = model.config
        self.cell, self.layers, self.hidden = c.cell, c.layers, c.hidden
        rnn = model.rnn

        def array(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().numpy())  # a view of the module's own memory

        def stacked(name: str, layers: range) -> np.ndarray:
            if not layers:  # one layer: nothing above layer 0 reads an input matrix
                return np.zeros((1, 1, 1) if name.startswith("weight") else (1, 1), self.dtype)
            return np.stack([array(getattr(rnn, f"{name}_l{k}")) for k in layers])  # a copy

        with torch.no_grad():
            self.table = model.input_table().numpy()  # (vocab, gates · hidden)
        self.dtype = self.table.dtype
        above = range(1, c.layers)
        self.w_ih, self.b_ih = stacked("weight_ih", above), stacked("bias_ih", above)
        self.w_hh, self.b_hh = stacked("weight_hh", range(c.layers)), stacked("bias_hh", range(c.layers))
        self.head_w, self.head_b = array(model.head.weight), array(model.head.bias)
        # Compile now (or load the cached machine code), not in the middle of the first reply.
        self.feed((), model.zero_state(1))
        self.answer((), model.zero_state(1), 1, (), 0)

    def step(self, token: int, state: State) -> tuple[torch.Tensor, State]:
        """Feed one token: (logits over the vocabulary, the new state shaped like the module's)."""
        return self.feed((token,), state)

    def feed(self, tokens: Sequence[int], state: State) -> tuple[torch.Tensor, State]:
        """Feed several tokens, one after another: (logits after the last one, the new state).
        Like `step` repeated, without computing the logits that nobody reads."""
        h, c = self._arrays(state)
        logits = np.empty(self.head_w.shape[0], self.dtype)
        gi, gh = np.empty((2, self.table.shape[1]), self.dtype)  # scratch: per call, so thread-safe
        if not _run(_CELLS[self.cell], np.array(tokens, dtype=np.int64), self.table, self.w_ih,
                    self.b_ih, self.w_hh, self.b_hh, self.head_w, self.head_b, h, c, gi, gh, logits):
            raise IndexError(f"token out of range for a vocabulary of {len(self.table)}")  # as nn.Embedding
        return torch.from_numpy(logits), self.as_state(h, c)

    def answer(self, prompt: Sequence[int], state: State, limit: int, stops: Sequence[int],
               end: int) -> Answer:
        """A greedy turn, all of it compiled: feed `prompt`, generate the likeliest token until
        one of `stops` (not fed) or `limit` tokens, then feed `end`: the turn protocol of
        text/turns.py, compiled. The same tokens and states, up to float rounding, as `feed`,
        then `step` after `step` with an argmax between, without a return to Python (its calls
        and conversions) per character."""
        h, c = self._arrays(state)
        logits = np.empty(self.head_w.shape[0], self.dtype)
        gi, gh = np.empty((2, self.table.shape[1]), self.dtype)
        out = np.empty(limit, np.int64)
        hs = np.empty((limit + 1, *h.shape), self.dtype)
        cs = np.empty((limit + 1, *c.shape), self.dtype)
        norms = np.empty((limit + 1, self.layers))
        vocab = len(self.table)
        if not all(0 <= t < vocab for t in (*stops, end)):
            raise IndexError(f"token out of range for a vocabulary of {vocab}")
        marks = np.zeros(vocab, np.bool_)
        marks[list(stops)] = True
        ends = np.array([end], dtype=np.int64)
        n = _answer(_CELLS[self.cell], np.array(prompt, dtype=np.int64), marks, ends, self.table,
                    self.w_ih, self.b_ih, self.w_hh, self.b_hh, self.head_w, self.head_b, h, c, gi,
                    gh, logits, out, hs, cs, norms)
        if n < 0:
            raise IndexError(f"token out of range for a vocabulary of {len(self.table)}")
        return Answer(self, out[:n].tolist(), hs, cs, norms, self.as_state(h, c))

    def _arrays(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """The state as the loops' (layers, hidden) arrays: new ones, never the caller's memory."""
        if self.cell == "lstm":
            return state[0].detach().numpy()[:, 0].copy(), state[1].detach().numpy()[:, 0].copy()
        h = state.detach().numpy()[:, 0].copy()
        return h, h[:0]

    def as_state(self, h: np.ndarray, c: np.ndarray) -> State:
        """(layers, hidden) arrays as a state shaped like the module's, (layers, 1, hidden)."""
        new_h = torch.from_numpy(h[:, None])
        return (new_h, torch.from_numpy(c[:, None])) if self.cell == "lstm" else new_h
