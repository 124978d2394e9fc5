"""Training's recurrence: one layer run over a chunk, with its backward pass written out by hand.

`nn.GRU` (and `nn.LSTM`, `nn.RNN`) cannot zero the state in the middle of a sequence, so training
used to pad every conversation to a whole number of chunks and spend about a fifth of its
arithmetic on padding. `Scan` runs the same equations (PyTorch's, weight for weight) with a `keep`
mask: where a new conversation starts at step t, keep[t] = 0 for that stream and the state it
reads there is zeros. Streams can then hold conversations back to back (data.py).

The backward pass is backpropagation through time spelled out (the seeds' article on BPTT):

- the forward loop stores each step's gate activations;
- every factor that does not depend on the incoming gradient (σ' = σ(1 − σ), tanh' = 1 − tanh²,
  h_{t−1} − n, ...) is computed once for the whole chunk, in large vectorised operations;
- the backward loop walks the steps in reverse carrying one gradient, dL/dh (and dL/dc for an
  LSTM), through the recurrent matrix: for a GRU, dh_{t−1} = (Uᵀ dgh_t + z_t ⊙ dh_t) ⊙ keep_t,
  where dgh_t is the gradient of U h + b_hh (for the n gate that is r ⊙ dn: the n gate's input
  side, W x + b_in, gets dn itself);
- the recurrent weight's gradient is then one large matrix multiply over every step at once,
  Σ_t dgates_t h_{t−1}ᵀ, rather than a thin one per step.

Inside, every tensor is laid out with the streams as *columns*: h is (hidden, batch) and a step's
gates (gates·hidden, batch), so each gate's block (r, z, n) is a contiguous slice of rows. Measured
on the 2-core machine of README's "Performance", an element-wise operation on a (256, 32) block
took 5–10 µs contiguous and 20–30 µs as a strided slice of a wider matrix, and a step makes about
ten of them; the (768, 256) x (256, 32) recurrent multiply was also faster this way round than
as (32, 256) x (256, 768).

`keep` must hold 0 and 1 only: the state is multiplied by it at the steps that hold a 0.

Gates are packed as PyTorch packs them: GRU (r, z, n), LSTM (i, f, g, o).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


class Scan(torch.autograd.Function):
    """One recurrent layer over a chunk, forward and backward, for cell "rnn", "gru" or "lstm".

    gi (gates·hidden, seq, batch): every step's input projection W x + b_ih, made by the caller in
    one call (for the first layer, a table lookup: RecurrentLM._scan); h0, c0 (batch, hidden), c0
    None unless LSTM; w_hh (gates·hidden, hidden) and b_hh:
    the recurrent weights; keep (seq, batch): 0 where a stream starts afresh, else 1.
    Returns every step's h (seq, hidden, batch), and the last c (batch, hidden) of an LSTM (an
    empty tensor for the other cells).
    """

    @staticmethod
    def forward(ctx, cell: str, gi, h0, c0, w_hh, b_hh, keep):
        width, seq, batch = gi.shape
        hid = width // GATES[cell]
        gi = gi.transpose(0, 1).contiguous()  # (seq, gates·hidden, batch): each step's block contiguous
        keep = keep.unsqueeze(1).to(gi.dtype)  # (seq, 1, batch)
        resets = (keep == 0).flatten(1).any(1).tolist()  # the steps where some stream starts afresh
        out = gi.new_empty(seq, hid, batch)  # h_t of every step
        acts = gi.new_empty(seq, width, batch) if cell != "rnn" else None  # every step's gate activations
        # GRU: U_n h + b_hn of every step; LSTM: c_t and tanh(c_t)
        extra = gi.new_empty(*([2] if cell == "lstm" else []), seq, hid, batch) if cell != "rnn" else None
        b = b_hh.unsqueeze(1)  # (gates·hidden, 1): added to every column
        h = h0.t()
        c = c0.t() if c0 is not None else None
        r, z, n = slice(0, hid), slice(hid, 2 * hid), slice(2 * hid, 3 * hid)  # GRU's gate rows
        for t in range(seq):
            if resets[t]:
                h = h * keep[t]
                c = c * keep[t] if c is not None else None
            if cell == "rnn":  # h = tanh(W x + b_ih + U h + b_hh)
                h = torch.addmm(b, w_hh, h, out=out[t]).add_(gi[t]).tanh_()
                continue
            a = acts[t]
            if cell == "gru":
                gh = torch.addmm(b, w_hh, h)  # (3·hidden, batch): U_r h, U_z h, U_n h, with b_hh
                torch.add(gi[t, :n.start], gh[:n.start], out=a[:n.start]).sigmoid_()  # r and z
                extra[t].copy_(gh[n])
                # n = tanh(W_n x + b_in + r ⊙ (U_n h + b_hn))
                torch.mul(a[r], gh[n], out=a[n]).add_(gi[t, n]).tanh_()
                # h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}, computed as n + z ⊙ (h_{t−1} − n)
                h = torch.sub(h, a[n], out=out[t]).mul_(a[z]).add_(a[n])
            else:  # lstm: c_t = f ⊙ c_{t−1} + i ⊙ g, h_t = o ⊙ tanh(c_t)
                torch.addmm(b, w_hh, h, out=a).add_(gi[t])
                a[:2 * hid].sigmoid_()  # input i, forget f
                a[2 * hid:3 * hid].tanh_()  # candidate g
                a[3 * hid:].sigmoid_()  # output o
                c = torch.mul(a[hid:2 * hid], c, out=extra[0, t]).addcmul_(a[:hid], a[2 * hid:3 * hid])
                h = torch.mul(a[3 * hid:], torch.tanh(c, out=extra[1, t]), out=out[t])
        ctx.cell, ctx.resets = cell, resets
        ctx.save_for_backward(acts, extra, out, h0, c0, w_hh, keep)
        if cell == "lstm":
            return out, c.t().contiguous()
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
        # The state each step read, after its reset, laid out (hidden, seq, batch) so that the
        # recurrent weight's gradient below is one multiply with no copy.
        h_prev = torch.cat([h0.t()[None], out[:-1]]).mul_(keep).permute(1, 0, 2).contiguous()
        # dL/d(pre-activation) of every gate at every step, (seq, gates·hidden, batch)
        d_acts = out.new_empty(seq, acts.shape[1] if acts is not None else hid, batch)
        w = w_hh.t()  # (hidden, gates·hidden): carries dgates back to dh
        dh = torch.zeros_like(out[0])
        dc = None
        if cell == "rnn":
            slope = torch.addcmul(out.new_ones(()), out, out, value=-1)  # tanh' = 1 − h²
            for t in reversed(range(seq)):
                dh = dh + d_out[t]
                g = torch.mul(dh, slope[t], out=d_acts[t])
                dh = w @ g
                if resets[t]:
                    dh = dh * keep[t]
        elif cell == "gru":
            hid2 = 2 * hid
            r, z, n = acts[:, :hid], acts[:, hid:hid2], acts[:, hid2:]
            # The factors that do not depend on the gradient, for every step at once:
            h_prev_t = h_prev.permute(1, 0, 2)  # (seq, hidden, batch), a view
            to_n = (1 - z).mul_(torch.addcmul(n.new_ones(()), n, n, value=-1))  # (1 − z)(1 − n²)
            to_z = (h_prev_t - n).mul_(torch.addcmul(z, z, z, value=-1))  # (h_{t−1} − n) z(1 − z)
            to_r = torch.addcmul(r, r, r, value=-1).mul_(extra)  # r(1 − r) (U_n h + b_hn)
            d_n = torch.empty_like(n)  # n's gradient on the input side: no factor r there
            for t in reversed(range(seq)):
                dh = dh + d_out[t]  # dL/dh_t: from this step's output and from step t + 1
                g = d_acts[t]
                dn = torch.mul(dh, to_n[t], out=d_n[t])
                torch.mul(dn, to_r[t], out=g[:hid])
                torch.mul(dh, to_z[t], out=g[hid:hid2])
                torch.mul(dn, r[t], out=g[hid2:])  # U_n h sits inside r ⊙ (U_n h + b_hn)
                dh = torch.addmm(dh * z[t], w, g)
                if resets[t]:
                    dh = dh * keep[t]
        else:  # lstm
            i, f, g_, o = (acts[:, k * hid:(k + 1) * hid] for k in range(4))
            cs, tc = extra  # c_t and tanh(c_t) of every step
            c_prev = torch.cat([c0.t()[None], cs[:-1]]).mul_(keep)
            one = extra.new_ones(())
            to_c = torch.addcmul(one, tc, tc, value=-1).mul_(o)  # dL/dc_t gains dh ⊙ to_c via h = o tanh(c)
            to_o = torch.addcmul(o, o, o, value=-1).mul_(tc)
            to_i = torch.addcmul(i, i, i, value=-1).mul_(g_)
            to_f = torch.addcmul(f, f, f, value=-1).mul_(c_prev)
            to_g = torch.addcmul(one, g_, g_, value=-1).mul_(i)
            dc = d_last_c.t()  # the final cell's gradient from whatever read it
            for t in reversed(range(seq)):
                dh = dh + d_out[t]
                dc = torch.addcmul(dc, dh, to_c[t])
                a = d_acts[t]
                torch.mul(dc, to_i[t], out=a[:hid])
                torch.mul(dc, to_f[t], out=a[hid:2 * hid])
                torch.mul(dc, to_g[t], out=a[2 * hid:3 * hid])
                torch.mul(dh, to_o[t], out=a[3 * hid:])
                dh = w @ a
                dc = dc * f[t]
                if resets[t]:
                    dh, dc = dh * keep[t], dc * keep[t]
            dc = dc.t()
        width = d_acts.shape[1]
        d_acts = d_acts.transpose(0, 1).contiguous()  # (gates·hidden, seq, batch), as gi came
        flat = d_acts.view(width, seq * batch)
        d_w = flat @ h_prev.view(hid, seq * batch).t()  # Σ_t dgates_t h_{t−1}ᵀ: one multiply
        d_b = flat.sum(1)
        if cell == "gru":  # after d_w and d_b: the input side's n gradient has no factor r
            d_acts[2 * hid:] = d_n.transpose(0, 1)
        return None, d_acts, dh.t(), dc, d_w, d_b, None
