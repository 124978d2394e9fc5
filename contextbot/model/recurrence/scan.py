"""Training's recurrence on the CPU: one layer run over a chunk, resetting the state wherever a
stream starts a new conversation, with its backward pass written out by hand.

`nn.GRU` (and `nn.LSTM`, `nn.RNN`) cannot zero the state in the middle of a sequence, so training
would have to pad every conversation to a whole number of chunks and spend about a fifth of its
arithmetic on padding. `Scan` runs the same equations (reference.py's, weight for weight) with a
`keep` mask: where a new conversation starts at step t, keep[t] = 0 for that stream and the state
it reads there is zeros. Streams can then hold conversations back to back (train/batches.py).
`RecurrentLM._scan` calls it layer by layer; tests/model/test_scan.py holds it to PyTorch's
modules, forward and backward, and to finite differences.

The backward pass is backpropagation through time spelled out:

- the forward loop stores each step's gate activations (and, for a GRU, U_n h + b_hn; for an
  LSTM, c_t and tanh c_t);
- the backward loop walks the steps in reverse carrying one gradient, dL/dh (and dL/dc for an
  LSTM), through the recurrent matrix: for a GRU, dh_{t−1} = (Uᵀ dgh_t + z_t ⊙ dh_t) ⊙ keep_t,
  where dgh_t is the gradient of U h + b_hh (for the n gate that is r ⊙ dn: the n gate's input
  side, W x + b_in, gets dn itself);
- the recurrent weight's gradient is then one large matrix multiply over every step at once,
  Σ_t dgates_t h_{t−1}ᵀ, rather than a thin one per step.

Each step is then one matrix multiply in PyTorch (U h, or Uᵀ dgates, on every core) and one
compiled loop (`_gru_forward`, `_gru_backward`, ...: Numba, see kernels.py) that does all of the
step's element-wise arithmetic in one pass: σ, tanh, the new state, and in the backward pass every
gate's gradient. Written as PyTorch operations that would be about ten separate passes over the
step's block, each paying a dispatch and a trip through memory.

Inside, every tensor is laid out with the streams as *columns*: h is (hidden, batch) and a step's
gates (gates·hidden, batch), so each gate's block of rows (the package's `GATE_ORDER`: r, z, n
for a GRU) is a contiguous slice, which element-wise work reads faster than a strided slice of a
wider matrix; the (gates·hidden, hidden) x (hidden, batch) recurrent multiply is also the faster
way round for a narrow batch.

`keep` must hold 0 and 1 only: the state is multiplied by it at the steps that hold a 0.
"""

from __future__ import annotations

import torch
from numba import njit
from torch.autograd.function import once_differentiable

from . import GATE_ORDER
from .kernels import JIT, ONE, sigmoid, tanh

GATES = {cell: len(order) for cell, order in GATE_ORDER.items()}  # blocks of rows per layer


# -- the per-step element-wise work, compiled (kernels.py says why) -------------------------------
# Each takes one step's blocks, (rows, batch) NumPy views of the tensors below, and does in one
# pass what would otherwise be half a dozen tensor operations. Gate g's rows are block g of
# `GATE_ORDER[cell]`: rows g·hid to (g + 1)·hid.

@njit(**JIT)
def _gru_forward(gi, gh, h, act, un, out):
    """r, z = σ(gi + gh); n = tanh(gi_n + r ⊙ gh_n); out = n + z ⊙ (h − n). Stores r, z, n in
    act and gh_n (U_n h + b_hn, which the backward pass needs) in un."""
    hid, batch = h.shape
    for u in range(hid):
        for b in range(batch):
            r = sigmoid(gi[u, b] + gh[u, b])
            z = sigmoid(gi[hid + u, b] + gh[hid + u, b])
            e = gh[2 * hid + u, b]
            n = tanh(gi[2 * hid + u, b] + r * e)
            act[u, b], act[hid + u, b], act[2 * hid + u, b] = r, z, n
            un[u, b] = e
            out[u, b] = n + z * (h[u, b] - n)


@njit(**JIT)
def _gru_backward(dh, d_out, act, un, prev, d_gates, d_n, carry):
    """Given dL/dh_t from step t + 1 (dh) and from this step's output (d_out): the gradient of
    every gate's pre-activation into d_gates (the recurrent side's; n's input side, without the
    factor r, into d_n), and dL/dh_t ⊙ z into carry, the part of dL/dh_{t−1} that skips U."""
    hid, batch = dh.shape
    for u in range(hid):
        for b in range(batch):
            d = dh[u, b] + d_out[u, b]
            r, z, n = act[u, b], act[hid + u, b], act[2 * hid + u, b]
            dn = d * (ONE - z) * (ONE - n * n)  # through h = (1 − z) n + z h_{t−1}, n = tanh(·)
            d_n[u, b] = dn
            d_gates[u, b] = dn * un[u, b] * r * (ONE - r)  # r sits in n's r ⊙ (U_n h + b_hn)
            d_gates[hid + u, b] = d * (prev[u, b] - n) * z * (ONE - z)
            d_gates[2 * hid + u, b] = dn * r
            carry[u, b] = d * z


@njit(**JIT)
def _lstm_forward(gi, gh, c, act, c_out, tc_out, out):
    """i, f, o = σ(gi + gh), g = tanh(gi + gh); c' = f ⊙ c + i ⊙ g; out = o ⊙ tanh(c').
    Stores i, f, g, o in act, c' in c_out and tanh(c') in tc_out."""
    hid, batch = c.shape
    for u in range(hid):
        for b in range(batch):
            i = sigmoid(gi[u, b] + gh[u, b])
            f = sigmoid(gi[hid + u, b] + gh[hid + u, b])
            g = tanh(gi[2 * hid + u, b] + gh[2 * hid + u, b])
            o = sigmoid(gi[3 * hid + u, b] + gh[3 * hid + u, b])
            act[u, b], act[hid + u, b], act[2 * hid + u, b], act[3 * hid + u, b] = i, f, g, o
            cc = f * c[u, b] + i * g
            tc = tanh(cc)
            c_out[u, b], tc_out[u, b] = cc, tc
            out[u, b] = o * tc


@njit(**JIT)
def _lstm_backward(dh, d_out, dc, act, c_prev, tc, d_gates):
    """Given dL/dh_t (dh + d_out) and dL/dc_t from step t + 1 (dc): every gate's gradient into
    d_gates, and dL/dc_{t−1} = dL/dc_t ⊙ f into dc, in place."""
    hid, batch = dh.shape
    for u in range(hid):
        for b in range(batch):
            d = dh[u, b] + d_out[u, b]
            i, f, g, o = act[u, b], act[hid + u, b], act[2 * hid + u, b], act[3 * hid + u, b]
            t = tc[u, b]
            dcc = dc[u, b] + d * o * (ONE - t * t)  # h = o tanh(c) adds to c's gradient
            d_gates[u, b] = dcc * g * i * (ONE - i)
            d_gates[hid + u, b] = dcc * c_prev[u, b] * f * (ONE - f)
            d_gates[2 * hid + u, b] = dcc * i * (ONE - g * g)
            d_gates[3 * hid + u, b] = d * t * o * (ONE - o)
            dc[u, b] = dcc * f


@njit(**JIT)
def _rnn_forward(gi, gh, out):
    """out = tanh(gi + gh)."""
    hid, batch = out.shape
    for u in range(hid):
        for b in range(batch):
            out[u, b] = tanh(gi[u, b] + gh[u, b])


@njit(**JIT)
def _rnn_backward(dh, d_out, h, d_gates):
    """d_gates = (dh + d_out) ⊙ (1 − h²), through h = tanh(·)."""
    hid, batch = dh.shape
    for u in range(hid):
        for b in range(batch):
            d_gates[u, b] = (dh[u, b] + d_out[u, b]) * (ONE - h[u, b] * h[u, b])


class Scan(torch.autograd.Function):
    """One recurrent layer over a chunk, forward and backward, for cell "rnn", "gru" or "lstm".

    gi (gates·hidden, seq, batch): every step's input projection W x + b_ih, made by the caller in
    one call (for the first layer, a table lookup: RecurrentLM._scan); h0, c0 (batch, hidden), c0
    None unless LSTM; w_hh (gates·hidden, hidden) and b_hh:
    the recurrent weights; keep (seq, batch): 0 where a stream starts afresh, else 1.
    Returns every step's h (seq, hidden, batch), and the last c (batch, hidden) of an LSTM (an
    empty tensor for the other cells). CPU tensors only (the kernels are compiled for the CPU).
    """

    @staticmethod
    def forward(ctx, cell: str, gi, h0, c0, w_hh, b_hh, keep):
        width, seq, batch = gi.shape
        hid = width // GATES[cell]
        gi = gi.detach().transpose(0, 1).contiguous()  # (seq, gates·hidden, batch): each step's block contiguous
        keep = keep.unsqueeze(1).to(gi.dtype)  # (seq, 1, batch)
        resets = (keep == 0).flatten(1).any(1).tolist()  # the steps where some stream starts afresh
        out = gi.new_empty(seq, hid, batch)  # h_t of every step
        acts = gi.new_empty(seq, width, batch)  # every step's gate activations (RNN: unused)
        # GRU: U_n h + b_hn of every step; LSTM: c_t and tanh(c_t); RNN: nothing
        extra = gi.new_empty(2 if cell == "lstm" else 1, seq, hid, batch)
        b, w = b_hh.detach().unsqueeze(1), w_hh.detach()  # b: (gates·hidden, 1), added to every column
        h = h0.detach().t().contiguous()
        c = c0.detach().t().contiguous() if c0 is not None else None
        gh = gi.new_empty(width, batch)  # a step's U h + b_hh
        # NumPy views of the same memory, for the compiled kernels
        gi_, gh_, out_, acts_, extra_ = gi.numpy(), gh.numpy(), out.numpy(), acts.numpy(), extra.numpy()
        for t in range(seq):
            if resets[t]:
                h = h * keep[t]
                c = c * keep[t] if c is not None else None
            torch.addmm(b, w, h, out=gh)  # U h + b_hh, all gates at once
            if cell == "gru":
                _gru_forward(gi_[t], gh_, h.numpy(), acts_[t], extra_[0, t], out_[t])
            elif cell == "lstm":
                _lstm_forward(gi_[t], gh_, c.numpy(), acts_[t], extra_[0, t], extra_[1, t], out_[t])
                c = extra[0, t]
            else:
                _rnn_forward(gi_[t], gh_, out_[t])
            h = out[t]
        ctx.cell, ctx.resets = cell, resets
        ctx.save_for_backward(acts, extra, out, h0, c0, w_hh, keep)
        if cell == "lstm":
            return out, c.t().clone(memory_format=torch.contiguous_format)  # never a view of `extra`
        nothing = gi.new_zeros(0)
        ctx.mark_non_differentiable(nothing)
        return out, nothing

    @staticmethod
    @once_differentiable  # the backward below is not itself differentiable: say so, don't be wrong
    def backward(ctx, d_out, d_last_c):
        acts, extra, out, h0, c0, w_hh, keep = ctx.saved_tensors
        cell, resets = ctx.cell, ctx.resets
        seq, hid, batch = out.shape
        d_out = d_out.contiguous()  # one copy into the loop's layout, if it came in another
        # The state each step read, after its reset: (seq, hidden, batch) for the kernels, and
        # (hidden, seq, batch) so that the recurrent weight's gradient below is one multiply.
        prev = torch.cat([h0.t()[None], out[:-1]]).mul_(keep)
        h_prev = prev.permute(1, 0, 2).contiguous()
        # dL/d(pre-activation) of every gate at every step, (seq, gates·hidden, batch)
        d_acts = out.new_empty(seq, acts.shape[1], batch)
        w = w_hh.t()  # (hidden, gates·hidden): carries dgates back to dh
        dh = torch.zeros_like(out[0])  # dL/dh_t from the steps after t
        carry = torch.empty_like(dh)  # the part of dL/dh_{t−1} that does not go through U
        d_n = torch.empty_like(out) if cell == "gru" else None  # n's gradient on the input side
        dc = d_last_c.t().clone(memory_format=torch.contiguous_format) if cell == "lstm" else None
        c_prev = torch.cat([c0.t()[None], extra[0, :-1]]).mul_(keep) if cell == "lstm" else None
        out_, d_out_, acts_, extra_, prev_, d_acts_, carry_ = (
            x.numpy() for x in (out, d_out, acts, extra, prev, d_acts, carry))
        d_n_ = d_n.numpy() if d_n is not None else None
        c_prev_ = c_prev.numpy() if c_prev is not None else None
        for t in reversed(range(seq)):
            if cell == "gru":
                _gru_backward(dh.numpy(), d_out_[t], acts_[t], extra_[0, t], prev_[t], d_acts_[t],
                              d_n_[t], carry_)
            elif cell == "lstm":
                _lstm_backward(dh.numpy(), d_out_[t], dc.numpy(), acts_[t], c_prev_[t], extra_[1, t],
                               d_acts_[t])
            else:
                _rnn_backward(dh.numpy(), d_out_[t], out_[t], d_acts_[t])
            # dL/dh_{t−1} = Uᵀ dgates (+ z ⊙ dL/dh_t for a GRU, whose h_t passes h_{t−1} on)
            dh = torch.addmm(carry, w, d_acts[t]) if cell == "gru" else w @ d_acts[t]
            if resets[t]:
                dh = dh * keep[t]
                dc = dc * keep[t] if dc is not None else None
        dc = dc.t() if dc is not None else None
        width = d_acts.shape[1]
        d_acts = d_acts.transpose(0, 1).contiguous()  # (gates·hidden, seq, batch), as gi came
        flat = d_acts.view(width, seq * batch)
        d_w = flat @ h_prev.view(hid, seq * batch).t()  # Σ_t dgates_t h_{t−1}ᵀ: one multiply
        d_b = flat.sum(1)
        if cell == "gru":  # after d_w and d_b: the input side's n gradient has no factor r
            d_acts[2 * hid:] = d_n.transpose(0, 1)
        return None, d_acts, dh.t(), dc, d_w, d_b, None
